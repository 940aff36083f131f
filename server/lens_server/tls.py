"""TLS on every port of the server: the certificate files read and checked once at start-up,
before any port opens, and what each front door needs from them (gRPC's server credentials,
uvicorn's SSL options). With a client CA, every port asks for a client certificate signed by
it (mutual TLS) and refuses a connection without one."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from lens_server.config import TlsConfig


def from_options(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsConfig | None:
    """`--tls-cert`, `--tls-key` and `--tls-client-ca` → a TlsConfig (None: plain text);
    ValueError when they are given by halves."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (the server's own)")
        return None
    if cert is None:
        raise ValueError("--tls-key needs --tls-cert (the certificate of that key)")
    if key is None:
        raise ValueError("--tls-cert needs --tls-key (the certificate's private key)")
    return TlsConfig(cert, key, client_ca)


@dataclass(frozen=True)
class ServerTls:
    """A TlsConfig whose files were read and found usable: the PEM bytes, and the paths."""

    config: TlsConfig
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by the client CA."""
        return self.client_ca_pem is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For `grpc.aio.Server.add_secure_port`."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.mutual,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments of `uvicorn.Config`: its SSL context is built from them when the
        config is loaded."""
        options: dict[str, Any] = {
            "ssl_certfile": str(self.config.cert),
            "ssl_keyfile": str(self.config.key),
        }
        if self.config.client_ca is not None:
            options["ssl_ca_certs"] = str(self.config.client_ca)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        return options

    def describe(self) -> str:
        """One start-up line."""
        if self.config.client_ca is None:
            return f"TLS on every port (certificate {self.config.cert})"
        return (
            f"TLS on every port (certificate {self.config.cert}); clients must present a "
            f"certificate signed by {self.config.client_ca}"
        )


def load_tls(config: TlsConfig) -> ServerTls:
    """Reads the files of `config` and checks them: the certificate is PEM, the key is an
    unencrypted PEM key that matches it, the client CA holds PEM certificates. ValueError
    names the file and what is wrong with it, in one line."""
    cert_pem = _read(config.cert, "certificate")
    _check_certificates(cert_pem, config.cert, "certificate", "a PEM certificate")
    key_pem = _read(config.key, "key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.cert, config.key, password=_no_password)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(
                f"TLS key {config.key} does not match the certificate {config.cert}"
            ) from None
        raise ValueError(f"TLS key {config.key}: not a PEM private key") from None
    except _Encrypted:
        raise ValueError(f"TLS key {config.key}: encrypted; give it unencrypted") from None
    client_ca_pem = None
    if config.client_ca is not None:
        client_ca_pem = _read(config.client_ca, "client CA")
        _check_certificates(client_ca_pem, config.client_ca, "client CA", "PEM CA certificates")
    return ServerTls(config, cert_pem, key_pem, client_ca_pem)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"TLS {what} {path}: no such file") from None
    except OSError as e:
        raise ValueError(f"TLS {what} {path}: cannot read it ({e.strerror})") from None


def _check_certificates(pem: bytes, path: Path, what: str, expected: str) -> None:
    """ValueError unless `pem` holds PEM certificates OpenSSL can load."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError):
        raise ValueError(f"TLS {what} {path}: not {expected}") from None


class _Encrypted(Exception):
    pass


def _no_password() -> NoReturn:
    # Called only for an encrypted key: instead of OpenSSL's prompt on the terminal (gRPC
    # could not use the key anyway).
    raise _Encrypted
