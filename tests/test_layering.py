"""The package layering, checked on the code itself and on what importing it loads.

- `lens_server` never imports `lens_training`;
- `lens_client` imports neither (it installs and runs without server or training code);
- the core (`lens_server.core`) imports no transport: no grpc, no web framework;
- the transports (`lens_server.services`, `lens_server.http`) reach the server's state only
  through the core: none imports the registry, deployments, classifier store, collections'
  internals or the batcher.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server" / "lens_server"
CLIENT = ROOT / "clients" / "lens_client"


def _imports(folder: Path) -> dict[str, set[str]]:
    """file → every module name it imports (at any depth of the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def _offending(folder: Path, prefixes: tuple[str, ...]) -> list[str]:
    return [
        f"{file}: {name}"
        for file, names in _imports(folder).items()
        for name in sorted(names)
        if name.startswith(prefixes)
    ]


def test_server_never_imports_training():
    assert _offending(SERVER, ("lens_training",)) == []


def test_client_imports_neither_server_nor_training():
    assert _offending(CLIENT, ("lens_server", "lens_training")) == []


def test_core_imports_no_transport():
    transports = ("grpc", "lens.v1", "fastapi", "starlette", "uvicorn", "pydantic")
    assert _offending(SERVER / "core", transports) == []


@pytest.mark.parametrize("transport", ["services", "http"])
def test_transports_reach_state_only_through_the_core(transport):
    state = (
        "lens_server.registry.Registry",
        "lens_server.deploy",
        "lens_server.classifiers",
        "lens_server.collections.manager",
        "lens_server.collections.collection",
        "lens_server.collections.store",
        "lens_server.batching",
    )
    assert _offending(SERVER / transport, state) == []


def _loaded_by(code: str) -> set[str]:
    program = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {name.split(".")[0] for name in result.stdout.split()}


def test_importing_the_client_loads_no_server_training_or_torch():
    loaded = _loaded_by(
        "import lens_client, lens_client.client, lens_client.aio, lens_client.cli_common"
    )
    assert not loaded & {"lens_server", "lens_training", "torch", "onnxruntime", "faiss"}


def test_importing_the_core_loads_no_transport():
    loaded = _loaded_by("import lens_server.core")
    assert not loaded & {"grpc", "fastapi", "starlette", "uvicorn", "lens_training", "torch"}
