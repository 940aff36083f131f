"""What `lens bulk embed` embeds: the plan of its inputs, and reading their bytes.

The driver plans every input once, in a fixed order (folders sorted, list files and shards in
their own order), so that a run and its `--resume` cut the same output shards. Ray tasks then
read the bytes of a batch of planned inputs (`read_batch`), each failure kept as a reason.

Inputs: a folder (recursive, image files by suffix); a CSV, Parquet or JSONL list of paths or
URLs (`url_col`, optional `caption_col`, every other column kept as metadata; relative paths
are taken from the list's folder); WebDataset `.tar` shards (brace patterns such as
`shard-{0000..0099}.tar`; a sample's image is its jpg, png, webp or jpeg member and its caption
its txt member, as clip-retrieval reads them).
"""

from __future__ import annotations

import tarfile
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lens_server.errors import InvalidInput

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
# WebDataset member extensions taken for a sample's image, in order of preference.
TAR_IMAGE_KEYS = ("jpg", "png", "webp", "jpeg")
TAR_CAPTION_KEY = "txt"
URL_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ListColumns:
    """The columns of a CSV, Parquet or JSONL list: where the path or URL is, the caption."""

    url: str = "url"
    caption: str | None = None


@dataclass
class Planned:
    """One input: its id, where its bytes are (`source`, and `member` inside a tar shard),
    its caption and metadata."""

    id: str
    source: str
    member: str = ""
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def plan(paths: list[str], columns: ListColumns) -> list[Planned]:
    """Every input of `paths`, in order; InvalidInput names the path that cannot be read."""
    planned: list[Planned] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            planned.extend(_folder(path))
        elif path.suffix == ".tar" or "{" in raw:
            for shard in _expand(raw):
                planned.extend(_shard(Path(shard)))
        elif not path.exists():
            raise InvalidInput(f"{raw}: no such file or folder")
        elif path.suffix in (".csv", ".parquet", ".jsonl", ".json"):
            planned.extend(_listed(path, columns))
        else:
            raise InvalidInput(f"{raw}: not a folder, a .csv/.parquet/.jsonl list or a .tar shard")
    seen: set[str] = set()
    for p in planned:
        if p.id in seen:
            raise InvalidInput(f"input id {p.id!r} appears twice: ids must be unique")
        seen.add(p.id)
    return planned


def _folder(folder: Path) -> list[Planned]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [Planned(str(p.relative_to(folder)), str(p.resolve())) for p in files]


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def _shard(shard: Path) -> list[Planned]:
    """The samples of one WebDataset shard, read from its headers."""
    if not shard.is_file():
        raise InvalidInput(f"{shard}: no such shard")
    if not tarfile.is_tarfile(shard):
        raise InvalidInput(f"{shard}: not a tar file")
    samples: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
    planned = []
    try:
        with tarfile.open(shard) as tar:
            for info in tar:  # walks every header: a truncated shard fails here
                if info.isfile():
                    key, _, ext = info.name.partition(".")
                    samples[key][ext.lower()] = info
            _check_complete(tar, shard)
            for key, members in samples.items():
                image = next((members[k] for k in TAR_IMAGE_KEYS if k in members), None)
                if image is None:
                    continue  # a sample with no image (a caption alone) is not an input
                caption = members.get(TAR_CAPTION_KEY)
                text = _member_text(tar, caption) if caption else None
                planned.append(Planned(key, str(shard.resolve()), image.name, text))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InvalidInput(f"{shard}: truncated or corrupt tar ({e})") from None
    return planned


def _check_complete(tar: tarfile.TarFile, shard: Path) -> None:
    """A tar cut inside a member's data reads its headers fine: the last member must end
    within the file."""
    members = tar.getmembers()
    if members:
        last = members[-1]
        if last.offset_data + last.size > shard.stat().st_size:
            raise tarfile.ReadError(f"member {last.name} ends past the end of the file")


def _member_text(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    f = tar.extractfile(info)
    return f.read().decode("utf-8", "replace").strip() if f else ""


def _listed(path: Path, columns: ListColumns) -> list[Planned]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".csv":
            table = pyarrow.csv.read_csv(path)
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = pyarrow.json.read_json(path)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(f"{path}: cannot be read as {path.suffix[1:]}: {e}") from None
    for name, role in ((columns.url, "--url-col"), (columns.caption, "--caption-col")):
        if name is not None and name not in table.column_names:
            raise InvalidInput(
                f"{path}: no column {name!r} ({role}); it has: {', '.join(table.column_names)}"
            )
    planned = []
    base = path.parent
    for row in table.to_pylist():
        where = str(row.pop(columns.url) or "")
        caption = row.pop(columns.caption) if columns.caption else None
        source = where if _is_url(where) else str((base / where).resolve())
        planned.append(Planned(where, source, caption=caption, metadata=row))
    return planned


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def read_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Ray task: {"index", "source", "member"} → adds "data" (bytes, b"" on failure) and
    "error" (the reason, "" where read)."""
    data: list[bytes] = []
    errors: list[str] = []
    tars: dict[str, tarfile.TarFile] = {}
    try:
        for source, member in zip(batch["source"], batch["member"], strict=True):
            try:
                data.append(_read(str(source), str(member), tars))
                errors.append("")
            except Exception as e:  # any failure of one input is that input's reason
                data.append(b"")
                errors.append(f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e))
    finally:
        for tar in tars.values():
            tar.close()
    return {**batch, "data": data, "error": errors}


def _read(source: str, member: str, tars: dict[str, tarfile.TarFile]) -> bytes:
    if member:
        if source not in tars:
            tars[source] = tarfile.open(source)  # noqa: SIM115 (closed by read_batch)
        tar = tars[source]
        f = tar.extractfile(member)
        if f is None:
            raise InvalidInput(f"{source}: {member} is not a file")
        return f.read()
    if _is_url(source):
        with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:
            return bytes(response.read())
    return Path(source).read_bytes()
