"""Field checks shared by the edit kinds; each raises :class:`InvalidEditError` naming the field."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import torch

from editors.errors import InvalidEditError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Largest accepted magnitude of a scale or of any tensor entry: beyond it an edit is a mistake.
MAX_ABS_VALUE = 1.0e4
MAX_INDEX = 2**31 - 1


def parse_json(field: str, text: object, allowed: str = "a JSON object") -> Any:
    """Parse JSON input; malformed text, nesting too deep for the parser and duplicate keys (which
    would silently keep the last) raise :class:`InvalidEditError` naming ``field``."""
    if not isinstance(text, (str, bytes)):
        raise InvalidEditError(field, f"expected JSON text, got {type(text).__name__}", allowed)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            duplicate = next(key for key in keys if keys.count(key) > 1)
            raise InvalidEditError(field, f"has the key {duplicate!r} twice", allowed)
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except InvalidEditError:
        raise
    except RecursionError:
        raise InvalidEditError(field, "is nested too deeply", allowed) from None
    except ValueError as exc:
        raise InvalidEditError(field, f"is not valid JSON: {exc}", allowed) from None


def check_int(field: str, value: object, low: int = 0, high: int = MAX_INDEX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEditError(field, f"expected an integer, got {value!r}", f"integers {low}..{high}")
    if not low <= value <= high:
        raise InvalidEditError(field, f"{value} is out of range", f"{low}..{high}")
    return value


def check_indices(field: str, values: object, high: int = MAX_INDEX) -> tuple[int, ...]:
    """A non-empty set of distinct non-negative integers, returned sorted."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidEditError(field, f"expected a list of integers, got {values!r}", f"distinct integers 0..{high}")
    items = tuple(check_int(f"{field}[{i}]", v, 0, high) for i, v in enumerate(values))
    if not items:
        raise InvalidEditError(field, "must not be empty", f"distinct integers 0..{high}")
    if len(set(items)) != len(items):
        raise InvalidEditError(field, f"contains duplicates: {list(items)}", "distinct integers")
    return tuple(sorted(items))


def check_choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidEditError(field, f"unknown value {value!r}", " | ".join(choices))
    return value  # type: ignore[return-value]


def check_scale(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEditError(field, f"expected a number, got {value!r}", f"finite, |{field}| <= {MAX_ABS_VALUE:g}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
        raise InvalidEditError(
            field, f"{value!r} is not finite or too large", f"finite, |{field}| <= {MAX_ABS_VALUE:g}"
        )
    return value


def check_tensor(field: str, value: object, ndim: int, shape: tuple[int | None, ...] | None = None) -> torch.Tensor:
    """A finite floating tensor of ``ndim`` dims (``None`` in ``shape`` = any size); returns a private CPU copy."""
    wanted = "[" + ", ".join("*" if s is None else str(s) for s in (shape or (None,) * ndim)) + "]"
    if not isinstance(value, torch.Tensor):
        raise InvalidEditError(
            field, f"expected a tensor, got {type(value).__name__}", f"float tensor of shape {wanted}"
        )
    if value.dtype not in FLOAT_DTYPES:
        raise InvalidEditError(
            field, f"dtype {value.dtype} is not a floating type", ", ".join(str(d) for d in FLOAT_DTYPES)
        )
    mismatched = shape is not None and any(s is not None and s != n for s, n in zip(shape, value.shape, strict=False))
    if value.ndim != ndim or mismatched:
        raise InvalidEditError(field, f"shape {list(value.shape)} does not match", f"shape {wanted}")
    if value.numel() == 0:
        raise InvalidEditError(field, "is empty", f"non-empty shape {wanted}")
    if not torch.isfinite(value).all():
        raise InvalidEditError(field, "contains NaN or Inf", "finite values")
    if value.abs().max().item() > MAX_ABS_VALUE:
        raise InvalidEditError(
            field, f"has entries of magnitude {value.abs().max().item():.3g}", f"|entries| <= {MAX_ABS_VALUE:g}"
        )
    return value.detach().to("cpu", copy=True).contiguous()


def freeze_json(field: str, value: object) -> Any:
    """A deep read-only copy of a JSON-able value (mappings become read-only, lists tuples); an
    already frozen value (another edit's provenance) is accepted as it is."""
    try:
        plain = json.loads(json.dumps(thaw_json(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidEditError(
            field, f"is not JSON-serialisable: {exc}", "JSON objects, lists, strings, finite numbers"
        ) from None

    def freeze(item: Any) -> Any:
        if isinstance(item, dict):
            return MappingProxyType({k: freeze(v) for k, v in item.items()})
        if isinstance(item, list):
            return tuple(freeze(v) for v in item)
        return item

    return freeze(plain)


def thaw_json(value: Any) -> Any:
    """Inverse of :func:`freeze_json`: plain dicts and lists again."""
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(v) for v in value]
    return value
