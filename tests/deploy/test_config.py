"""deploy/lens.toml and the Dockerfile agree: the image serves with that file, on its ports,
and checks its health where the file says the gRPC port is."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lens_server.access.keys import ApiKeys
from lens_server.errors import Unauthenticated
from tests.conftest import LENS, ROOT
from tests.deploy.conftest import DEPLOY

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_lens_serve_takes_the_file(lens_toml: dict[str, Any]):
    """`lens serve --print-config --config deploy/lens.toml` reads every key (an unknown one
    would stop it with exit code 2) and runs with the file's values."""
    result = subprocess.run(
        [str(LENS), "serve", "--print-config", "--config", str(DEPLOY / "lens.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    effective = tomllib.loads(result.stdout)
    from_file = {
        line.split(" = ")[0] for line in result.stdout.splitlines() if line.endswith("# file")
    }
    assert from_file == set(lens_toml)
    assert {k: effective[k] for k in lens_toml} == lens_toml
    assert lens_toml["host"] == "0.0.0.0"
    assert lens_toml["log_format"] == "json"
    assert (lens_toml["drain_delay"], lens_toml["grace_s"]) == (5.0, 30.0)


def test_the_image_serves_with_the_file(lens_toml: dict[str, Any]):
    copied = re.search(r"^COPY deploy/lens\.toml (\S+)$", DOCKERFILE, re.M)
    assert copied, "the Dockerfile does not copy deploy/lens.toml"
    assert f'CMD ["serve", "--config", "{copied.group(1)}"]' in DOCKERFILE
    exposed = re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.M)
    assert exposed and exposed.group(1).split() == [
        str(lens_toml["port"]),
        str(lens_toml["http_port"]),
    ]
    # The HEALTHCHECK asks the gRPC health service on the port the file sets.
    assert f'"lens", "health", "--server", "127.0.0.1:{lens_toml["port"]}"' in DOCKERFILE
    for folder in (lens_toml["repo"], lens_toml["collections"]):
        assert f'VOLUME ["{folder}"]' in DOCKERFILE
        assert re.search(rf"chown lens:lens .*{re.escape(folder)}", DOCKERFILE)


def test_example_keys_file_refuses_every_key(lens_toml: dict[str, Any]):
    """deploy/keys.example (Docker Compose's default keys secret) is a key list the server
    takes, and one that makes it require a key no one has rather than serve open."""
    keys = ApiKeys.read(DEPLOY / "keys.example")
    assert keys.required
    for presented in ("", "change-me", "0" * 64):
        with pytest.raises(Unauthenticated):
            keys.authenticate(presented)
    assert Path(lens_toml["api_keys"]).is_absolute()
