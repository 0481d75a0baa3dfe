"""What a greedy continuation must (not) say: ``starts_with``, ``contains``, ``not_contains``
(compared after stripping surrounding whitespace), any combination, all must hold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from service.checks.params import MAX_ITEMS, Params, item_text
from service.registry import InvalidArgument

EXPECTATIONS = ("starts_with", "contains", "not_contains")


def parse_expectation(where: str, item: dict[str, Any]) -> dict[str, str]:
    found = {name: item_text(where, item, name, required=False) for name in EXPECTATIONS}
    expectation = {name: value for name, value in found.items() if value is not None}
    if not expectation:
        raise InvalidArgument(f"{where} must state at least one of {', '.join(EXPECTATIONS)}")
    return expectation


def meets(produced: str, expectation: dict[str, str]) -> bool:
    text = produced.strip()
    return (
        text.startswith(expectation.get("starts_with", "").strip())
        and expectation.get("contains", "").strip() in text
        and ("not_contains" not in expectation or expectation["not_contains"].strip() not in text)
    )


def prompted_items(params: Params, suite_model_dir: Path | None) -> tuple[list[dict[str, Any]], str]:
    """``items`` inline, or ``shipped: NAME``: the JSONL task file ``task_NAME.jsonl`` that ships in
    the model's directory (the toy model's tasks). Each item is ``{prompt, <expectations>}``.
    Returns the items and where they came from."""
    shipped = params.text("shipped")
    if shipped is None:
        items, source = params.items(), "inline items"
    else:
        if "items" in params.raw:
            raise InvalidArgument(f"{params.where}: give items or shipped, not both")
        path = (suite_model_dir or Path("/nonexistent")) / f"task_{shipped}.jsonl"
        if not path.is_file():
            raise InvalidArgument(f"{params.where}.shipped: the model ships no task file task_{shipped}.jsonl")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if not 0 < len(lines) <= MAX_ITEMS:
            raise InvalidArgument(f"{path.name} must hold 1..{MAX_ITEMS} items")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        items, source = [json.loads(line) for line in lines], f"{path.name} sha256 {digest}…"
    checked = []
    for i, item in enumerate(items):
        where = f"{params.where}.items[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where} must be a mapping")
        unknown = sorted(set(item) - {"prompt", *EXPECTATIONS})
        if unknown:
            raise InvalidArgument(f"{where}: unknown fields {unknown}")
        checked.append({"prompt": item_text(where, item, "prompt"), **parse_expectation(where, item)})
    return checked, source
