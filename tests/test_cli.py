"""The main job: `scalpel demo` runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import text


def test_demo_over_grpc_behaves_as_described_twice_in_the_same_data_dir(tmp_path, induction_heads) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "demo"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "SCALPEL_DATA_DIR": str(tmp_path)},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "every step behaved as described" in result.stdout
        located = next(line for line in result.stdout.splitlines() if "held-out faithfulness" in line)
        assert "the cut: L{}.H{}".format(*induction_heads[0]) in located  # the toy's induction head, over the API
        refusal = next(line for line in result.stdout.splitlines() if "promotion refused: version" in line)
        assert "failing: " in refusal and "induction" in refusal.split("failing: ")[1]
        searched = next(line for line in result.stdout.splitlines() if "  search wonderful/" in line)
        assert "10/10 of its top contexts" in searched
        gap = next(line for line in result.stdout.splitlines() if "log p(positive) − log p(negative)" in line)
        before, after = (float(x) for x in gap.split(")")[-1].split("→"))
        assert after < before - 1.0  # the feature cut, served, weakens the carried sentiment
        rebased = next(line for line in result.stdout.splitlines() if " → models/toy-v2/versions/" in line)
        assert "1 recomputed" in rebased and "fact edits held 1/1" in rebased
    assert (tmp_path / "scalpel.db").exists()


def test_walkthrough_runs_and_reports_unchanged_weights(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "walkthrough"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SCALPEL_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "induction heads (layer, head): [(" in result.stdout
    assert "efficacy       before 0.00  after 1.00" in result.stdout
    assert "base weights bit-identical after all of the above: True" in result.stdout
    assert list((tmp_path / "cache" / "covariance").glob("*.safetensors"))


def test_serve_and_keys_refuse_a_database_not_at_head_with_the_fix(db_url) -> None:
    """A database one migration behind (or unreachable): one clear line and exit 2, nothing written."""
    from alembic.script import ScriptDirectory

    from service.db.migrate import alembic_config, downgrade
    from service.registry import Registry

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    downgrade("0002", db_url)
    commands = (
        ["serve", "--insecure", "--address", "127.0.0.1:0", "--metrics-address", "off", "--database-url", db_url],
        ["keys", "create", "ops", "--role", "admin", "--database-url", db_url],
    )
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *command], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"is at revision 0002; this Scalpel needs {head}: run `scalpel db upgrade --url" in result.stderr
        assert "Traceback" not in result.stderr
    registry = Registry(db_url)  # (read with SQL: this code's replay needs columns 0002 lacks)
    with registry.engine.connect() as connection:
        written = [connection.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("api_keys", "audit_events")]
    assert written == [0, 0]
    registry.engine.dispose()
    unreachable = subprocess.run(
        [sys.executable, "-m", "service.cli", *commands[1][:-1], "postgresql://postgres@127.0.0.1:1/none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unreachable.returncode == 2 and "cannot reach database" in unreachable.stderr


def test_client_commands_start_without_torch_or_transformers() -> None:
    """An operator's `scalpel models list` (any client command that builds no edit) loads neither
    torch nor transformers: it starts in a fraction of a second, not the seconds they take."""
    script = """
import json, sys
from service.cli.main import main
code = main(["models", "list", "--address", "127.0.0.1:1"])
print(json.dumps({"code": code, "loaded": sorted({"torch", "transformers"} & set(sys.modules))}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": 2, "loaded": []}, (report, done.stderr)
    assert "UNAVAILABLE" in done.stderr  # it did reach the client and map the error


def test_the_engines_fork_server_starts_before_torch_is_imported() -> None:
    """`scalpel serve` and `scalpel demo` start the engine processes' fork server first: it imports
    torch and transformers on its own while the serving process imports its own, which is only an
    overlap if starting it imports neither."""
    script = """
import json, os, sys
from service.engine.forkserver import start_early
start_early()
children = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        cmdline = open(f"/proc/{pid}/cmdline").read()
    except OSError:
        continue
    if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
        children.append(cmdline)
print(json.dumps({
    "loaded": sorted({"torch", "transformers"} & set(sys.modules)),
    "fork_server": any("forkserver" in c and "service.engine.process" in c for c in children),
}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"loaded": [], "fork_server": True}, done.stderr


def test_a_config_mistake_is_reported_before_torch_or_the_fork_server_start(tmp_path) -> None:
    """`scalpel serve --config` reads and checks its file torch-free (service.server_config): a
    mistake is one line and exit 2, with neither torch nor transformers imported and no engine
    fork server started for a server that will not run."""
    config = tmp_path / "scalpel.yaml"
    config.write_text("max_batch_rows: 0\n")
    script = f"""
import json, os, sys
from service.cli.main import main
code = main(["serve", "--config", {str(config)!r}])
parents = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        parents.append(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:  # (it ended meanwhile)
        pass
loaded = sorted({{"torch", "transformers"}} & set(sys.modules))
print(json.dumps({{"code": code, "loaded": loaded, "children": parents.count(str(os.getpid()))}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": 2, "loaded": [], "children": 0}, (report, done.stderr)
    assert "max_batch_rows must be at least 1, got 0" in done.stderr
