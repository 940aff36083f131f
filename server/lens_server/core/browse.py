"""Looking at a collection rather than querying it: thumbnails of its items from their stored
sources, and a 2-D map of its vectors (what the web page draws).

A collection keeps each item's source (the image bytes or the text it was embedded from; none
for items written as bare vectors), so a thumbnail is that source decoded and resized; a
text's thumbnail is the text drawn on a card. The map is a projection of up to `MAP_LIMIT`
vectors (a seeded uniform sample beyond) on two axes: PCA (Pearson, 1901), or UMAP (McInnes,
Healy & Melville, 2018, arXiv:1802.03426) where `umap-learn` is installed (the `umap` extra);
each is cached until the collection is written to or swaps model versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import textwrap
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lens_server.collections import AnyCollection, Collections
from lens_server.errors import FailedPrecondition, InvalidInput, NotFound

MAP_LIMIT = 10_000
THUMBNAIL_SIZES = (16, 1024)  # least and most pixels of a thumbnail's longer side
_THUMBNAILS_KEPT = 1024  # thumbnails kept in memory, least recently used dropped first
PROJECTIONS = ("pca", "umap")
_UMAP_NEIGHBOURS = 15  # umap-learn's default: the size of the neighbourhood it keeps


def projections() -> tuple[str, ...]:
    """The projections this server can make: PCA always, UMAP where umap-learn is installed."""
    return PROJECTIONS if importlib.util.find_spec("umap") is not None else PROJECTIONS[:1]


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail: its encoded bytes (None when the caller's `ETag` is current), its media
    type and its entity tag (of the source's bytes and the size)."""

    data: bytes | None
    media_type: str
    etag: str


@dataclass(frozen=True)
class CollectionMap:
    """The collection's items projected on two axes, by `method` (pca or umap).

    Shape: `xy` (n, 2), centred and scaled so the largest absolute coordinate is 1; `ids`
    and `metadata` (JSON texts) n each, in the same order.
    """

    ids: list[str]
    xy: np.ndarray
    metadata: list[str]
    total: int  # items in the collection; n < total when sampled
    explained: tuple[float, ...]  # PCA: share of the variance along each axis; UMAP: none
    version: int  # the model version of the vectors
    seq: int  # the collection's write sequence number the map was made at
    method: str = "pca"


class Browsing:
    def __init__(self, collections: Collections) -> None:
        self.collections = collections
        # By name and method: the collection object it was made of (one dropped and made
        # again under the same name is another), and the map.
        self._maps: dict[tuple[str, str], tuple[AnyCollection, CollectionMap]] = {}
        # One computation per map at a time: a UMAP layout takes seconds to minutes, and the
        # requests that arrive meanwhile wait for it rather than start their own.
        self._making: dict[tuple[str, str], asyncio.Lock] = {}
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

    async def map(self, name: str, method: str = "pca") -> CollectionMap:
        """The collection's 2-D map by `method`, made again only when the collection has
        changed since the last."""
        if method not in PROJECTIONS:
            raise InvalidInput(f"method must be one of {', '.join(PROJECTIONS)}, got {method!r}")
        if method not in projections():
            raise FailedPrecondition(
                f"the {method} map needs umap-learn, which this server does not have: "
                "pip install 'lens[umap]'"
            )
        collection = self.collections.get(name)
        key = (name, method)
        async with self._making.setdefault(key, asyncio.Lock()):
            seq, version = collection.store.seq(), collection.spec.version
            of, cached = self._maps.get(key, (None, None))
            if of is collection and cached and (cached.seq, cached.version) == (seq, version):
                return cached
            made = await asyncio.to_thread(_project, collection, seq, version, method)
            self._maps[key] = (collection, made)
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


def _project(collection: AnyCollection, seq: int, version: int, method: str) -> CollectionMap:
    """The collection's vectors (a seeded sample of `MAP_LIMIT` beyond that many) on two
    axes by `method`."""
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
        empty = np.zeros((0, 2), np.float32)
        return CollectionMap([], empty, [], 0, (), version, seq, method)
    every_row = np.concatenate(rows)[:MAP_LIMIT]  # (n,)
    x = np.concatenate(vectors)[:MAP_LIMIT].astype(np.float64)  # (n, dim)
    explained: tuple[float, ...] = ()
    if method == "umap":
        xy = _umap(x, seq)
    else:
        xy, explained = _pca(x)
    xy -= xy.mean(axis=0)
    scale = float(np.abs(xy).max()) or 1.0
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
        method=method,
    )


def _pca(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """(n, dim) → (n, 2) on the first two principal components, and the share of the
    variance along each."""
    x = x - x.mean(axis=0)
    covariance = x.T @ x / max(1, len(x) - 1)  # (dim, dim)
    values, axes = np.linalg.eigh(covariance)  # ascending
    xy = x @ axes[:, ::-1][:, :2]  # (n, 2)
    if xy.shape[1] < 2:  # a 1-d collection
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    shares = values[::-1][:2] / (float(values.sum()) or 1.0)
    return xy, (float(shares[0]), float(shares[1]) if len(shares) > 1 else 0.0)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    """(n, dim) → (n, 2) by UMAP on cosine distances, seeded (so one collection state gives
    one layout; a seed makes umap-learn run on one thread)."""
    import umap  # the `umap` extra; checked by `projections()` before this runs

    n = len(x)
    if n < 3:
        raise FailedPrecondition(f"a UMAP map needs at least 3 items, the collection has {n}")
    settings: dict[str, Any] = {
        "n_components": 2,
        "n_neighbors": min(_UMAP_NEIGHBOURS, n - 1),
        "metric": "cosine",
        "random_state": seed,
        "n_jobs": 1,
        # A spectral start needs a graph large enough to have its eigenvectors.
        "init": "spectral" if n > 4 * _UMAP_NEIGHBOURS else "random",
    }
    return np.asarray(umap.UMAP(**settings).fit_transform(x), dtype=np.float64)
