"""How the CLI shows check runs: one line per check with an explicit ok / FAIL, its estimate,
interval and rule; under each failed check its reason and worst examples. Exit status 1 when a
run did not pass, so a CI job can gate on ``scalpel checks run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.cli.check_report import edit_aware_note, verdict_word

SHOWN_EXAMPLES = 3


def run_dict(run: pb.CheckRun) -> dict[str, Any]:
    """A run as plain data: every field printed (a failed check says ``passed: false``), and the
    worst examples as a list, not JSON inside a string."""
    data = MessageToDict(run, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    for result in data.get("results", []):
        result["worst"] = json.loads(result.pop("worst_json") or "[]")
    return data


def format_run(run: pb.CheckRun) -> str:
    lines = [f"run {run.id} of {run.version} (suite {run.suite_sha256[:12]}): {run.state.upper()}"]
    width = max((len(r.name) for r in run.results), default=4)
    for result in run.results:
        mark = f"{verdict_word(result):<4}"
        if result.rule == "error" or result.not_applicable:
            lines.append(f"  {mark} {result.name:<{width}}  {result.reason}")
            continue
        interval = f"{result.metric:.4g} [{result.ci_low:.4g}, {result.ci_high:.4g}] n={result.n}"
        lines.append(
            f"  {mark} {result.name:<{width}}  {interval}  {result.comparison} {result.threshold:.4g} ({result.rule})"
        )
        if not result.passed:
            lines.append(f"       why: {result.reason}")
            if result.reference:
                lines.append(f"       against: {result.reference}")
            for example in json.loads(result.worst_json or "[]")[:SHOWN_EXAMPLES]:
                lines.append("       - " + "; ".join(f"{k}: {v}" for k, v in example.items()))
    note = edit_aware_note(run)
    return "\n".join(lines + ([f"  note: {note}"] if note else []))


def inline_item_files(spec: Any, base: Path) -> Any:
    """A suite from YAML with ``items_file: tasks.jsonl`` in a check's params: the file's lines
    (one JSON item each, path relative to the suite file) become its ``items``."""
    for check in spec.get("checks", []) if isinstance(spec, dict) else []:
        params = check.get("params") if isinstance(check, dict) else None
        if isinstance(params, dict) and "items_file" in params:
            path = base / str(params.pop("items_file"))
            try:
                lines = path.read_text().splitlines()
                params["items"] = [json.loads(line) for line in lines if line.strip()]
            except (OSError, ValueError) as exc:
                raise SystemExit(f"scalpel: {path}: {exc}") from None
    return spec
