"""Generates the Python packages `lens.v1` (protos/lens/v1/*.proto) and `inference` (KServe v2's
GRPCInferenceService, protos/inference/*.proto) into gen/.

Run by `make proto` and by the Dockerfile; the output is never edited by hand or committed.
Type stubs (.pyi) come with it; gRPC stub types too where mypy-protobuf is installed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path = ROOT / "gen") -> None:
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={out}", f"--grpc_python_out={out}"]
    plugin = Path(sys.executable).with_name("protoc-gen-mypy")
    if plugin.exists():
        args += [
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--mypy_out={out}",
            f"--plugin=protoc-gen-mypy_grpc={plugin.with_name('protoc-gen-mypy_grpc')}",
            f"--mypy_grpc_out={out}",
        ]
    else:
        args.append(f"--pyi_out={out}")
    if protoc.main([*args, *protos]) != 0:
        raise SystemExit("protoc failed")
    for package in ("lens", "lens/v1", "inference"):
        (out / package / "__init__.py").touch()
    for package in ("lens", "inference"):
        (out / package / "py.typed").touch()


if __name__ == "__main__":
    main()
