"""A real PostgreSQL server process with pgvector for the pgvector backend's tests (temp data
directory, free TCP port), run from the binaries the `pgserver` wheel bundles (PostgreSQL 16
with the vector extension: no compiler and no system package needed).

The wheel's binaries are run directly (initdb, then `postgres` in the foreground) rather than
through pgserver's Python API, which starts a detached `pg_ctl` server and, as root, adds a
system user and opens the permissions of every folder above the data: the tests need the
postmaster as their own child, to SIGKILL it and start it again on the same port. PostgreSQL
refuses to run as root, so as root (CI) it runs as `nobody` through `setpriv`, in a data
directory under /tmp that `nobody` owns (pytest's own temp folders are private to root).
Missing psycopg, pgvector or pgserver skips those tests, except under CI=true, where it fails
them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.server.collections.engine_process import EngineProcess, free_port

USER = "lens"


def _bin() -> Path | None:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return found if (found / "postgres").exists() else None


@functools.cache
def _reachable_bin() -> Path | None:
    """The binaries where `nobody` can run them: a checkout under a folder private to root
    (a 0700 home or temp dir) hides the virtualenv's copy, so as root they are copied once
    (34 MB) to a folder under /tmp that everyone may read, in the wheel's layout: the binaries
    find the wheel's shared libraries at $ORIGIN/../../../pgserver.libs, and PostgreSQL its
    own libraries and the pgvector extension relative to its binaries."""
    found = _bin()
    if found is None:
        return None
    site = found.parents[2]  # site-packages: pgserver/pginstall/bin
    home = Path(tempfile.mkdtemp(prefix="lens-pginstall-"))
    home.chmod(0o755)
    shutil.copytree(found.parent, home / "pgserver" / "pginstall", symlinks=True)
    if (site / "pgserver.libs").is_dir():
        shutil.copytree(site / "pgserver.libs", home / "pgserver.libs", symlinks=True)
    return home / "pgserver" / "pginstall" / "bin"


def require() -> None:
    """Skips (fails under CI=true) when the pgvector extra is not installed."""
    missing = [m for m in ("psycopg", "pgvector") if importlib.util.find_spec(m) is None]
    if _bin() is None:
        missing.append("pgserver")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        missing.append("setpriv (util-linux), to run PostgreSQL as nobody")
    if missing:
        need = ", ".join(missing)
        message = f"the pgvector backend's tests need {need}: pip install 'lens[pgvector]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class PgServer(EngineProcess):
    """`postgres -D DIR -p P` on 127.0.0.1 (trust authentication, user `lens`); `dsn` once it
    answers."""

    stop_signal = signal.SIGINT  # a fast shutdown: ends the clients' sessions

    def __init__(self, parent: Path) -> None:
        self.as_root = os.geteuid() == 0
        self.bin = _reachable_bin() if self.as_root else _bin()
        assert self.bin is not None, "require() first"
        # nobody must reach the data directory: under root, pytest's folders are 0700.
        self.home = Path(tempfile.mkdtemp(prefix="lens-pg-")) if self.as_root else parent
        self.data = self.home / "data"
        self.port = free_port()
        self.dsn = self.address = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"
        self.log = parent / "postgres.log"
        if self.as_root:
            shutil.chown(self.home, "nobody", "nogroup")
        subprocess.run(
            [
                *self._user(),
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # the cluster's files once; every commit is still fsynced
            ],
            check=True,
            capture_output=True,
        )
        self.start()

    def _user(self) -> list[str]:
        if not self.as_root:
            return []
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]

    def start(self, timeout: float = 60) -> None:
        """Starts the postmaster and waits until it takes connections; a start right after a
        SIGKILL is retried while the killed server's backends still hold its shared memory."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        *self._user(),
                        str(self.bin / "postgres"),
                        "-D",
                        str(self.data),
                        "-p",
                        str(self.port),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "unix_socket_directories=",
                    ],
                    stdout=log,
                    stderr=log,
                )
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    psycopg.connect(self.dsn, connect_timeout=2).close()
                    return
                except psycopg.OperationalError:
                    time.sleep(0.1)
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"postgres did not answer on {self.port}: see {self.log}")
            time.sleep(0.2)  # it exited: start again

    def remove(self) -> None:
        """Stops the server and deletes its data directory."""
        self.stop()
        if self.as_root:
            shutil.rmtree(self.home, ignore_errors=True)
