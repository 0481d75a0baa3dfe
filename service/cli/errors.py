"""The CLI's errors: one line that names the fix, exit status 2, never a traceback for a mistake
in what the user typed or wrote (a file, a flag, a URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import exc as sql

from editors.errors import BadSteeringFile, InvalidEditError, NotExportable, UnsupportedArchitectureError
from service.client import ExportDamaged
from service.registry import RegistryError


class UsageError(Exception):
    """A mistake in the command line or a file it names; the message is the one line shown."""


def read_yaml(path: Path, what: str) -> Any:
    """``path`` parsed as YAML (JSON is YAML too); a parse error says where, in one line."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UsageError(f"{path} is not valid YAML{where}: {problem}; fix the {what}") from None


def require_empty_directory(path: Path) -> Path:
    """``path`` if it is a new or empty directory (where an export may write), else a UsageError."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path} is not an empty directory; export into a new one")
    return path


def one_line(error: BaseException) -> str | None:
    """The one line for an error a user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(error, UsageError | RegistryError):
        return str(error)
    if isinstance(error, InvalidEditError):
        return f"{error}; fix the edit (file or flags)"
    if isinstance(error, UnsupportedArchitectureError):
        return str(error)
    if isinstance(error, NotExportable):
        return f"cannot export: {error}"
    if isinstance(error, BadSteeringFile | ExportDamaged):
        return str(error)
    if isinstance(error, sql.NoSuchModuleError | sql.ArgumentError):
        return (
            f"the database URL is not one Scalpel can use ({str(error).splitlines()[0]}); "
            "write postgresql://user@host:5432/db (not postgres://) or sqlite:///path/to/file.db"
        )
    if isinstance(error, sql.OperationalError):
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        return (
            f"cannot use the database: {reason}; check the database URL (--url, --database-url or "
            "$SCALPEL_DATABASE_URL), that its server runs, and that the database exists (createdb NAME)"
        )
    return None
