"""Images given as text: base64, data URIs, and (only where the server allows it) URLs.

Fetching `http(s)://` URLs is off unless `lens serve --allow-url-fetch`; then a fetch has a
size cap and a timeout, follows no redirects, and goes only to public addresses (never
loopback, private, link-local or reserved ones), checked on the address it connects to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from lens_server.errors import InvalidInput
from lens_server.http.codec import image_bytes


@dataclass(frozen=True)
class FetchConfig:
    allow: bool = False
    max_bytes: int = 32 * 1024 * 1024
    timeout_s: float = 10.0
    # Refuse addresses that are not public (loopback, private, link-local, reserved). Only a
    # test of the fetching itself, against a server on loopback, turns this off.
    public_only: bool = True


class Fetcher:
    def __init__(self, config: FetchConfig) -> None:
        self.config = config

    async def image(self, text: str, where: str) -> bytes:
        if self.config.allow and text.startswith(("http://", "https://")):
            return await self._fetch(text, where)
        return image_bytes(text, where)

    async def _fetch(self, url: str, where: str) -> bytes:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await _address(parts.hostname or "", port, where, self.config.public_only)
        # Plain HTTP connects to the address checked above, not to a second lookup of the
        # name; HTTPS needs the name for its certificate, and the certificate vouches for it.
        if parts.scheme == "http":
            netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            target = parts._replace(netloc=netloc).geturl()
        else:
            target = url
        limit = self.config.max_bytes
        chunks, size = [], 0
        try:
            async with (
                httpx.AsyncClient(timeout=self.config.timeout_s) as client,
                client.stream("GET", target, headers={"host": parts.netloc}) as response,
            ):
                if response.status_code != 200:
                    raise InvalidInput(f"{where}: {url} answered {response.status_code}")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise InvalidInput(f"{where}: {url} is over the limit of {limit} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as e:
            raise InvalidInput(f"{where}: could not fetch {url}: {e}") from None
        return b"".join(chunks)


async def _address(host: str, port: int, where: str, public_only: bool) -> str:
    if not host:
        raise InvalidInput(f"{where}: the URL has no host")
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise InvalidInput(f"{where}: cannot resolve {host}: {e}") from None
    for *_, address in found:
        ip = ipaddress.ip_address(address[0])
        if public_only and not ip.is_global:
            raise InvalidInput(
                f"{where}: {host} resolves to {ip}, which is not a public address; "
                "the server fetches only public URLs"
            )
    return str(ipaddress.ip_address(found[0][4][0]))
