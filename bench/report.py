"""How every bench script prints its figures: one JSON object, or one aligned line per figure."""

from __future__ import annotations

import json


def report(results: dict[str, float], as_json: bool, digits: int = 3) -> None:
    if as_json:
        print(json.dumps({key: round(value, digits) for key, value in results.items()}), flush=True)
        return
    for key, value in results.items():
        print(f"{key:<32} {value:12.{digits}f}", flush=True)
