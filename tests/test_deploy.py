"""deploy/: what can be checked without a Docker engine or a cluster.

The files parse; every SCALPEL_* variable they set is one the code reads; ports and probes match
the server's; the image's entry point is a real CLI command (test_server_process.py runs it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from service.cli.main import build_parser
from service.server import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _code_variables() -> set[str]:
    source = "\n".join(p.read_text() for folder in ("service", "editors") for p in (ROOT / folder).rglob("*.py"))
    return set(re.findall(r"\"(SCALPEL_[A-Z_]+)\"", source))


def _yaml_documents() -> dict[str, list[dict]]:
    files = [*DEPLOY.glob("*.yml"), *DEPLOY.glob("grafana/*.yml"), *(DEPLOY / "k8s").glob("*.yaml")]
    return {str(p.relative_to(DEPLOY)): [d for d in yaml.safe_load_all(p.read_text()) if d] for p in files}


def test_every_file_parses() -> None:
    documents = _yaml_documents()
    assert "docker-compose.yml" in documents and "k8s/deployment.yaml" in documents
    dashboard = json.loads((DEPLOY / "grafana" / "scalpel-dashboard.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "scalpel_tokens_generated_total",
        "scalpel_active_version",
        "scalpel_check_runs_total",
        "scalpel_time_to_first_token_seconds_bucket",
        "scalpel_queue_wait_seconds_bucket",
        "scalpel_time_per_output_token_seconds_bucket",
        "scalpel_generation_waiting",
    ):
        assert metric in expressions
    kustomization = documents["k8s/kustomization.yaml"][0]
    assert {f"k8s/{r}" for r in kustomization["resources"]} <= set(documents)


def test_environment_variables_are_ones_the_code_reads() -> None:
    read = _code_variables()
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())
    used = set(re.findall(r"SCALPEL_[A-Z_]+", text))
    assert used and used <= read, f"set in deploy/ but never read: {sorted(used - read)}"


def test_ports_probes_and_entry_point_match_the_server() -> None:
    grpc_port = int(ServerConfig().address.rsplit(":", 1)[1])
    metrics_port = int(ServerConfig().metrics_address.rsplit(":", 1)[1])
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"EXPOSE {grpc_port} {metrics_port}" in dockerfile
    assert 'ENTRYPOINT ["scalpel"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    assert "USER scalpel" in dockerfile and 'CMD ["scalpel", "health"]' in dockerfile
    parser = build_parser()
    parser.parse_args(["serve"])
    parser.parse_args(["health"])
    parser.parse_args(["db", "upgrade"])
    container = _yaml_documents()["k8s/deployment.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    configmap = _yaml_documents()["k8s/configmap.yaml"][0]["data"]
    health_port = int(configmap["SCALPEL_HEALTH_ADDRESS"].rsplit(":", 1)[1])
    assert ports == {"grpc": grpc_port, "health": health_port, "metrics": metrics_port}
    assert container["readinessProbe"]["grpc"]["port"] == health_port == container["livenessProbe"]["grpc"]["port"]
    args = parser.parse_args(container["args"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.tls_cert.startswith(mounts["tls"]) and args.tls_key.startswith(mounts["tls"])
    secrets = {
        v["name"]: v.get("secret", {}).get("secretName")
        for v in _yaml_documents()["k8s/deployment.yaml"][0]["spec"]["template"]["spec"]["volumes"]
    }
    assert secrets["tls"] == "scalpel-tls"
    job = _yaml_documents()["k8s/migration-job.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    parser.parse_args(job["args"])
    compose = _yaml_documents()["docker-compose.yml"][0]["services"]
    for name in ("scalpel-a", "scalpel-b", "migrate"):
        parser.parse_args(compose[name]["command"])
    targets = _yaml_documents()["prometheus.yml"][0]["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"scalpel-a:{metrics_port}", f"scalpel-b:{metrics_port}"]
