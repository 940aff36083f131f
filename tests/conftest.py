"""Shared fixtures: a tiny random-init open_clip model imported into a repository, and real
servers (`lens serve` as a process) on ephemeral ports."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = ROOT / "training" / "lens_training" / "configs" / "lens-tiny-clip.json"
LENS = Path(sys.executable).with_name("lens")


def photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory: pytest.TempPathFactory):
    """A tiny open_clip CLIP (random weights, seed 0) and its checkpoint file.

    Returns (model, preprocess, tokenizer, checkpoint path): the in-process reference for
    everything the server computes from `tiny_repo`.
    """
    import open_clip
    import torch

    open_clip.add_model_config(str(TINY_ARCH))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH.stem)
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_ARCH.stem), checkpoint


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory, tiny_openclip) -> Path:
    """A repository holding model `tiny` version 1: `tiny_openclip` imported from its
    checkpoint file (32-d, both towers)."""
    from lens_server.repository import Repository
    from lens_training.export.openclip import import_openclip

    root = tmp_path_factory.mktemp("repo")
    import_openclip(Repository(root), str(TINY_ARCH), "tiny", pretrained=str(tiny_openclip[3]))
    return root


class ServerProcess:
    """`lens serve` in a child process; `address` once it listens."""

    def __init__(self, repo: Path, *args: str, collections: Path | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.collections = collections or Path(tempfile.mkdtemp(prefix="collections-"))
        self.process = subprocess.Popen(
            [
                str(LENS),
                "serve",
                "--repo",
                str(repo),
                "--port",
                "0",
                "--http-port",
                "0",
                "--collections",
                str(self.collections),
                # Tests stop many servers: no drain delay unless a test asks for one.
                *([] if "--drain-delay" in args else ["--drain-delay", "0"]),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        self.http: str | None = None  # http://HOST:PORT, unless started with --no-http
        self.address = self._wait_listening()
        # All it says after that keeps landing in `log` (complete once stopped), so that a
        # full pipe never stalls a server that logs every request.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def _wait_listening(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.log.append(line)
            if match := re.search(r"HTTP/JSON API on (https?://\S+)", line):
                self.http = match.group(1)
            if match := re.search(r"lens serving .* on (\S+):(\d+)", line):
                return f"{match.group(1)}:{match.group(2)}"
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.log))

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no snapshot."""
        self.process.kill()
        self.process.wait(20)
        self._reader.join(20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if hasattr(self, "_reader"):  # not when it never started
            self._reader.join(20)


@pytest.fixture(scope="session")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tiny_repo, "--max-batch-size", "8", "--max-queue-delay-ms", "5")
    yield proc
    proc.stop()


@pytest.fixture()
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        server.address, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        yield ch
