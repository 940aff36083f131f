"""The web page in a real headless Chromium against a live server: each view does its job
through the public HTTP API, and the API's refusals show as its messages."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from lens_server.core.browse import projections
from tests.conftest import ServerProcess, encode, photo
from tests.server.http.web.conftest import (
    COLLECTION,
    DUPLICATE,
    PHONE,
    PHOTOS,
    Digits,
    b64,
    own_error,
)
from tests.server.test_deploy import copy_version

pytestmark = pytest.mark.slow
WAIT = 30  # seconds for the page to show what a request brought, on a loaded machine


def wait(driver: Any, condition: Any, timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def open_view(driver: Any, server: ServerProcess, view: str) -> None:
    """The page loaded afresh at `view` (a new fragment alone would not reload it)."""
    driver.get("about:blank")
    driver.get(f"{server.http}/#{view}")
    wait(driver, lambda d: css(d, "main").get_attribute("data-view") == view)


def shown_error(driver: Any) -> str:
    wait(driver, lambda d: css(d, "#error").is_displayed())
    return css(driver, "#error").text


def hits(driver: Any, count: int | None = None) -> list[tuple[str, float]]:
    """(id, score) of the results shown, once (all their thumbnails) loaded."""

    def ready(d: Any) -> bool:
        shown = all_css(d, "#hits li")
        loaded = d.execute_script(
            "return [...document.querySelectorAll('#hits img')].every(i => i.naturalWidth > 0)"
        )
        return bool(shown) and (count is None or len(shown) == count) and loaded

    wait(driver, ready)
    return [
        (li.get_attribute("data-id"), float(li.get_attribute("data-score")))
        for li in all_css(driver, "#hits li")
    ]


def pick(driver: Any, collection: str, select: str = "#collection") -> None:
    """Option `collection` of the <select> `select`, once the page has listed it."""
    from selenium.webdriver.support.ui import Select

    wait(
        driver,
        lambda d: collection in [o.get_attribute("value") for o in all_css(d, f"{select} option")],
    )
    Select(css(driver, select)).select_by_value(collection)


def search_text(driver: Any, text: str, k: int = 6) -> None:
    box = css(driver, "#k")
    box.clear()
    box.send_keys(str(k))
    query = css(driver, "#query")
    query.clear()
    query.send_keys(text)
    css(driver, "#search-form button[type=submit]").click()


def test_a_text_query_shows_thumbnails_in_score_order(browser, web_server, artefacts: Path):
    open_view(browser, web_server, "search")
    pick(browser, COLLECTION)
    search_text(browser, "a photo of a cat", k=6)
    shown = hits(browser, 6)
    scores = [s for _, s in shown]
    assert scores == sorted(scores, reverse=True)
    assert {i for i, _ in shown} <= {*PHOTOS, DUPLICATE[1]}
    first = css(browser, "#hits li img")
    assert first.get_attribute("alt") == f"item {shown[0][0]}"
    assert "hits for" in css(browser, "#summary").text
    browser.save_screenshot(str(artefacts / "search.png"))


def test_a_second_load_revalidates_the_thumbnails(browser, web_server):
    def not_modified() -> float:
        text = httpx.get(f"{web_server.http}/metrics", timeout=30).text
        route = 'method="/v1/collections/{collection}/items/{item:path}/thumbnail"'
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("lens_requests_total{") and route in line and 'code="304"' in line
        )

    for load in range(2):
        open_view(browser, web_server, "search")
        pick(browser, COLLECTION)
        search_text(browser, "a boat on the sea", k=5)
        hits(browser, 5)
        if load == 0:
            before = not_modified()
    assert not_modified() - before == 5  # each thumbnail asked again with If-None-Match


def test_an_uploaded_image_finds_itself_first(browser, web_server, tmp_path: Path):
    open_view(browser, web_server, "search")
    pick(browser, COLLECTION)
    upload = tmp_path / "coffee.jpg"
    upload.write_bytes(encode(photo("coffee"), "JPEG"))
    css(browser, "#image").send_keys(str(upload))
    shown = hits(browser)
    assert shown[0][0] == "coffee" and shown[0][1] > 0.99


def test_the_search_view_is_usable_from_the_keyboard(browser, web_server):
    """The query box has the focus, Enter searches, Tab reaches each result's button."""
    from selenium.webdriver.common.keys import Keys

    open_view(browser, web_server, "search")
    wait(browser, lambda d: css(d, "#collection").get_attribute("value") == COLLECTION)
    query = browser.switch_to.active_element
    assert query.get_attribute("id") == "query"
    query.send_keys("a cup of coffee", Keys.ENTER)
    first = hits(browser)[0][0]
    for _ in range(30):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        label = browser.switch_to.active_element.get_attribute("aria-label") or ""
        if label.startswith("More like"):
            break
    assert label == f"More like {first}"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser, lambda d: f"more like {first}" in css(d, "#summary").text)
    assert hits(browser)[0][0] == first


def test_more_like_this_searches_by_the_item(browser, web_server):
    open_view(browser, web_server, "search")
    pick(browser, COLLECTION)
    search_text(browser, "a rocket", k=4)
    hits(browser, 4)
    css(browser, "button[aria-label='More like horse']").click() if all_css(
        browser, "button[aria-label='More like horse']"
    ) else all_css(browser, "#hits li button")[-1].click()
    wait(browser, lambda d: "more like" in css(d, "#summary").text)
    wanted = css(browser, "#summary").text.split("more like ")[1].split(" in ")[0]
    shown = hits(browser)
    assert shown[0] == (wanted, pytest.approx(1.0, abs=1e-4))


def test_items_whose_ids_hold_slashes_show_their_thumbnails(browser, web_server):
    """Ids named like files (slashes, and what a URL must escape): the page escapes each as
    one path segment, the server's route takes it, and the thumbnail is the item's own."""
    # Photos of three shapes (3:2, 2:1, square), so that each thumbnail shows whose it is.
    files = {"holiday/2024/cat.jpg": "chelsea", "scans/odd #1?%&.png": "page"}
    files["a/b/c/astronaut.jpg"] = "astronaut"
    with httpx.Client(base_url=web_server.http, timeout=60) as http:
        http.delete("/v1/collections/files")
        made = http.post("/v1/collections", json={"name": "files", "model": "tiny"})
        assert made.status_code == 201, made.text
        items = [{"id": i, "image": b64(encode(photo(n), "JPEG"))} for i, n in files.items()]
        assert http.post("/v1/collections/files/items", json={"items": items}).status_code == 200
        try:
            open_view(browser, web_server, "search")
            pick(browser, "files")
            search_text(browser, "a photo", k=3)
            assert {i for i, _ in hits(browser, 3)} == set(files)  # every thumbnail loaded
            shapes = browser.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('#hits img')]"
                ".map(i => [i.closest('li').dataset.id, i.naturalWidth / i.naturalHeight]))"
            )
            for item, name in files.items():
                height, width = photo(name).shape[:2]
                assert shapes[item] == pytest.approx(width / height, rel=0.02), item
            css(browser, "button[aria-label='More like a/b/c/astronaut.jpg']").click()
            wait(browser, lambda d: "more like a/b/c/astronaut.jpg" in css(d, "#summary").text)
            assert hits(browser)[0] == ("a/b/c/astronaut.jpg", pytest.approx(1.0, abs=1e-4))
        finally:
            http.delete("/v1/collections/files")


def test_the_apis_refusals_show_as_its_messages(browser, web_server, tmp_path: Path):
    with httpx.Client(base_url=web_server.http, timeout=30) as http:
        assert http.post("/v1/collections", json={"name": "doomed"}).status_code == 201
        open_view(browser, web_server, "search")
        pick(browser, "doomed")
        assert http.delete("/v1/collections/doomed").status_code == 200
    search_text(browser, "anything")
    assert "collection 'doomed' not found" in shown_error(browser)
    pick(browser, COLLECTION)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"these bytes are no image")
    css(browser, "#image").send_keys(str(broken))
    wait(browser, lambda d: "could not be decoded" in css(d, "#error").text)
    assert css(browser, "main h2").text == "Search"  # the page is still there


def test_classify_shows_bars_per_image(browser, web_server, tmp_path: Path, artefacts: Path):
    open_view(browser, web_server, "classify")
    files = []
    for name in ("chelsea", "rocket"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(encode(photo(name)))
        files.append(str(path))
    css(browser, "#classify-images").send_keys("\n".join(files))
    css(browser, "#labels").send_keys("a cat, a rocket, a cup of coffee")
    css(browser, "#template-set").send_keys("simple")
    css(browser, "#classify-form button[type=submit]").click()
    wait(browser, lambda d: len(all_css(d, "#classified section")) == 2)
    for card in all_css(browser, "#classified section"):
        bars = card.find_elements("css selector", "[role=meter]")
        values = [float(b.get_attribute("aria-valuenow")) for b in bars]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert sum(values) == pytest.approx(100, abs=0.5)
        assert card.get_attribute("data-top") == bars[0].get_attribute("aria-label")
        fill = bars[0].find_element("css selector", "span").size["width"]
        assert fill == pytest.approx(bars[0].size["width"] * values[0] / 100, abs=2)
        assert bars[0].size["width"] > 100  # drawn, not squeezed out
    css(browser, "#save-name").send_keys("webpets")
    css(browser, "#save-name").find_element("xpath", "../following-sibling::button").click()
    wait(browser, lambda d: "Saved classifier webpets" in css(d, "#saved").text)
    browser.save_screenshot(str(artefacts / "classify.png"))


def test_a_few_shot_classifier_from_labelled_boxes(browser, web_server, tmp_path: Path):
    open_view(browser, web_server, "classify")
    paths = {}
    for name in ("chelsea", "rocket", "coffee"):
        paths[name] = tmp_path / f"{name}.jpg"
        paths[name].write_bytes(encode(photo(name), "JPEG"))
    css(browser, "#shot-name").send_keys("fewpets")
    for box, (label, example) in enumerate([("cat", "chelsea"), ("rocket", "rocket")], 1):
        css(browser, f"#shot-label-{box}").send_keys(label)
        css(browser, f"#shot-images-{box}").send_keys(str(paths[example]))
    css(browser, "#shot-name").find_element("xpath", "../following-sibling::button[2]").click()
    wait(browser, lambda d: "Saved classifier fewpets (few-shot, 2 labels" in css(d, "#saved").text)
    assert css(browser, "#classifier").get_attribute("value") == "fewpets"
    css(browser, "#classify-images").send_keys(f"{paths['chelsea']}\n{paths['rocket']}")
    css(browser, "#classify-form button[type=submit]").click()
    wait(browser, lambda d: len(all_css(d, "#classified section")) == 2)
    tops = [c.get_attribute("data-top") for c in all_css(browser, "#classified section")]
    assert tops == ["cat", "rocket"]  # each class's one example is its own prototype


def test_classify_names_each_digit_with_the_digits_model(
    browser, web_server, digits_model: Digits, artefacts: Path
):
    """A held-out image of each digit, dropped at once, the ten digit names typed, model
    `digits` picked: each image's top label is its digit."""
    assert digits_model.zero_shot_top1 >= 0.85  # a model that knows the digits
    open_view(browser, web_server, "classify")
    pick(browser, "digits", "#classify-model")
    css(browser, "#classify-images").send_keys("\n".join(str(p) for p in digits_model.images))
    css(browser, "#labels").send_keys(", ".join(digits_model.classes))
    css(browser, "#classify-form button[type=submit]").click()
    wait(browser, lambda d: len(all_css(d, "#classified section")) == len(digits_model.images))
    assert css(browser, "#classified-by").text == "10 images by digits:1, the labels typed"
    cards = all_css(browser, "#classified section")
    assert [c.find_element("css selector", "h3").text for c in cards] == [
        p.name for p in digits_model.images
    ]
    assert [c.get_attribute("data-top") for c in cards] == list(digits_model.classes)
    for card in cards:
        bars = card.find_elements("css selector", "[role=meter]")
        assert bars[0].get_attribute("aria-label") == card.get_attribute("data-top")
        assert float(bars[0].get_attribute("aria-valuenow")) > 100 / len(digits_model.classes)
    browser.save_screenshot(str(artefacts / "classify-digits.png"))


def test_duplicates_show_the_planted_pair(browser, web_server, artefacts: Path):
    open_view(browser, web_server, "duplicates")
    pick(browser, COLLECTION)
    threshold = css(browser, "#threshold")
    threshold.clear()
    threshold.send_keys("0.999")
    css(browser, "#dup-form button[type=submit]").click()
    wait(browser, lambda d: all_css(d, "#groups .group") or css(d, "#error").text)
    assert not css(browser, "#error").text
    groups = [
        [f.get_attribute("data-id") for f in g.find_elements("css selector", "figure")]
        for g in all_css(browser, "#groups .group")
    ]
    assert groups == [list(DUPLICATE)]
    ticked = [
        b.get_attribute("value") for b in all_css(browser, "input[name=extra]") if b.is_selected()
    ]
    assert ticked == [DUPLICATE[1]]  # the extra, not the first
    browser.save_screenshot(str(artefacts / "duplicates.png"))
    css(browser, "#view button.danger").click()
    wait(browser, lambda d: d.switch_to.alert).accept()
    wait(browser, lambda d: "Deleted 1." in css(d, "#dup-summary").text)
    assert not all_css(browser, "#groups .group")
    with httpx.Client(base_url=web_server.http, timeout=30) as http:
        url = f"/v1/collections/{COLLECTION}"
        assert http.get(url).json()["count"] == len(PHOTOS)
        image = b64(encode(photo(DUPLICATE[0]), "JPEG"))
        copy = {"id": DUPLICATE[1], "image": image, "metadata": {"kind": PHOTOS[DUPLICATE[0]]}}
        assert http.post(f"{url}/items", json={"items": [copy]}).status_code == 200


def test_the_map_draws_every_point(browser, web_server, artefacts: Path):
    open_view(browser, web_server, "map")
    pick(browser, COLLECTION)
    wait(browser, lambda d: css(d, "#map").get_attribute("data-points"))
    assert int(css(browser, "#map").get_attribute("data-points")) == len(PHOTOS) + 1
    assert int(css(browser, "#map").get_attribute("data-drawn")) == len(PHOTOS) + 1
    legend = {s.text for s in all_css(browser, "#legend span")}
    assert legend == set(PHOTOS.values())
    painted = browser.execute_script(
        "const c = document.getElementById('map');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
    )
    assert painted > 100
    # A click on a point opens its item and its nearest neighbours.
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = css(browser, "#map")
    where = browser.execute_script(
        "const c = document.getElementById('map'), b = c.getBoundingClientRect();"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "for (let i = 3; i < d.length; i += 4) if (d[i] === 255) {"
        "  const p = (i - 3) / 4, x = p % c.width, y = Math.floor(p / c.width);"
        "  const sx = b.width / c.width, sy = b.height / c.height;"
        "  return [(x + 2) * sx - b.width / 2, (y + 3) * sy - b.height / 2];"
        "}"
    )
    ActionChains(browser).move_to_element_with_offset(canvas, *where).click().perform()
    wait(browser, lambda d: len(all_css(d, "#neighbours li")) >= 5)
    opened = css(browser, "#map-item h3").text
    assert opened in {*PHOTOS, DUPLICATE[1]}
    assert opened not in [li.get_attribute("data-id") for li in all_css(browser, "#neighbours li")]
    browser.save_screenshot(str(artefacts / "map.png"))


def test_the_map_offers_umap_where_the_server_has_it(browser, web_server, artefacts: Path):
    """With umap-learn (the `umap` extra) the UMAP projection draws every point; without it
    the choice is there, disabled, saying why."""
    from selenium.webdriver.support.ui import Select

    open_view(browser, web_server, "map")
    pick(browser, COLLECTION)
    wait(browser, lambda d: css(d, "#map").get_attribute("data-method") == "pca")
    umap = css(browser, "#projection option[value=umap]")
    if "umap" not in projections():
        assert not umap.is_enabled() and "has no umap-learn" in umap.text
        return
    Select(css(browser, "#projection")).select_by_value("umap")
    # The server's first UMAP compiles it (numba): tens of seconds on two loaded cores.
    wait(browser, lambda d: css(d, "#map").get_attribute("data-method") == "umap", timeout=180)
    assert int(css(browser, "#map").get_attribute("data-points")) == len(PHOTOS) + 1
    assert int(css(browser, "#map").get_attribute("data-drawn")) == len(PHOTOS) + 1
    assert "UMAP layout" in css(browser, "#map-summary").text
    browser.save_screenshot(str(artefacts / "map-umap.png"))


def test_models_lists_the_versions_and_status_reads_the_counters(browser, web_server, artefacts):
    open_view(browser, web_server, "models")
    wait(browser, lambda d: all_css(d, "section[data-model=tiny] tbody tr"))
    rows = {
        r.get_attribute("data-version"): r.get_attribute("data-state")
        for r in all_css(browser, "section[data-model=tiny] tbody tr")
    }
    assert rows["1"] == "serving" and rows["2"] in ("available", "ready")
    assert all_css(browser, f"tr[data-collection={COLLECTION}]")
    browser.save_screenshot(str(artefacts / "models.png"))
    open_view(browser, web_server, "status")
    wait(browser, lambda d: "requests answered" in css(d, "#status-summary").text)
    assert len(all_css(browser, "#charts canvas")) == 5
    # A second reading gives a rate (the page's own reads of /metrics are requests too).
    wait(browser, lambda d: "req/s" in css(d, "#charts .figure").text)
    browser.save_screenshot(str(artefacts / "status.png"))


def test_a_phone_width_screen_has_no_sideways_scroll(browser, web_server, artefacts: Path):
    browser.set_window_size(*PHONE)
    for view in ("search", "classify", "models", "duplicates", "map", "status"):
        open_view(browser, web_server, view)
        wide = browser.execute_script("return document.documentElement.scrollWidth")
        assert wide <= browser.execute_script("return window.innerWidth"), view
    open_view(browser, web_server, "search")
    pick(browser, COLLECTION)
    search_text(browser, "a horse", k=4)
    hits(browser, 4)
    browser.save_screenshot(str(artefacts / "search-phone.png"))


def test_a_deploy_from_the_page_fails_no_request_of_a_client_meanwhile(browser, web_server):
    """Last: it moves the server (and its collection) to version 2."""
    failures: list[str] = []
    answered = 0
    done = threading.Event()

    def client() -> None:
        nonlocal answered
        with httpx.Client(base_url=web_server.http, timeout=30) as http:
            while not done.is_set():
                answer = http.post("/v1/embed", json={"inputs": [{"text": "a cat"}]})
                if answer.status_code != 200:
                    failures.append(answer.text)
                answered += 1

    open_view(browser, web_server, "models")
    deploy = "button[aria-label='Deploy tiny version 2']"
    wait(browser, lambda d: all_css(d, deploy) and css(d, deploy).is_enabled())
    running = threading.Thread(target=client)
    running.start()
    try:
        css(browser, deploy).click()
        wait(browser, lambda d: d.switch_to.alert).accept()
        wait(browser, lambda d: "version 2 serving (was 1)" in css(d, "#deployed").text)
        wait(browser, lambda d: row_state(d, "2") == "serving")
    finally:
        done.set()
        running.join(30)
    assert answered > 0 and not failures, failures[:3]
    with httpx.Client(base_url=web_server.http, timeout=30) as http:
        assert http.get("/v1/models/tiny").json()["serving_version"] == 2


def row_state(driver: Any, version: str) -> str | None:
    rows = all_css(driver, f"section[data-model=tiny] tr[data-version='{version}']")
    return rows[0].get_attribute("data-state") if rows else None


def test_an_api_key_is_asked_once_and_kept_for_the_tab(chromium, tiny_repo, tmp_path: Path):
    keys = tmp_path / "keys.txt"
    keys.write_text("page-key embed,write\n")
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo"))
    copy_version(repo, 1)  # serving 2, so that version 1 could be deployed with the scope
    keyed = ServerProcess(repo, "--api-keys", str(keys))
    try:
        with httpx.Client(base_url=keyed.http, timeout=30) as http:
            made = http.post(
                "/v1/collections",
                json={"name": "kept", "model": "tiny"},
                headers={"Authorization": "Bearer page-key"},
            )
            assert made.status_code == 201, made.text
        open_view(chromium, keyed, "search")
        wait(chromium, lambda d: css(d, "#key-dialog").is_displayed())
        assert "API key" in css(chromium, "#key-reason").text
        css(chromium, "#key-input").send_keys("wrong-key")
        css(chromium, "#key-form button[value=ok]").click()
        wait(chromium, lambda d: css(d, "#key-dialog").is_displayed())  # asked again
        css(chromium, "#key-input").clear()
        css(chromium, "#key-input").send_keys("page-key")
        css(chromium, "#key-form button[value=ok]").click()
        pick(chromium, "kept")
        open_view(chromium, keyed, "models")  # a new load of the page: the key is kept
        wait(chromium, lambda d: all_css(d, "section[data-model=tiny] tbody tr"))
        assert not css(chromium, "#key-dialog").is_displayed()
        # The key has no admin scope: the buttons that need it are disabled.
        wait(
            chromium,
            lambda d: not css(d, "button[aria-label='Deploy tiny version 1']").is_enabled(),
        )
        assert not css(chromium, "button[aria-label='Roll back tiny']").is_enabled()
        assert not [e for e in chromium.get_log("browser") if own_error(e)]
    finally:
        chromium.execute_script("sessionStorage.clear()")
        keyed.stop()
