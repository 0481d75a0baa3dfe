"""`scalpel serve` as a real server process: keys from the CLI, health, a call, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient


def test_serve_process_answers_and_stops_on_sigterm(tmp_path) -> None:
    env = {**os.environ, "SCALPEL_DATA_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "service.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
    created = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "ops", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    secret = json.loads(created.stdout)["secret"]
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        port = int(re.search(r"on port (\d+)", line).group(1))
        with ScalpelClient(f"127.0.0.1:{port}", secret) as client:
            health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert client.generate("toy", "The capital of Riia is", max_tokens=1).version == "models/toy/versions/0"
            assert client.audit.VerifyAudit(pb.VerifyAuditRequest()).ok
        health = subprocess.run(
            [sys.executable, "-m", "service.cli", "health", "--address", f"127.0.0.1:{port}"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert health.returncode == 0 and "SERVING" in health.stdout
        _drive_the_cli(env | {"SCALPEL_ADDRESS": f"127.0.0.1:{port}", "SCALPEL_API_KEY": secret}, tmp_path)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _drive_the_cli(env: dict[str, str], tmp_path) -> None:
    def scalpel(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    assert json.loads(scalpel("models", "list", "--json"))["models"][0]["name"] == "models/toy"
    assert "NAME" in scalpel("models", "list")  # a table by default
    spec = tmp_path / "edit.yaml"
    spec.write_text("kind: head_ablation\nparams: {layer: 0, heads: [3]}\n")
    edit = json.loads(scalpel("edits", "create", "-f", str(spec), "--json"))
    version = json.loads(scalpel("versions", "create", "--parent", "0", "--append", edit["id"], "--json"))
    run = json.loads(scalpel("checks", "run", str(version["number"]), "--json"))
    assert run["state"] in ("passed", "failed") and run["results"]
    if run["state"] == "passed":
        scalpel("promote", str(version["number"]), "--reason", "cli")
        assert json.loads(scalpel("history", "--json"))["moves"][0]["to_version"] == version["number"]
        scalpel("rollback")
    generated = json.loads(scalpel("generate", "The capital of Riia is", "--max-tokens", "1", "--json"))
    assert generated["version"] == "models/toy/versions/0"
    assert json.loads(scalpel("audit", "verify", "--json"))["ok"] is True
    rome = json.loads(
        scalpel("edits", "rome", "--prompt", "The capital of {} is", "--subject", "Riia", "--target", "Pimir", "--json")
    )
    assert rome["kind"] == "low_rank"
    compared = json.loads(
        scalpel("compare", "0", str(version["number"]), "--prompt", "The capital of Riia is", "--json")
    )
    assert compared["prompts"] == 1
    assert json.loads(scalpel("suite", "get", "--json"))["suite_sha256"]
    scores = json.loads(scalpel("score", "The capital of Riia is", "Pimir", "the", "--json"))
    assert len(scores["logprobs"]) == 2
    failing = subprocess.run(
        [sys.executable, "-m", "service.cli", "promote", "999"], env=env, capture_output=True, text=True
    )
    assert failing.returncode == 2 and "NOT_FOUND" in failing.stderr
