"""What the deployment files' tests share: the example config they all refer to."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="session")
def lens_toml() -> dict[str, Any]:
    """deploy/lens.toml, the production config every deployment file serves with."""
    return tomllib.loads((DEPLOY / "lens.toml").read_text())
