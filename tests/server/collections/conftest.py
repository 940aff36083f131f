"""Fixtures of the collection tests: a real Milvus (milvus-lite) server and a real PostgreSQL
server with pgvector for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server.collections import pg_server
from tests.server.collections.milvus_server import MilvusServer, require
from tests.server.collections.pg_server import PgServer


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    require()
    server = MilvusServer(tmp_path_factory.mktemp("milvus"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    pg_server.require()
    server = PgServer(tmp_path_factory.mktemp("pg"))
    yield server
    server.remove()
