"""Every mistake a user can make on the command line or in a file it names is one line that names
the fix, with exit status 2, never a traceback."""

from __future__ import annotations

import json
import os

import pytest

from service.cli.main import main
from tests.test_service import served  # noqa: F401  (the gRPC server fixture)


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALPEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SCALPEL_ADDRESS", "127.0.0.1:9")  # never reached: each mistake is caught before
    monkeypatch.setenv("SCALPEL_API_KEY", "unused")
    contents = {
        "broken.yaml": "kind: steering\nparams: {site: blocks.1.hook_resid_pre\n",
        "kind.yaml": "kind: nope\nparams: {}\n",
        "mean.yaml": "kind: head_ablation\nparams: {layer: 0, heads: [1], mode: mean}\n",
        "pairs.yaml": "[[only one text]]\n",
        "config.yaml": "models: {toy: [unclosed\n",
    }
    for name, text in contents.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _fails_in_one_line(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("scalpel: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_files_and_flags_are_one_line_with_the_fix(files, capsys) -> None:
    _fails_in_one_line(capsys, ["edits", "create", "-f", str(files / "broken.yaml")], "not valid YAML at line 3")
    _fails_in_one_line(capsys, ["edits", "create", "-f", str(files / "kind.yaml")], "unknown edit kind 'nope'")
    _fails_in_one_line(capsys, ["edits", "create", "-f", str(files / "mean.yaml")], "means: is required")
    _fails_in_one_line(
        capsys, ["edits", "steer", "--pairs", str(files / "pairs.yaml"), "--layer", "1"], "[positive, negative]"
    )
    _fails_in_one_line(capsys, ["serve", "--model", "/models/toy"], "--model takes NAME=PATH or toy")
    _fails_in_one_line(capsys, ["serve", "--model", "toy", "--model", "x=/no/dir"], "model 'x': no model directory")
    _fails_in_one_line(capsys, ["serve", "--model", "toy=/no/such/dir"], "no model directory at /no/such/dir")
    _fails_in_one_line(capsys, ["serve", "--config", str(files / "config.yaml")], "fix the config file")
    _fails_in_one_line(capsys, ["rome", "eval", "--hparams", "{kl"], "--hparams is not valid JSON")
    _fails_in_one_line(capsys, ["rome", "eval", "--hparams", '{"kl_direction": "up"}'], "init_new | new_init")
    _fails_in_one_line(capsys, ["memit", "eval", "--hparams", '{"lazers": [0]}'], "fields of MemitHyperParams")
    for text, needle in (
        ("workers: many\n", "workers must be an integer, got 'many'"),
        ("insecure: 'yes'\n", "insecure must be true or false"),
        ("unhealthy_after_seconds: soon\n", "unhealthy_after_seconds must be a number"),
        ("tls_cert: 5\n", "tls_cert must be a path or null"),
        ("max_streams: 0\n", "max_streams must be at least 1, got 0"),
        ("prefill_chunk_tokens: 0\n", "prefill_chunk_tokens must be at least 1, got 0"),
        ("prefix_cache_mb: -1\n", "prefix_cache_mb must be 0 (off) or more, got -1"),
        ("kv_cache_mb: -1\n", "kv_cache_mb must be 0 (no budget) or more, got -1"),
        ("ride_prefill: 'no'\n", "ride_prefill must be true or false"),
        ("admit_within_steps: -1\n", "admit_within_steps must be 0 (at once) or more, got -1"),
        ("max_batch_rows: 0\n", "max_batch_rows must be at least 1, got 0"),
    ):
        (files / "typed.yaml").write_text(text)
        _fails_in_one_line(capsys, ["serve", "--config", str(files / "typed.yaml")], needle)


def test_database_mistakes_are_one_line(files, capsys) -> None:
    assert main(["db", "upgrade"]) == 0
    assert "database upgraded to head" in capsys.readouterr().out  # success says so
    assert main(["keys", "create", "ops", "--role", "admin", "--json"]) == 0
    capsys.readouterr()
    _fails_in_one_line(capsys, ["keys", "create", "ops", "--role", "admin"], "'ops'")
    _fails_in_one_line(
        capsys, ["db", "upgrade", "--url", "postgres://postgres@127.0.0.1/test"], "postgresql://user@host"
    )
    server = os.environ.get("SCALPEL_TEST_POSTGRES_URL")
    if server is None:
        pytest.skip("SCALPEL_TEST_POSTGRES_URL is not set: the missing-database case needs a PostgreSQL server")
    missing = server.rsplit("/", 1)[0] + "/scalpel_no_such_database"
    _fails_in_one_line(capsys, ["db", "upgrade", "--url", missing], "does not exist", "createdb")


def test_a_key_needs_a_role_and_a_missing_key_names_where_it_goes(served, capsys, monkeypatch) -> None:  # noqa: F811
    with pytest.raises(SystemExit) as refused:  # argparse: --role is required, not silently admin
        main(["keys", "create", "someone"])
    assert refused.value.code == 2 and "--role" in capsys.readouterr().err
    _, _, _, address = served
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.delenv("SCALPEL_API_KEY", raising=False)
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err and "--api-key" in err and "$SCALPEL_API_KEY" in err


def test_remote_keys_create_prints_the_secret_once_and_the_key_works(served, capsys, monkeypatch) -> None:  # noqa: F811
    server, _, _, address = served
    _, admin_secret = server.registry.create_key("root", "admin", "test")
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", admin_secret)
    assert main(["remote-keys", "create", "monitor", "--role", "reader", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["role"] == "reader" and created["secret"]
    monkeypatch.setenv("SCALPEL_API_KEY", created["secret"])
    assert main(["models", "list"]) == 0  # the new key authenticates
    assert main(["remote-keys", "create", "other", "--role", "admin"]) == 2  # a reader may not make keys
    assert "PERMISSION_DENIED" in capsys.readouterr().err
