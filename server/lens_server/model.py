"""A loaded model version: its towers, their preprocessing and their batchers."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

from lens_server.batching import Batcher
from lens_server.config import BatchConfig, ServerConfig
from lens_server.errors import FailedPrecondition, InvalidInput
from lens_server.metrics import Metrics, TowerMetrics, note_inputs, note_model
from lens_server.pipeline import Admitted, DeviceImages, image_pipeline
from lens_server.preprocess import ImagePreprocessor, TextTokenizer
from lens_server.repository.manifest import (
    ImageSpec,
    Manifest,
    TextSpec,
    parity_failures,
    sha256,
    verify_files,
)
from lens_server.runtime.choose import Choice, open_tower
from lens_server.vectors import l2_normalize

log = logging.getLogger(__name__)

# One input: encoded image bytes, or a text.
Input = bytes | str


def open_towers(manifest: Manifest, folder: Path, config: ServerConfig) -> dict[str, Choice]:
    """Checks the version's files against their sha256 and its recorded parity, and opens its
    towers on the runtime `config.runtime` picks (see `server.runtime.choose`).

    Blocking (seconds for large models): call it off the event loop.
    """
    if failures := parity_failures(manifest):
        raise FailedPrecondition(
            f"{folder}: the manifest records failed parity ({'; '.join(failures)})"
        )
    verify_files(folder, manifest)
    probes: dict[str, tuple[ImageSpec | TextSpec, Callable[[int], np.ndarray]]] = {}
    if image := manifest.image:
        probes["image"] = image, partial(_image_probe, image)
    if text := manifest.text:
        probes["text"] = text, partial(_text_probe, TextTokenizer(text, folder / text.tokenizer))
    return {
        modality: open_tower(
            folder / spec.file,
            _program(folder, manifest, modality),
            manifest.dim,
            config.runtime,
            config.batch_for(manifest.name).max_batch_size,
            probe,
        )
        for modality, (spec, probe) in probes.items()
    }


def _served_file(manifest: Manifest, modality: str, runtime: str) -> str:
    """The file whose weights the tower holds on `runtime`."""
    spec = manifest.image if modality == "image" else manifest.text
    assert spec is not None
    return spec.program if runtime == "program" else spec.file


def _program(folder: Path, manifest: Manifest, modality: str) -> Path | None:
    """The tower's fp16 program, if the version has one that passed parity at export."""
    spec = manifest.image if modality == "image" else manifest.text
    recorded = manifest.parity.get(f"{modality}.program", {})
    passed = recorded.get("min_cosine", 0.0) >= recorded.get("threshold", 1.0)
    return folder / spec.program if spec and spec.program and passed else None


def _image_probe(spec: ImageSpec, n: int) -> np.ndarray:
    """n images of seeded noise, preprocessed: (n, 3, size, size)."""
    pixels = np.random.default_rng(0).random((n, 3, spec.size, spec.size), dtype=np.float32)
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    return (pixels - mean) / std


def _text_probe(tokenizer: TextTokenizer, n: int) -> np.ndarray:
    """n tokenized sentences: (n, context_length)."""
    words = ("a", "photo", "of", "the", "cat", "dog", "red", "car", "in", "snow", "at", "night")
    rng = np.random.default_rng(0)
    return tokenizer([" ".join(rng.choice(words, size=1 + i % 12)) for i in range(n)])


def weight_bytes(manifest: Manifest, folder: Path) -> int:
    """Bytes of the version's ONNX towers: what loading it holds in memory, about (on a GPU
    the fp16 programs, half that, are held too while the runtime is chosen)."""
    return sum((folder / s.file).stat().st_size for s in (manifest.image, manifest.text) if s)


class LoadedVersion:
    """A model version ready to serve: `embed` turns inputs into normalised embeddings.

    Built on the event loop (its batchers live there) from towers opened by `open_towers`.
    Requests hold it through `lease()`, so that it is closed only once they have finished.
    With `metrics`, each tower's batching and preprocessing are recorded there.
    """

    def __init__(
        self,
        manifest: Manifest,
        folder: Path,
        config: ServerConfig,
        decode_pool: Executor,
        towers: dict[str, Choice],
        metrics: Metrics | None = None,
    ) -> None:
        self.manifest = manifest
        self.folder = folder
        self.config = config
        self._decode_pool = decode_pool
        self.image: ImagePreprocessor | None = None
        self.text: TextTokenizer | None = None
        self.batchers: dict[str, Batcher] = {}
        self._metrics: dict[str, TowerMetrics] = {
            modality: metrics.tower(manifest.name, manifest.version, modality)
            for modality in towers
            if metrics is not None
        }
        observe = self._metrics.get
        label = f"{manifest.name}:{manifest.version}"
        batching = config.batch_for(manifest.name)
        self._device_images: DeviceImages | None = None
        if manifest.image:
            self.image = ImagePreprocessor(manifest.image, config.limits)
            tower = towers["image"].tower
            self._device_images = image_pipeline(manifest.image, config.runtime, self.image, tower)
            if self._device_images:
                batch = _overlapping(batching, f"{label}/image")
                self.batchers["image"] = Batcher(
                    f"{label}/image",
                    self._device_images.run,
                    batch,
                    collate=list,
                    observer=observe("image"),
                )
            else:
                self.batchers["image"] = Batcher(
                    f"{label}/image", tower, batching, observer=observe("image")
                )
        if manifest.text:
            self.text = TextTokenizer(manifest.text, folder / manifest.text.tokenizer)
            self.batchers["text"] = Batcher(
                f"{label}/text", towers["text"].tower, batching, observer=observe("text")
            )
        self.runtimes = towers
        self.providers = sorted({p for c in towers.values() for p in c.tower.providers})
        self.memory_bytes = sum(
            (folder / _served_file(manifest, modality, choice.runtime)).stat().st_size
            for modality, choice in towers.items()
        )
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # (size, mtime) of each file when loaded: a cheap check before re-hashing.
        self._stats = {name: _stat(folder / name) for name in manifest.files}

    @contextmanager
    def lease(self) -> Iterator[LoadedVersion]:
        """`with version.lease():` around a request's use of the version (see `drained`)."""
        note_model(self.name, self.version)
        self.in_flight += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def drained(self) -> None:
        """Returns once no request holds a lease."""
        await self._idle.wait()

    def changed_files(self) -> str:
        """Why the version's files on disk no longer match those loaded; "" if they do.

        Blocking (hashes a file whose size or time changed): call it off the event loop.
        """
        for name, stat in self._stats.items():
            path = self.folder / name
            now = _stat(path)
            if now is None:
                return f"{path} was removed after the version was loaded"
            if now != stat and sha256(path) != self.manifest.files[name]:
                return f"{path} changed on disk after the version was loaded (sha256 differs)"
        return ""

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    async def warm_up(self) -> None:
        """One input through each tower, so the first request does not pay for lazy set-up."""
        inputs: list[Input] = []
        if self.manifest.image:  # a JPEG takes the device decoder's path where there is one
            inputs.append(_blank_image(self.manifest.image.size, "JPEG"))
        if self.manifest.text:
            inputs.append("warm-up")
        await self.embed(inputs)

    async def embed(
        self,
        inputs: Sequence[Input],
        deadline: float | None = None,
        positions: Sequence[int] | None = None,
        background: bool = False,
    ) -> np.ndarray:
        """Inputs → float32 (len(inputs), dim), L2-normalised, in input order.

        Errors name an input by its index, or by `positions[index]` when the inputs are a
        part of a larger request. `background` work yields to requests in the batchers.
        """
        if not background:  # the request's log line counts them
            note_inputs(len(inputs))
        where = list(positions) if positions is not None else list(range(len(inputs)))
        images = [i for i, x in enumerate(inputs) if isinstance(x, bytes)]
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        self._check_towers([where[i] for i in images], [where[i] for i in texts])
        loop = asyncio.get_running_loop()
        # Decodes spread over the pool one image each; header checks (the device path) are
        # cheap enough for one call per request, which spares the event loop a task per image.
        step = max(1, len(images)) if self._device_images else 1
        decodes = (
            loop.run_in_executor(
                self._decode_pool,
                self._decode_all,
                [(cast(bytes, inputs[i]), where[i]) for i in images[start : start + step]],
            )
            for start in range(0, len(images), step)
        )
        text_data = [cast(str, inputs[i]) for i in texts]
        decoded, tokens = await asyncio.gather(
            asyncio.gather(*decodes),
            loop.run_in_executor(self._decode_pool, self._tokenize, text_data),
        )
        jobs, rows = [], []
        if images:
            pixels = [row for part in decoded for row in part]
            jobs.append(self.batchers["image"].submit(pixels, deadline, background))
            rows.append(images)
        if texts:
            jobs.append(self.batchers["text"].submit(list(tokens), deadline, background))
            rows.append(texts)
        out = np.empty((len(inputs), self.manifest.dim), dtype=np.float32)
        for index, vectors in zip(rows, await asyncio.gather(*jobs), strict=True):
            out[index] = vectors
        return l2_normalize(out)

    def _check_towers(self, images: list[int], texts: list[int]) -> None:
        for indices, modality in ((images, "image"), (texts, "text")):
            if indices and modality not in self.batchers:
                raise FailedPrecondition(
                    f"input {indices[0]}: model {self.name} version {self.version} has no "
                    f"{modality} tower (it embeds: {', '.join(self.manifest.modalities)})"
                )

    def _decode_all(self, images: list[tuple[bytes, int]]) -> list[np.ndarray | Admitted]:
        observer = self._metrics.get("image")
        decoded = []
        for data, index in images:
            started = time.perf_counter()
            decoded.append(self._decode(data, index))
            if observer:
                observer.preprocessed(time.perf_counter() - started)
        return decoded

    def _decode(self, data: bytes, index: int) -> np.ndarray | Admitted:
        assert self.image is not None
        try:
            if self._device_images:  # checked here, decoded with its batch on the device
                return self._device_images.admit(data, index)
            return self.image(data)
        except InvalidInput as e:
            raise InvalidInput(f"input {index}: {e}") from None

    def _tokenize(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        assert self.text is not None
        started = time.perf_counter()
        tokens = list(self.text(texts))
        if observer := self._metrics.get("text"):
            observer.preprocessed(time.perf_counter() - started)
        return tokens

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.batchers.values()))
        for observer in self._metrics.values():
            observer.close()


def _overlapping(config: BatchConfig, tower: str) -> BatchConfig:
    """`config` with at least two instances: on the device path one batch decodes while
    another embeds, and a single instance would leave the GPU idle during each decode."""
    if config.instances >= 2:
        return config
    log.info(
        "%s: instances raised from %d (configured) to 2: images are decoded on the device, "
        "where one batch decodes while another embeds",
        tower,
        config.instances,
    )
    return replace(config, instances=2)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _blank_image(size: int, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (127, 127, 127)).save(buffer, format=format)
    return buffer.getvalue()
