"""API keys and their scopes: read once at start-up, kept only as sha256 digests.

A key list has one key a line, `KEY SCOPE[,SCOPE...]`, where KEY is the key itself or
`sha256:` and the hex digest of it (so the file need not hold the secret); blank lines are
ignored, and from a word starting with `#` to the end of the line is a comment.
`LENS_API_KEYS` takes the same entries with `;` between them. A presented key is hashed and
compared with every stored digest in constant time (`hmac.compare_digest`); keys are never
logged, and an entry is named in logs by where it was read (`keys.txt:3`), never by its key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lens_server.errors import Unauthenticated

# What a key may do; every call needs exactly one of these (see lens_server.access.scopes).
EMBED, WRITE, ADMIN = "embed", "write", "admin"
SCOPES = (EMBED, WRITE, ADMIN)

_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


class KeyListError(ValueError):
    """A key list that cannot be used; the server does not start."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKey:
    """One key: the sha256 digest of it, its scopes, and where it was read (its name in logs)."""

    digest: bytes = field(repr=False)
    scopes: frozenset[str]
    source: str


@dataclass(frozen=True)
class ApiKeys:
    """The keys the server accepts; none: every call is open."""

    keys: tuple[ApiKey, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[bytes, str] = {}
        for key in self.keys:
            if unknown := sorted(key.scopes - set(SCOPES)):
                raise KeyListError(f"{key.source}: unknown scope {unknown[0]!r} ({_known()})")
            if key.digest in seen:
                raise KeyListError(f"{key.source}: the same key as {seen[key.digest]}")
            seen[key.digest] = key.source

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def authenticate(self, presented: str) -> ApiKey:
        """The entry of `presented`; Unauthenticated when it is none of them. Every digest is
        compared (in constant time), so the time taken says nothing of which is close."""
        wanted = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, wanted):
                found = key
        if found is None:
            raise Unauthenticated("the API key is not valid")
        return found

    def describe(self) -> str:
        """One line for the start-up log."""
        if not self.keys:
            return "open: no API keys, every call is allowed (--api-keys FILE or LENS_API_KEYS)"
        counts = {s: sum(s in k.scopes for k in self.keys) for s in SCOPES}
        shown = ", ".join(f"{counts[s]} {s}" for s in SCOPES)
        return f"{len(self.keys)} API key(s) required ({shown})"

    @classmethod
    def read(cls, path: Path | None = None, env: str | None = None) -> ApiKeys:
        """The keys of the file at `path` and of `env` (LENS_API_KEYS's value) together."""
        entries: list[ApiKey] = []
        if path is not None:
            try:
                text = path.read_text()
            except OSError as e:
                raise KeyListError(f"cannot read the API keys file {path}: {e.strerror}") from None
            entries += parse(text.splitlines(), str(path))
        if env:
            entries += parse(env.split(";"), "LENS_API_KEYS", separator="entry")
        return cls(tuple(entries))


def parse(lines: Iterable[str], source: str, separator: str = "line") -> list[ApiKey]:
    """`KEY SCOPE[,SCOPE...]` entries; an entry is named `source:N` (N from 1)."""
    keys = []
    for number, line in enumerate(lines, 1):
        where = f"{source}:{number}" if separator == "line" else f"{source} entry {number}"
        words = line.split()
        # A word starting with # begins a comment (a whole line, or after the scopes).
        words = words[: next((i for i, w in enumerate(words) if w.startswith("#")), len(words))]
        if not words:
            continue
        if len(words) != 2:
            raise KeyListError(f"{where}: expected 'KEY SCOPE[,SCOPE...]' ({_known()})")
        secret, scopes = words
        names = frozenset(s for s in scopes.split(",") if s)
        if not names:
            raise KeyListError(f"{where}: no scope ({_known()})")
        if unknown := sorted(names - set(SCOPES)):
            raise KeyListError(f"{where}: unknown scope {unknown[0]!r} ({_known()})")
        if match := _DIGEST.match(secret):
            key_digest = bytes.fromhex(match.group(1))
        elif secret.startswith("sha256:"):
            raise KeyListError(f"{where}: a sha256: key needs 64 hex digits after 'sha256:'")
        else:
            key_digest = digest(secret)
        keys.append(ApiKey(key_digest, names, where))
    return keys


def _known() -> str:
    return f"scopes: {', '.join(SCOPES)}"
