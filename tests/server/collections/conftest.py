"""Fixtures of the collection tests: a real Milvus (milvus-lite) server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server.collections.milvus_server import MilvusServer, require


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    require()
    server = MilvusServer(tmp_path_factory.mktemp("milvus"))
    yield server
    server.stop()
