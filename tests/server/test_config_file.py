"""`lens serve --config FILE` and `--print-config`, through `lens serve` as a process: the file
against the same flags, precedence (flag > LENS_<OPTION> > file > default), batching per
model reaching a served model, the file's refusals, and --print-config's round trip."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LENS, ROOT, ServerProcess

# The environment of every run: none of the caller's LENS_* variables.
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("LENS_")}


def serve(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [str(LENS), "serve", *args],
        capture_output=True,
        text=True,
        env={**CLEAN, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def effective(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """The configuration `--print-config` prints, parsed, and where it says each value came
    from (the comment ending its line)."""
    done = serve("--print-config", *args, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    sources = {
        line.split(" = ", 1)[0]: line.rsplit("  # ", 1)[1]
        for line in done.stdout.splitlines()
        if "  # " in line and not line.startswith("#")
    }
    return tomllib.loads(done.stdout), sources


def printed(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    return effective(*args, env=env, cwd=cwd)[0]


FILE = """
host = "0.0.0.0"
port = 6001
http_port = 6002
no_http = true
allow_url_fetch = true
repo = "models"
max_batch_size = 16
max_queue_delay_ms = 2.5
instances = 2
memory_budget = "1GiB"
api_keys = "keys.txt"
rate_limit_rps = 7
compat = ["kserve", "immich"]
alias = ["ViT-B-32__openai=tiny", "b=tiny:1"]
log_format = "json"
"""

FLAGS = [
    "--host", "0.0.0.0", "--port", "6001", "--http-port", "6002", "--no-http",
    "--allow-url-fetch", "--repo", "models", "--max-batch-size", "16",
    "--max-queue-delay-ms", "2.5", "--instances", "2", "--memory-budget", "1GiB",
    "--api-keys", "keys.txt", "--rate-limit-rps", "7", "--compat", "kserve,immich",
    "--alias", "ViT-B-32__openai=tiny", "--alias", "b=tiny:1", "--log-format", "json",
]  # fmt: skip


def test_the_file_gives_what_the_same_flags_give(tmp_path: Path):
    (tmp_path / "lens.toml").write_text(FILE)
    by_flags = printed(*FLAGS, cwd=tmp_path)
    by_file = printed("--config", "lens.toml", cwd=tmp_path)
    assert by_file == by_flags
    assert by_file["port"] == 6001 and by_file["no_http"] is True
    assert by_file["compat"] == ["kserve", "immich"]
    assert by_file["alias"] == ["ViT-B-32__openai=tiny", "b=tiny:1"]
    assert by_file["api_keys"] == str(tmp_path / "keys.txt")


def test_relative_paths_are_taken_from_the_files_folder(tmp_path: Path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "lens.toml").write_text('repo = "models"\ncollections = "/srv/collections"\n')
    got = printed("--config", str(folder / "lens.toml"), cwd=tmp_path)
    assert got["repo"] == str(folder / "models")
    assert got["collections"] == "/srv/collections"
    assert printed(cwd=tmp_path)["repo"] == str(tmp_path / "models")  # a default: the cwd's


def test_a_flag_over_the_environment_over_the_file_over_the_default(tmp_path: Path):
    config = tmp_path / "lens.toml"
    config.write_text("http_port = 1111\nno_metrics = true\n")
    file, env = ["--config", str(config)], {"LENS_HTTP_PORT": "2222", "LENS_NO_METRICS": "0"}
    for args, variables, port, said in [
        ([*file, "--http-port", "3333"], env, 3333, "flag"),
        (file, env, 2222, "environment"),
        (file, {}, 1111, "file"),
        ([], {}, 8080, "default"),
    ]:
        values, sources = effective(*args, env=variables)
        assert (values["http_port"], sources["http_port"]) == (port, said)
        # A flag option (true in the file) the same way.
        assert values["no_metrics"] is (said == "file")
    # The variables that were there before the file keep their meaning.
    lens_vars = {"LENS_COLLECTIONS": "/c", "LENS_DEFAULT_MODEL": "tiny", "LENS_CONFIG": str(config)}
    got = printed(env=lens_vars)
    assert (got["collections"], got["default_model"], got["http_port"]) == ("/c", "tiny", 1111)


def test_api_keys_from_the_environment_are_never_printed(tmp_path: Path):
    env = {"LENS_API_KEYS": "sesame-7f3a embed;sesame-9b1c admin"}
    done = serve("--print-config", "--api-keys", str(tmp_path / "keys.txt"), env=env)
    assert done.returncode == 0, done.stderr
    assert "sesame" not in done.stdout + done.stderr
    assert "2 API key(s) from LENS_API_KEYS, not printed" in done.stdout
    assert tomllib.loads(done.stdout)["api_keys"] == str(tmp_path / "keys.txt")  # a path: shown
    by_env = printed(env={"LENS_API_KEYS_FILE": str(tmp_path / "k")})
    assert by_env["api_keys"] == str(tmp_path / "k")


def test_print_config_round_trips(tmp_path: Path):
    (tmp_path / "lens.toml").write_text(
        FILE + '\n[models.tiny]\nmax_batch_size = 4\n\n[models."with space"]\ninstances = 3\n'
    )
    env = {"LENS_GRACE_S": "12.5", "LENS_WEAVIATE_MODEL": 'odd "name"\\'}
    first = serve("--print-config", "--config", "lens.toml", "--port", "7", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = tmp_path / "printed.toml"
    again.write_text(first.stdout)
    # Read back from another folder, with no flags or variables: the same configuration.
    assert printed("--config", str(again), cwd=ROOT) == tomllib.loads(first.stdout)
    got = tomllib.loads(first.stdout)
    assert (got["port"], got["grace_s"], got["weaviate_model"]) == (7, 12.5, 'odd "name"\\')
    assert got["models"]["tiny"] == {
        "max_batch_size": 4,
        "max_queue_delay_ms": 2.5,  # the rest from the global batching options
        "max_queue_size": 4096,
        "instances": 2,
    }
    assert got["models"]["with space"]["instances"] == 3


def test_the_deployment_config_is_accepted():
    got = printed("--config", str(ROOT / "deploy" / "lens.toml"))
    assert got["host"] == "0.0.0.0"


def test_the_readme_example_is_accepted(tmp_path: Path):
    section = (ROOT / "README.md").read_text().split("### Config file", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "lens.toml").write_text(example)
    got = printed("--config", str(tmp_path / "lens.toml"))
    assert got["collections"] == str(tmp_path / "collections")
    assert got["models"]["clip"]["max_batch_size"] == 64


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "port = 1\nhtp_port = 1\n",
            "lens.toml:2: unknown key 'htp_port' (did you mean 'http_port'?)",
        ),
        ('[tls]\ncert = "a.pem"\n', "lens.toml:1: unknown table [tls]"),
        ("port = 1\nhost = = 2\n", "lens.toml: not valid TOML: Invalid value (at line 2,"),
        ('port = "50051"\n', "lens.toml:1: port must be an integer, not a string"),
        ("no_http = 1\n", "lens.toml:1: no_http must be true or false, not an integer (1)"),
        ('alias = "a=b"\n', "lens.toml:1: alias must be an array of strings, not a string"),
        ("[models.tiny]\nmax_batch = 3\n", "lens.toml:2: unknown key 'max_batch' in [models.tiny]"),
        (
            '[models.tiny]\nmax_batch_size = "3"\n',
            "lens.toml:2: [models.tiny] max_batch_size must be an integer, not a string",
        ),
        ("models = 3\n", "lens.toml:1: models must be tables [models.NAME]"),
        (
            "[models.tiny]\nmax_batch_size = 64\nmax_queue_size = 8\n",
            "lens.toml:1: [models.tiny]: max_queue_size (8) must be >= max_batch_size (64)",
        ),
        ('compat = ["kserve", "nope"]\n', "compat: unknown API nope"),
    ],
)
def test_a_file_it_cannot_use_stops_start_up(tmp_path: Path, text: str, says: str):
    (tmp_path / "lens.toml").write_text(text)
    done = serve("--config", "lens.toml", "--port", "0", "--http-port", "0", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert "serving" not in done.stdout + done.stderr


def test_a_missing_file_stops_start_up(tmp_path: Path):
    done = serve("--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert done.stderr == f"lens: cannot read the config file {tmp_path / 'nope.toml'}: " + (
        "No such file or directory\n"
    )


@pytest.mark.slow
def test_a_model_batches_as_its_table_says(tiny_repo: Path, tmp_path: Path):
    config = tmp_path / "lens.toml"
    config.write_text(
        "max_batch_size = 8\n\n[models.tiny]\nmax_batch_size = 2\n\n[models.later]\ninstances = 2\n"
    )
    server = ServerProcess(tiny_repo, "--config", str(config))
    try:
        said = "batching is given for model 'later', which is not in"
        assert any(said in line for line in server.log), "".join(server.log)
        assert server.http
        texts = [f"a photo of thing {i}" for i in range(6)]
        response = httpx.post(f"{server.http}/v1/embeddings", json={"input": texts}, timeout=60)
        assert response.status_code == 200, response.text
        metrics = httpx.get(f"{server.http}/metrics", timeout=30).text
    finally:
        server.stop()
    text_tower = {"model": "tiny", "version": "1", "modality": "text"}
    sizes = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name.startswith("lens_batch_size")
        and all(s.labels.get(k) == v for k, v in text_tower.items())
    }
    # One request of 6 texts (and the warm-up's): batches of at most 2, the model's, not one
    # of 6 as the global 8 would give.
    assert sizes[("lens_batch_size_sum", None)] >= 6
    assert sizes[("lens_batch_size_count", None)] >= 3
    assert sizes[("lens_batch_size_bucket", "2.0")] == sizes[("lens_batch_size_count", None)]
