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
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
