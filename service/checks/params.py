"""Reading a check's params: each reader names the field (``checks[2].params.max``) on a bad value."""

from __future__ import annotations

import math
from typing import Any

from service.checks.result import RULES
from service.registry import InvalidArgument

#: Items (task rows, prompts, templates' expansions) per check: every one is a forward's row.
MAX_ITEMS = 2048
MAX_TEXT = 4096


class Params:
    """The params of one check instance, read field by field; unknown fields are an error."""

    def __init__(self, where: str, raw: object) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where} must be a mapping")
        self.where = where
        self.raw: dict[str, Any] = raw
        self.read: set[str] = set()

    def value(self, name: str) -> Any:
        """The raw value of ``name`` (None when absent), marked as read."""
        self.read.add(name)
        return self.raw.get(name)

    def number(self, name: str, default: float | None = None, low: float = 0.0, high: float = math.inf) -> float | None:
        value = self.value(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgument(f"{self.where}.{name} must be a finite number, got {value!r:.40}")
        if not low <= value <= high:
            raise InvalidArgument(f"{self.where}.{name} must be in [{low}, {high}], got {value!r:.40}")
        return float(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.value(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidArgument(f"{self.where}.{name} must be an integer in [{low}, {high}], got {value!r:.40}")
        return value

    def text(self, name: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str | None:
        value = self.value(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
            raise InvalidArgument(f"{self.where}.{name} must be a non-empty string (at most {MAX_TEXT} characters)")
        if choices and value not in choices:
            raise InvalidArgument(f"{self.where}.{name} must be one of {', '.join(choices)}, got {value!r:.40}")
        return value

    def texts(self, name: str, required: bool = True) -> list[str]:
        value = self.value(name)
        if value is None and not required:
            return []
        if not isinstance(value, list) or not value or len(value) > MAX_ITEMS:
            raise InvalidArgument(f"{self.where}.{name} must be a list of 1..{MAX_ITEMS} strings")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip() or len(item) > MAX_TEXT:
                raise InvalidArgument(f"{self.where}.{name}[{i}] must be a non-empty string")
        return list(value)

    def items(self, name: str = "items") -> list[dict[str, Any]]:
        value = self.value(name)
        if not isinstance(value, list) or not value or len(value) > MAX_ITEMS:
            raise InvalidArgument(f"{self.where}.{name} must be a list of 1..{MAX_ITEMS} items")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidArgument(f"{self.where}.{name}[{i}] must be a mapping")
        return list(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.value(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidArgument(f"{self.where}.{name} must be true or false, got {value!r:.40}")
        return value

    def rule(self, default: str) -> str:
        return self.text("rule", default, RULES) or default

    def done(self) -> None:
        """Refuse fields nobody read (a typo must not pass silently)."""
        unknown = sorted(set(self.raw) - self.read)
        if unknown:
            raise InvalidArgument(f"{self.where}: unknown params {unknown}")


def item_text(where: str, item: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = item.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise InvalidArgument(f"{where}.{name} must be a non-empty string")
    return value
