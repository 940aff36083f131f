"""Reading and writing the model repository on disk.

Layout: `<root>/<model>/<version>/manifest.json`, versions are positive integers. A version
is written into a hidden staging folder beside its final place and renamed into place once
complete, so a reader never sees half a version and a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from lens_server.errors import FailedPrecondition, InvalidInput, NotFound, available
from lens_server.repository import manifest as mf

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEPLOYED = "deployed.json"
# Deployed versions remembered per model, for rollbacks.
HISTORY = 32


@dataclass(frozen=True)
class Deployed:
    """Which version of a model serves, and those that served before it (oldest first)."""

    serving: int = 0
    history: tuple[int, ...] = ()

    @property
    def previous(self) -> int:
        """The version a rollback returns to; 0 if none."""
        return self.history[-1] if self.history else 0

    def deploy(self, version: int) -> Deployed:
        if version == self.serving:
            return self
        history = (*self.history, self.serving) if self.serving else self.history
        return Deployed(version, history[-HISTORY:])

    def rollback(self) -> Deployed:
        return Deployed(self.previous, self.history[:-1])


def check_name(name: str, what: str = "model") -> str:
    if not NAME.match(name):
        raise InvalidInput(
            f"{what} name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class Repository:
    """A model repository rooted at `root` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        """Names of the models that have at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if NAME.match(p.name) and self._ids(p))

    def versions(self, name: str) -> list[int]:
        """The model's versions, ascending; NotFound (listing the models) if it has none."""
        ids = self._ids(self.root / name) if NAME.match(name) else []
        if not ids:
            raise NotFound(f"model {name!r} not found. {available('models', self.models())}")
        return ids

    def latest(self, name: str) -> int:
        return self.versions(name)[-1]

    def path(self, name: str, version: int) -> Path:
        if version not in self.versions(name):
            raise NotFound(
                f"model {name!r} has no version {version}. "
                f"{available('versions', self.versions(name))}"
            )
        return self.root / name / str(version)

    def manifest(self, name: str, version: int) -> mf.Manifest:
        return mf.load(self.path(name, version))

    def deployed(self, name: str) -> Deployed:
        """The model's deploy state (`<model>/deployed.json`); empty if it was never deployed."""
        path = self.root / name / DEPLOYED
        try:
            raw = json.loads(path.read_text())
            return Deployed(int(raw["serving"]), tuple(int(v) for v in raw["history"]))
        except FileNotFoundError:
            return Deployed()
        except (ValueError, KeyError, TypeError) as e:
            raise FailedPrecondition(f"{path}: unreadable deploy state: {e}") from None

    def save_deployed(self, name: str, state: Deployed) -> None:
        """Writes the deploy state durably (temporary file, fsync, rename)."""
        path = self.root / name / DEPLOYED
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"serving": state.serving, "history": list(state.history)}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    @contextmanager
    def stage(self, name: str) -> Iterator[Path]:
        """A scratch folder to build a version in; removed afterwards, whatever happens.

        Pass the folder to `commit` inside the `with` block to publish it.
        """
        check_name(name)
        (self.root / name).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root / name))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, staged: Path, manifest: mf.Manifest) -> tuple[int, Path]:
        """Publishes a staged version as the model's next version.

        Records the sha256 of every staged file, the version number and the time in the
        manifest, then renames the folder into place (atomic on one file system). Returns the
        version and its folder.
        """
        files = {p.name: mf.sha256(p) for p in sorted(staged.iterdir()) if p.name != mf.MANIFEST}
        model_dir = self.root / manifest.name
        while True:
            version = max(self._ids(model_dir), default=0) + 1
            final = replace(
                manifest,
                version=version,
                files=files,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            final.save(staged)
            target = model_dir / str(version)
            try:
                staged.rename(target)
            except OSError:
                if target.exists():  # another writer took this number: take the next one
                    continue
                raise
            return version, target

    @staticmethod
    def _ids(model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.name.isdigit() and int(p.name) > 0 and (p / mf.MANIFEST).is_file()
        )
