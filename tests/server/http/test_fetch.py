"""Image URLs: refused unless allowed, then fetched with a size cap, a timeout and public
addresses only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lens_server.errors import InvalidInput
from lens_server.http.fetch import FetchConfig, Fetcher

BODY = b"\xff\xd8" + b"x" * 5000


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow.jpg":
            threading.Event().wait(2)
        if self.path == "/missing.jpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _image(config: FetchConfig, text: str) -> bytes:
    return asyncio.run(Fetcher(config).image(text, "input[0]"))


def test_urls_are_refused_unless_allowed(files):
    with pytest.raises(InvalidInput, match=r"input\[0\]: image URLs are not fetched.*--allow"):
        _image(FetchConfig(), f"{files}/a.jpg")


def test_loopback_and_private_addresses_are_refused(files):
    allowed = FetchConfig(allow=True)
    for url in (f"{files}/a.jpg", "http://10.1.2.3/a.jpg", "http://[::1]:9/a.jpg"):
        with pytest.raises(InvalidInput, match="not a public address"):
            _image(allowed, url)


def test_a_fetch_is_capped_in_size_and_time(files):
    # Loopback allowed for this test only: the public-address rule is tested above.
    local = FetchConfig(allow=True, public_only=False, timeout_s=0.5)
    assert _image(local, f"{files}/a.jpg") == BODY
    with pytest.raises(InvalidInput, match="over the limit of 100 bytes"):
        _image(FetchConfig(allow=True, public_only=False, max_bytes=100), f"{files}/a.jpg")
    with pytest.raises(InvalidInput, match="answered 404"):
        _image(local, f"{files}/missing.jpg")
    with pytest.raises(InvalidInput, match="could not fetch"):
        _image(local, f"{files}/slow.jpg")
