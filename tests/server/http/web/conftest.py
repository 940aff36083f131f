"""The browser-test harness: a real `lens serve` over a copy of the tiny model's repository
(with a second version to deploy), a collection of skimage photos with a planted duplicate,
and Debian's headless Chromium driven through Selenium.

Without Chromium (or selenium) the tests are skipped, saying how to install them; under
CI=true a missing browser fails. Every test reads the browser's console afterwards and fails
on an error of the page's own JavaScript. Screenshots go to $LENS_TEST_ARTIFACTS (or a pytest
temporary folder), one per view.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, encode, photo
from tests.server.test_deploy import copy_version

CHROMIUM = ("chromium", "chromedriver")
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
# Photos of the collection and what each shows; chelsea-copy is chelsea again (a duplicate).
PHOTOS = {
    "astronaut": "person",
    "chelsea": "animal",
    "coffee": "object",
    "rocket": "object",
    "camera": "person",
    "coins": "object",
    "clock": "object",
    "horse": "animal",
    "moon": "object",
    "page": "object",
}
DUPLICATE = ("chelsea", "chelsea-copy")
COLLECTION = "photos"
PHONE = (390, 844)
DESKTOP = (1280, 800)


def _missing() -> str:
    absent = [name for name in CHROMIUM if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append("selenium (pip install -e '.[dev]')")
    if not absent:
        return ""
    return f"browser tests need {', '.join(absent)}: {INSTALL}"


@pytest.fixture(scope="session")
def web_server(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server of its own over a copy of the repository: tiny version 1 serving, version 2
    (the same weights) found by a reload after it started, and collection `photos`."""
    repo = Path(shutil.copytree(tiny_repo, tmp_path_factory.mktemp("web") / "repo"))
    proc = ServerProcess(repo, "--max-batch-size", "8", "--max-queue-delay-ms", "5")
    assert proc.http
    with httpx.Client(base_url=proc.http, timeout=60) as http:
        copy_version(repo, 1)
        assert http.post("/v1/repository/reload").status_code == 200
        answer = http.post("/v1/collections", json={"name": COLLECTION, "model": "tiny"})
        assert answer.status_code == 201, answer.text
        items = [
            {"id": name, "image": b64(encode(photo(name), "JPEG")), "metadata": {"kind": kind}}
            for name, kind in PHOTOS.items()
        ]
        copy = {**items[1], "id": DUPLICATE[1]}
        answer = http.post(f"/v1/collections/{COLLECTION}/items", json={"items": [*items, copy]})
        assert answer.status_code == 200, answer.text
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("LENS_TEST_ARTIFACTS")
    folder = Path(given) / "web" if given else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for every browser test (starting one is slow on 2 cores)."""
    if missing := _missing():
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture()
def browser(chromium: Any, web_server: ServerProcess) -> Iterator[Any]:
    """The browser at the desktop size, its console read before and checked after the test:
    an error of the page's own scripts fails it (a failed request's network line does not:
    the page shows the API's message for those)."""
    chromium.set_window_size(*DESKTOP)
    chromium.get_log("browser")
    yield chromium
    errors = [e for e in chromium.get_log("browser") if own_error(e)]
    assert not errors, f"the page's scripts logged errors: {errors}"


def own_error(entry: dict[str, Any]) -> bool:
    return entry["level"] == "SEVERE" and entry.get("source") in ("javascript", "console-api")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
