"""Preprocessing and tokenization equal open_clip's, input for input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lens_server.config import Limits
from lens_server.errors import InvalidInput
from lens_server.preprocess import ImagePreprocessor, TextTokenizer
from lens_server.repository.manifest import ImageSpec, TextSpec
from tests.conftest import encode, photo

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def pil_images() -> dict[str, Image.Image]:
    astronaut = Image.fromarray(photo("astronaut"))
    return {
        "rgb": astronaut,
        "gray": Image.fromarray(photo("camera")),
        "rgba": Image.fromarray(photo("logo")),
        "palette": Image.fromarray(photo("chelsea")).convert("P"),
        "cmyk": astronaut.convert("CMYK"),
        "wide": Image.fromarray(photo("page")),
        "tall": Image.fromarray(photo("rocket")).transpose(Image.Transpose.ROTATE_90),
        "odd": Image.fromarray(photo("coffee")).resize((333, 217)),
        "exact": astronaut.resize((224, 224)),
        "small": astronaut.resize((17, 40)),
    }


@pytest.mark.parametrize("size", [224, 32])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_pixels_equal_open_clip_transform(size, resize_mode):
    from open_clip.transform import image_transform

    reference = image_transform(size, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode)
    ours = ImagePreprocessor(ImageSpec(size=size, mean=MEAN, std=STD, resize=resize_mode))
    for name, image in pil_images().items():
        want = reference(image).numpy()
        got = ours.from_pil(image)
        assert got.shape == want.shape == (3, size, size), name
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)


def test_transformers_order_rgb_first_and_floor_crop():
    image = Image.fromarray(photo("logo")).resize((101, 75))
    spec = ImageSpec(size=32, mean=MEAN, std=STD, rgb="before-resize", crop_offset="floor")
    got = ImagePreprocessor(spec).from_pil(image)
    rgb = image.convert("RGB").resize((43, 32), Image.Resampling.BICUBIC)  # int(32 * 101 / 75)
    crop = np.asarray(rgb.crop((5, 0, 37, 32)), np.float32) / 255  # floor(5.5); round would give 6
    want = ((crop - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_decoding_applies_exif_orientation():
    image = Image.fromarray(photo("chelsea"))  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed 300 wide, 451 high
    decoded = ImagePreprocessor(ImageSpec(size=32, mean=MEAN, std=STD)).decode(
        encode(image, "JPEG", exif=exif.tobytes())
    )
    assert decoded.size == (300, 451)


def test_gif_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixels = ImagePreprocessor(ImageSpec(size=8, mean=(0, 0, 0), std=(1, 1, 1)))(data)
    assert pixels[0].mean() > 0.9 and pixels[2].mean() < 0.1  # red, the first frame


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (b"", Limits(), "empty"),
        (b"GIF89a garbage", Limits(), "could not be decoded"),
        (b"x" * 2000, Limits(max_image_bytes=1000), "over the 1000 byte limit"),
        (encode(photo("camera"), "PNG"), Limits(max_image_pixels=1000), "512x512"),
        (encode(photo("camera"), "TIFF"), Limits(), "TIFF is not accepted"),
    ],
)
def test_bad_images(data, limits, message):
    with pytest.raises(InvalidInput, match=message):
        ImagePreprocessor(ImageSpec(size=32, mean=MEAN, std=STD), limits)(data)


TEXTS = [
    "a photo of a cat.",
    "An ASTRONAUT in a white suit!!!",
    "naïve café — crème brûlée &amp; &lt;b&gt; 日本語のテキスト 🚀",
    "  lots   of\twhitespace \n and newlines  ",
    "it's they're we'll I'd you've don’t",
    "1234 5678 3.14159 x86_64",
    "Printable ASCII: ~`{braces}|[brackets]^_\\ \"quotes\" 'single' #$%*+,-./:;=?@",
    "Tom &amp;amp; Jerry &quot;quoted&quot; a\x07bell a\x1b[31mred\x1b[0m\rreturn",
    "<start_of_text> special <end_of_text> tokens",
    "Ünïcödé ŁÓDŹ ǅ e\u0301",
    "word " * 200,
    "",
]


def test_token_ids_equal_open_clip(tiny_repo, tiny_openclip):
    _, _, reference, _ = tiny_openclip
    spec = TextSpec(context_length=77, sot_id=reference.sot_token_id, eot_id=reference.eot_token_id)
    ours = TextTokenizer(spec, tiny_repo / "tiny" / "1" / "tokenizer.json")
    got = ours(TEXTS)
    assert got.dtype == np.int64 and got.shape == (len(TEXTS), 77)
    np.testing.assert_array_equal(got, reference(TEXTS).numpy())
    assert got[TEXTS.index("word " * 200), -1] == reference.eot_token_id  # truncated, then EOT
