"""Snapshots of a collection's index: `index-<seq>.faiss` in its folder.

A snapshot is the serialised index as of log sequence number `seq`. It is written to a
temporary file, synced, renamed into place and the folder synced, so a crash leaves either
the previous snapshot or the new one, whole; older ones are deleted after. Opening a
collection loads the newest and replays the log after its `seq`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


class Snapshots:
    """The snapshot files of one collection folder, and the `seq` and time of the newest.

    Not thread-safe: the collection serialises its snapshots (one at a time, under a lock).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seq, self.time = 0, 0.0

    def paths(self) -> list[Path]:
        """The snapshot files, oldest first."""
        return sorted(self.folder.glob("index-*.faiss"), key=_seq_of)

    def newest(self) -> np.ndarray | None:
        """The newest snapshot's bytes (its `seq` and time noted here); None if there is none."""
        paths = self.paths()
        if not paths:
            return None
        newest = paths[-1]
        self.seq, self.time = _seq_of(newest), newest.stat().st_mtime
        return np.fromfile(newest, dtype=np.uint8)

    def write(self, data: np.ndarray, seq: int) -> None:
        """`data`, the index serialised as of `seq`, as the one snapshot, durably."""
        path = self.folder / f"index-{seq:012d}.faiss"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            data.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(self.folder)
        for old in self.paths():
            if old != path:
                old.unlink()
        self.seq, self.time = seq, time.time()

    def drop(self) -> None:
        """Deletes every snapshot, durably (before a re-index replaces the vectors they hold)."""
        for old in self.paths():
            old.unlink()
        _fsync_dir(self.folder)


def _seq_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
