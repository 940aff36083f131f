"""Looking at a collection rather than querying it: thumbnails of its items from their stored
sources, and a 2-D map of its vectors (what the web page draws).

A collection keeps each item's source (the image bytes or the text it was embedded from; none
for items written as bare vectors), so a thumbnail is that source decoded and resized; a
text's thumbnail is the text drawn on a card. The map is a PCA projection (Pearson, 1901) of
up to `MAP_LIMIT` vectors, a seeded uniform sample beyond, cached until the collection is
written to or swaps model versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import textwrap
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lens_server.collections import Collection, Collections
from lens_server.errors import FailedPrecondition, InvalidInput, NotFound

MAP_LIMIT = 10_000
THUMBNAIL_SIZES = (16, 1024)  # least and most pixels of a thumbnail's longer side
_THUMBNAILS_KEPT = 1024  # thumbnails kept in memory, least recently used dropped first


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail: its encoded bytes (None when the caller's `ETag` is current), its media
    type and its entity tag (of the source's bytes and the size)."""

    data: bytes | None
    media_type: str
    etag: str


@dataclass(frozen=True)
class CollectionMap:
    """The collection's items projected on their first two principal components.

    Shape: `xy` (n, 2), scaled so the largest absolute coordinate is 1; `ids` and
    `metadata` (JSON texts) n each, in the same order.
    """

    ids: list[str]
    xy: np.ndarray
    metadata: list[str]
    total: int  # items in the collection; n < total when sampled
    explained: tuple[float, float]  # share of the variance along each axis
    version: int  # the model version of the vectors
    seq: int  # the collection's write sequence number the map was made at


class Browsing:
    def __init__(self, collections: Collections) -> None:
        self.collections = collections
        # By name: the collection object it was made of (one dropped and made again under
        # the same name is another), and the map.
        self._maps: dict[str, tuple[Collection, CollectionMap]] = {}
        self._thumbnails: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    async def thumbnail(
        self, name: str, item: str, size: int, known: tuple[str, ...] = ()
    ) -> Thumbnail:
        """Item `item`'s source resized to fit `size` x `size` pixels: JPEG for photos, PNG
        where the source has transparency and for texts. `known`: the entity tags the caller
        holds; when one is current, `data` is None."""
        low, high = THUMBNAIL_SIZES
        if not low <= size <= high:
            raise InvalidInput(f"size must be in {low}..{high} pixels, got {size}")
        collection = self.collections.get(name)
        found = await asyncio.to_thread(collection.store.sources, [item])
        if item not in found:
            raise NotFound(f"item {item!r} is not in collection {name}")
        kind, source = found[item]
        if source is None:
            raise FailedPrecondition(
                f"item {item!r} of collection {name} was written as a vector: it has no "
                "image or text to show"
            )
        etag = f'"{hashlib.sha256(source).hexdigest()[:32]}-{size}"'
        with self._lock:
            kept = self._thumbnails.get(etag)
            if kept is not None:
                self._thumbnails.move_to_end(etag)
        if etag in known:
            return Thumbnail(None, kept[1] if kept else "", etag)
        if kept is None:
            draw = _image_thumbnail if kind == "image" else _text_thumbnail
            kept = await asyncio.to_thread(draw, source, size)
            with self._lock:
                self._thumbnails[etag] = kept
                while len(self._thumbnails) > _THUMBNAILS_KEPT:
                    self._thumbnails.popitem(last=False)
        return Thumbnail(kept[0], kept[1], etag)

    async def map(self, name: str) -> CollectionMap:
        """The collection's 2-D map, made again only when it has changed since the last."""
        collection = self.collections.get(name)
        seq, version = collection.store.seq(), collection.spec.version
        of, cached = self._maps.get(name, (None, None))
        if of is collection and cached and (cached.seq, cached.version) == (seq, version):
            return cached
        made = await asyncio.to_thread(_project, collection, seq, version)
        self._maps[name] = (collection, made)
        return made


def _image_thumbnail(source: bytes, size: int) -> tuple[bytes, str]:
    try:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(source)))
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError) as e:
        # Stored sources decoded once already (they were embedded), so this is damage.
        raise FailedPrecondition(f"the stored image could not be decoded: {e}") from None
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image.convert("RGBA").save(buffer, format="PNG", optimize=True)
        return buffer.getvalue(), "image/png"
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue(), "image/jpeg"


def _text_thumbnail(source: bytes, size: int) -> tuple[bytes, str]:
    """The text, wrapped, dark on a light square card."""
    text = source.decode("utf-8", errors="replace")
    font_size = max(8, size // 12)
    font = ImageFont.load_default(size=font_size)
    card = Image.new("RGB", (size, size), (244, 244, 240))
    columns = max(4, int(size / (font_size * 0.6)))
    lines = textwrap.wrap(text, columns)[: max(1, size // (font_size + 4) - 1)]
    ImageDraw.Draw(card).multiline_text(
        (font_size // 2, font_size // 2), "\n".join(lines), fill=(30, 30, 30), font=font
    )
    buffer = io.BytesIO()
    card.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue(), "image/png"


def _project(collection: Collection, seq: int, version: int) -> CollectionMap:
    """PCA of the collection's vectors (a seeded sample of `MAP_LIMIT` beyond that many)."""
    store = collection.store
    total = store.count()
    keep = min(1.0, MAP_LIMIT / total) if total else 1.0
    rng = np.random.default_rng(seq)
    rows: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for batch_rows, batch in store.scan():
        chosen = rng.random(len(batch_rows)) < keep if keep < 1 else slice(None)
        rows.append(batch_rows[chosen])
        vectors.append(batch[chosen])
    if not rows or not sum(len(r) for r in rows):
        return CollectionMap([], np.zeros((0, 2), np.float32), [], 0, (0.0, 0.0), version, seq)
    every_row = np.concatenate(rows)[:MAP_LIMIT]  # (n,)
    x = np.concatenate(vectors)[:MAP_LIMIT].astype(np.float64)  # (n, dim)
    x -= x.mean(axis=0)
    covariance = x.T @ x / max(1, len(x) - 1)  # (dim, dim)
    values, axes = np.linalg.eigh(covariance)  # ascending
    top = axes[:, ::-1][:, :2]  # (dim, 2)
    xy = x @ top  # (n, 2)
    if xy.shape[1] < 2:  # a 1-d collection
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    scale = float(np.abs(xy).max()) or 1.0
    variance = float(values.sum()) or 1.0
    shares = values[::-1][:2] / variance
    explained = (float(shares[0]), float(shares[1]) if len(shares) > 1 else 0.0)
    names = store.by_rows(every_row.tolist())
    present = [i for i, r in enumerate(every_row.tolist()) if r in names]
    return CollectionMap(
        ids=[names[int(every_row[i])][0] for i in present],
        xy=(xy[present] / scale).astype(np.float32),
        metadata=[names[int(every_row[i])][1] for i in present],
        total=total,
        explained=explained,
        version=version,
        seq=seq,
    )
