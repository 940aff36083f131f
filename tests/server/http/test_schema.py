"""The HTTP API against its own OpenAPI schema: schemathesis generates requests from the live
server's `/openapi.json`, valid ones and not, and checks that none gets a 5xx answer and that
every answer matches the schema its route declares; the server still serves afterwards.

Path parameters name what exists (model `tiny`, a collection and a classifier made first)
so that examples reach past the 404s. Left out, because they change what the server serves
for every later example: loading, unloading, deploying and rolling back models (lens's
routes and KServe's repository extension), and the DELETE routes (dropping a collection or
a classifier).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import ServerProcess

# Examples per route: enough to reach each route's refusals, the whole test within ~60 s on
# 2 cores.
EXAMPLES = 30
# lens.v1's /v1/models/{name}/... and KServe's /v2/repository/models/{name}/...
DESTRUCTIVE = r"/(load|unload|deploy|rollback)$"
EXISTING = {"name": "tiny", "version": "1", "collection": "photos"}
CLASSIFIER = "pets"


@pytest.fixture(scope="module")
def fuzzed(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own over a copy of the repository (saved classifiers live there), so
    that what the examples create stays out of other tests."""
    repo = tmp_path_factory.mktemp("fuzzed") / "repo"
    shutil.copytree(tiny_repo, repo)
    proc = ServerProcess(repo, "--max-batch-size", "8", "--max-inputs", "16")
    assert proc.http
    with httpx.Client(base_url=proc.http, timeout=30) as http:
        made = [
            http.post("/v1/collections", json={"name": "photos", "model": "tiny"}),
            http.post(
                "/v1/collections/photos/items",
                json={"items": [{"id": f"t{i}", "text": f"cat {i}"} for i in range(8)]},
            ),
            http.post(
                "/v1/classifiers",
                json={"name": CLASSIFIER, "zero_shot": {"labels": ["cat", "dog"]}},
            ),
        ]
    assert all(r.status_code < 300 for r in made), [r.text for r in made]
    yield proc
    proc.stop()


def _existing(operation) -> dict[str, str] | None:
    names = {p.name for p in operation.path_parameters}
    known = {"name": CLASSIFIER} if "/classifiers/" in operation.path else EXISTING
    return {k: v for k, v in known.items() if k in names} or None


def test_answers_match_the_schema_and_are_never_5xx(fuzzed: ServerProcess):
    api = schemathesis.openapi.from_url(f"{fuzzed.http}/openapi.json")
    api = api.exclude(path_regex=DESTRUCTIVE).exclude(method="DELETE")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {"/v1/embeddings", "/v1/embed"} <= {op.path for op in operations}
    failures: dict[str, str] = {}
    for operation in operations:
        given_names = _existing(operation)
        cases = st.one_of(
            *(
                operation.as_strategy(mode, path_parameters=given_names)
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            )
        )

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def examples(case) -> None:
            case.call_and_validate(
                checks=[not_a_server_error, response_schema_conformance], timeout=30
            )

        try:
            examples()
        except (Exception, FailureGroup) as e:  # collected, so that every route is tried
            failures[operation.label] = str(e)
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def test_server_still_serves_after_the_examples(fuzzed: ServerProcess):
    assert fuzzed.alive()
    health = httpx.get(f"{fuzzed.http}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "serving"
    embedded = httpx.post(f"{fuzzed.http}/v1/embeddings", json={"input": "a cat"}, timeout=10)
    assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 32
