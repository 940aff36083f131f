"""Device preprocessing (torch, on the CPU device here) gives Pillow's pixels, falls back to
Pillow for what the device cannot decode, and refuses what `ImagePreprocessor` refuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from lens_server.config import Limits
from lens_server.errors import InvalidInput
from lens_server.preprocess import ImagePreprocessor
from lens_server.preprocess.device import DevicePreprocessor, device_decodable, jpeg_frame
from lens_server.repository.manifest import ImageSpec
from tests.conftest import encode, photo

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")  # camera is grey (mode L)
SIZES = ((640, 480), (300, 500), (224, 224), (50, 40))  # (width, height); 50×40 upscales
# |device - Pillow| in x/255 units, before mean/std. Measured on these inputs (all modes and
# crops): bicubic max 1/255, mean 6e-7; bilinear max 1/255, mean 1.4e-5; nearest 0.
TOLERANCE = {"bicubic": (2 / 255, 1e-5), "bilinear": (2 / 255, 1e-4), "nearest": (1e-6, 1e-7)}


def jpeg(name: str, size: tuple[int, int], **options: object) -> bytes:
    image = Image.fromarray(photo(name)).resize(size)
    return encode(image, "JPEG", quality=90, **options)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [jpeg(name, size) for name in PHOTOS for size in SIZES]


def preprocessors(
    device: str = "cpu", limits: Limits | None = None, **spec: object
) -> tuple[ImagePreprocessor, DevicePreprocessor]:
    options: dict = {"size": 224, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), **spec}
    image_spec, limits = ImageSpec(**options), limits or Limits()
    cpu = ImagePreprocessor(image_spec, limits)
    return cpu, DevicePreprocessor(image_spec, limits, device, cpu)


def difference(got: torch.Tensor, want: np.ndarray) -> tuple[float, float]:
    diff = np.abs(got.cpu().numpy() - want)
    return float(diff.max()), float(diff.mean())


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize(
    ("resize", "crop_offset"), [("shortest", "round"), ("shortest", "floor"), ("squash", "round")]
)
def test_pixels_match_pillow(photos, interpolation, resize, crop_offset):
    cpu, device = preprocessors(interpolation=interpolation, resize=resize, crop_offset=crop_offset)
    items = [device.admit(data) for data in photos]
    assert all(item is data for item, data in zip(items, photos, strict=True))  # all on the device
    pixels, errors = device(items)
    assert errors == {}
    assert pixels.shape == (len(photos), 3, 224, 224) and pixels.dtype == torch.float32
    most, mean = difference(pixels, np.stack([cpu(data) for data in photos]))
    max_tolerance, mean_tolerance = TOLERANCE[interpolation]
    assert most <= max_tolerance and mean <= mean_tolerance, (most * 255, mean)


def test_normalised_pixels_match_pillow_rgb_first_small_size(photos):
    cpu, device = preprocessors(size=32, mean=MEAN, std=STD, rgb="before-resize")
    pixels, errors = device([device.admit(data) for data in photos])
    assert errors == {} and pixels.shape == (len(photos), 3, 32, 32)
    most, mean = difference(pixels, np.stack([cpu(data) for data in photos]))
    assert most <= 2 / 255 / min(STD) and mean <= 1e-4, (most, mean)


@pytest.mark.parametrize("options", [{"progressive": True}, {"subsampling": 0}])
def test_progressive_and_444_jpegs_go_to_the_device(options):
    cpu, device = preprocessors()
    data = jpeg("coffee", (333, 217), **options)
    assert device.admit(data) is data
    pixels, _ = device([data])
    assert difference(pixels[0], cpu(data))[0] <= 2 / 255


def test_mpo_first_frame_goes_to_the_device():
    first, second = Image.fromarray(photo("astronaut")), Image.fromarray(photo("chelsea"))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second], quality=90)
    data = buffer.getvalue()
    cpu, device = preprocessors()
    assert Image.open(io.BytesIO(data)).format == "MPO" and device.admit(data) is data
    pixels, _ = device([data])
    assert difference(pixels[0], cpu(data))[0] <= 2 / 255


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°
    return jpeg("chelsea", (451, 300), exif=exif.tobytes())


def extended_jpeg() -> bytes:
    """A baseline JPEG relabelled SOF1 (extended sequential): Pillow decodes it the same."""
    data = jpeg("rocket", (200, 120))
    at = data.index(b"\xff\xc0")
    return data[:at] + b"\xff\xc1" + data[at + 2 :]


FALLBACKS = {
    "png": lambda: encode(photo("astronaut"), "PNG"),
    "rgba png": lambda: encode(photo("logo"), "PNG"),
    "exif orientation 6": rotated_jpeg,
    "cmyk jpeg": lambda: encode(Image.fromarray(photo("coffee")).convert("CMYK"), "JPEG"),
    "extended sequential jpeg": extended_jpeg,
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_what_the_device_cannot_take_is_preprocessed_by_pillow(name, photos):
    data = FALLBACKS[name]()
    cpu, device = preprocessors(mean=MEAN, std=STD)
    admitted = device.admit(data)
    assert isinstance(admitted, np.ndarray)
    want = cpu(data)
    np.testing.assert_array_equal(admitted, want)
    pixels, errors = device([photos[0], admitted, photos[5]])
    assert errors == {}
    np.testing.assert_array_equal(pixels[1].numpy(), want)  # numpy rows go as they are
    assert difference(pixels[0], cpu(photos[0]))[0] <= 2 / 255 / min(STD)


def test_jpeg_frame_reads_the_frame_marker():
    assert jpeg_frame(rotated_jpeg()) == 0xC0  # a plain baseline JPEG but for its EXIF
    assert jpeg_frame(extended_jpeg()) == 0xC1
    assert jpeg_frame(b"\xff\xd8\xff") is None


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (b"", Limits(), "empty"),
        (b"not an image at all", Limits(), "could not be decoded"),
        (b"x" * 2000, Limits(max_image_bytes=1000), "over the 1000 byte limit"),
        (jpeg("camera", (512, 512)), Limits(max_image_pixels=1000), "512x512"),
        (encode(photo("camera"), "TIFF"), Limits(), "TIFF is not accepted"),
    ],
)
def test_admit_refuses_what_pillow_refuses(data, limits, message):
    cpu, device = preprocessors(limits=limits)
    with pytest.raises(InvalidInput, match=message) as refused:
        device.admit(data)
    with pytest.raises(InvalidInput) as by_pillow:
        cpu(data)
    assert str(refused.value) == str(by_pillow.value)


# The largest pixel difference allowed between nvJPEG's decode and Pillow's.
NVJPEG_MOST = 64 / 255


def truncated_jpeg() -> bytes:
    """A JPEG cut right after its headers: it opens, but it has no scan data."""
    data = jpeg("chelsea", (320, 240))
    scan = data.index(b"\xff\xda")
    return data[: scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")]


def check_truncated_row(device_name: str, tolerance: float = 2 / 255) -> None:
    cpu, device = preprocessors(device_name)
    good = [jpeg("astronaut", (640, 480)), jpeg("camera", (300, 500))]
    broken = truncated_jpeg()
    assert device.admit(broken) is broken  # its header is fine
    pixels, errors = device([good[0], broken, good[1]])
    assert list(errors) == [1] and "could not be decoded" in str(errors[1])
    assert pixels.device.type == torch.device(device_name).type
    assert not pixels[1].any()
    for row, data in ((0, good[0]), (2, good[1])):
        assert difference(pixels[row], cpu(data))[0] <= tolerance


def test_a_truncated_jpeg_is_an_error_of_its_row_only():
    check_truncated_row("cpu")


def test_lanczos_stays_on_pillow():
    spec = ImageSpec(size=32, mean=MEAN, std=STD, interpolation="lanczos")
    assert not device_decodable(spec)
    assert device_decodable(ImageSpec(size=32, mean=MEAN, std=STD))
    with pytest.raises(ValueError, match="lanczos"):
        DevicePreprocessor(spec, Limits(), "cpu", ImagePreprocessor(spec))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_nvjpeg(photos):
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's. On an H200 (2026-11-26):
    # 1,024 photos at 640×480 differed from Pillow's pixels by 17/255 at most, 0.16/255 on
    # average (bench/decode.py); these photos, of several sizes, by 45/255 and 0.67/255.
    cpu, device = preprocessors("cuda")
    pixels, errors = device([device.admit(data) for data in photos])
    assert errors == {} and pixels.device.type == "cuda"
    most, mean = difference(pixels, np.stack([cpu(data) for data in photos]))
    assert most <= NVJPEG_MOST and mean <= 2 / 255, (most * 255, mean * 255)
    check_truncated_row("cuda", NVJPEG_MOST)
