"""`scalpel serve` as a real server process: keys from the CLI, health, a call, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import AutoTokenizer

from editors.toyworld import TOY_MODEL_DIR
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient
from tests.certificates import make_certificates


def test_serve_process_answers_and_stops_on_sigterm(tmp_path) -> None:
    env = {**os.environ, "SCALPEL_DATA_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "service.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
    created = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "ops", "--role", "admin", "--json"],
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
        metrics_port = int(re.search(r"metrics on port (\d+)", line).group(1))
        with ScalpelClient(f"127.0.0.1:{port}", secret) as client:
            runaway = client.edits.ComputeRome.future(  # ~15 min of work here: it must stop, not finish
                pb.ComputeRomeRequest(
                    parent="models/toy",
                    prompt="The capital of {} is",
                    subject="Riia",
                    target="Muford",
                    hparams_json=json.dumps({"steps": 10_000, "n_prefixes": 100, "early_stop_nll": 0}),
                )
            )
            _wait_until_started(metrics_port, "ComputeRome")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=120) == 0  # the stop reached the optimisation loop
            with pytest.raises(grpc.RpcError) as caught:
                runaway.result()
            assert caught.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_until_started(metrics_port: int, method: str) -> None:
    """Until the server's own metrics count a started call to ``method`` (the call is in its handler)."""
    while True:
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        if f'grpc_server_started_total{{grpc_method="{method}"' in body:
            return
        time.sleep(0.05)


def _drive_the_cli(env: dict[str, str], tmp_path) -> None:
    def scalpel(*args: str, status: int | None = 0) -> str:
        result = subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True)
        assert status is None or result.returncode == status, (args, result.stdout, result.stderr)
        return result.stdout

    assert json.loads(scalpel("models", "list", "--json"))["models"][0]["name"] == "models/toy"
    assert "NAME" in scalpel("models", "list")  # a table by default
    spec = tmp_path / "edit.yaml"
    spec.write_text("kind: head_ablation\nparams: {layer: 0, heads: [3]}\n")
    edit = json.loads(scalpel("edits", "create", "-f", str(spec), "--json"))
    version = json.loads(scalpel("versions", "create", "--parent", "0", "--append", edit["id"], "--json"))
    huge = tmp_path / "huge.yaml"
    huge.write_text(
        "kind: steering\nparams: {site: blocks.1.hook_resid_pre, scale: 1000}\ntensors: {vector: ["
        + ", ".join(["0.5", "-0.5"] * 64)
        + "]}\n"
    )
    bad = json.loads(
        scalpel(
            "versions",
            "create",
            "--parent",
            "0",
            "--append",
            json.loads(scalpel("edits", "create", "-f", str(huge), "--json"))["id"],
            "--json",
        )
    )
    failed = json.loads(scalpel("checks", "run", str(bad["number"]), "--json", status=1))  # a CI job can gate on it
    assert failed["state"] == "failed" and {"passed": False}.items() <= failed["results"][0].items()
    assert isinstance(failed["results"][0]["worst"], list) and failed["results"][0]["worst"]
    shown = scalpel("checks", "get", str(failed["id"]), status=1)
    assert "FAIL kl_vs_base" in shown and "why: " in shown and "max_token_kl: " in shown
    assert str(failed["id"]) in scalpel("checks", "list", str(bad["number"]))
    assert json.loads(scalpel("checks", "run", "0", "--json"))["state"] == "passed"  # exit status 0
    run = json.loads(scalpel("checks", "run", str(version["number"]), "--json", status=None))
    assert run["state"] in ("passed", "failed") and run["results"]
    if run["state"] == "passed":
        scalpel("promote", str(version["number"]), "--reason", "cli")
        assert json.loads(scalpel("history", "--json"))["moves"][0]["to_version"] == version["number"]
        scalpel("rollback")
    generated = json.loads(scalpel("generate", "The capital of Riia is", "--max-tokens", "1", "--json"))
    assert generated["version"] == "models/toy/versions/0"
    first = generated["text"]
    (first_id,) = AutoTokenizer.from_pretrained(TOY_MODEL_DIR).encode(first, add_special_tokens=False)
    options = ("--max-tokens", "3", "--presence-penalty", "1.5", "--top-k", "5", "--stop", "zz", "--json")
    banned = json.loads(scalpel("generate", "The capital of Riia is", *options, "--logit-bias", f"{first_id}=-100"))
    assert banned["text"] and not banned["text"].startswith(first)  # the bias reached the model
    refused = subprocess.run(
        [sys.executable, "-m", "service.cli", "generate", "x", "--logit-bias", "oops"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "TOKEN=BIAS" in refused.stderr
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


def test_mutual_tls_from_a_yaml_config_with_the_cli_client(tmp_path) -> None:
    """`scalpel serve --config` with TLS and a client CA: only clients with a certificate the CA
    signed get in; the CLI client connects with --tls-ca/--tls-cert/--tls-key."""
    files = make_certificates(tmp_path)
    env = {**os.environ, "SCALPEL_DATA_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "service.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
    config = tmp_path / "scalpel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "address": "127.0.0.1:0",
                "insecure": True,
                "metrics_address": None,
                "tls_cert": str(files["server.pem"]),
                "tls_key": str(files["server.key"]),
                "tls_client_ca": str(files["ca.pem"]),
            }
        )
    )
    typo = tmp_path / "typo.yaml"
    typo.write_text("adress: 127.0.0.1:0\n")
    refused = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(typo)], env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "unknown keys ['adress']" in refused.stderr
    bad_dtype = tmp_path / "dtype.yaml"
    bad_dtype.write_text(yaml.safe_dump({"models": {"toy": {"source": "x", "dtype": "float8"}}}))
    refused = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(bad_dtype)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "models.toy.dtype: 'float8' is not one of" in refused.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(re.search(r"on port (\d+)", process.stdout.readline()).group(1))
        address = f"localhost:{port}"
        ca, cert, key = (files[n].read_bytes() for n in ("ca.pem", "client.pem", "client.key"))
        with ScalpelClient(address, root_certificates=ca, client_certificate=cert, client_key=key) as client:
            assert client.alias("toy").version == 0
        with ScalpelClient(address, root_certificates=ca) as anonymous:
            with pytest.raises(grpc.RpcError) as caught:
                anonymous.alias("toy")
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake itself fails
        cli = [sys.executable, "-m", "service.cli", "models", "list", "--json", "--address", address]
        tls = [
            "--tls-ca",
            str(files["ca.pem"]),
            "--tls-cert",
            str(files["client.pem"]),
            "--tls-key",
            str(files["client.key"]),
        ]
        listed = subprocess.run([*cli, *tls], env=env, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["models"][0]["name"] == "models/toy"
        half = subprocess.run([*cli, *tls[:4]], env=env, capture_output=True, text=True, timeout=60)
        assert half.returncode != 0 and "--tls-cert and --tls-key go together" in half.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
