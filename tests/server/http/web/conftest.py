"""The browser-test harness: a real `lens serve` over a copy of the tiny model's repository
(with a second version to deploy), a collection of skimage photos with a planted duplicate,
a small CLIP trained on the digits for the tests that need a model that knows something,
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
from dataclasses import dataclass
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
def web_repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(tiny_repo, tmp_path_factory.mktemp("web") / "repo"))


@pytest.fixture(scope="session")
def web_server(web_repo: Path) -> Iterator[ServerProcess]:
    """A server of its own over a copy of the repository: tiny version 1 serving (the
    default model, also once `digits` joins), version 2 (the same weights) found by a reload
    after it started, and collection `photos`."""
    repo = web_repo
    proc = ServerProcess(
        repo, "--default-model", "tiny", "--max-batch-size", "8", "--max-queue-delay-ms", "5"
    )
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


@dataclass(frozen=True)
class Digits:
    """The served `digits` model's held-out images to classify: PNG files, one per digit in
    order, and the label of each (`classes`, the names the model was trained on)."""

    images: list[Path]
    classes: tuple[str, ...]
    zero_shot_top1: float  # of the trained model on all its held-out digits


# The captions the model is trained on: one template, the server's default set (`simple`),
# so the page's labels need no template set.
DIGIT_TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="session")
def digits_model(
    web_server: ServerProcess, web_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Digits:
    """The smallest CLIP of lens's configs (`lens-tiny-clip-digits`) trained on
    scikit-learn's 8×8 digits for 150 steps (seconds on two cores, about 0.94 zero-shot on
    the 300 held out), exported as model `digits` into the web server's repository and
    loaded by a reload. Of the held-out digits, each class's first that the trained model
    itself gets right: what the model gets wrong is training's business, not the page's."""
    import torch
    from PIL import Image

    from lens_server.repository import Repository
    from lens_training.config import TrainConfig
    from lens_training.evaluate import features, zero_shot_weights
    from lens_training.export.trained import export_run
    from lens_training.loop import Trainer

    folder = tmp_path_factory.mktemp("digits")
    config = TrainConfig(
        method="clip",
        data="digits",
        arch="lens-tiny-clip-digits",
        out=str(folder / "run"),
        steps=150,
        batch_size=128,
        lr=2e-3,
        holdout=300,
        seed=0,
        device="cpu",
        baseline=False,
        templates=(DIGIT_TEMPLATE,),
    )
    trainer = Trainer(config)
    result = trainer.run()
    test = trainer.test_set
    assert test is not None and test.labels is not None
    method = trainer.method.eval()
    weights = zero_shot_weights(method, test.classes, config.templates)  # (10, D)
    with torch.no_grad():
        predicted = (features(method, test) @ weights.T).argmax(1)  # (300,)
    images = []
    for digit, name in enumerate(test.classes):
        right = ((test.labels == digit) & (predicted == digit)).nonzero()
        assert len(right), f"the trained model gets no held-out {name} right"
        path = folder / f"{digit}-{name}.png"
        Image.fromarray(test.pixels[int(right[0])].permute(1, 2, 0).numpy()).save(path)
        images.append(path)
    export_run(Repository(web_repo), Path(config.out), "digits")
    with httpx.Client(base_url=str(web_server.http), timeout=120) as http:
        assert http.post("/v1/repository/reload").status_code == 200
        assert http.get("/v1/models/digits").json()["serving_version"] == 1
    return Digits(images, test.classes, result["eval"]["zero_shot_top1"])


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
