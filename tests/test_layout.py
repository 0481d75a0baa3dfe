"""The packages' boundaries (DESIGN.md §1): the surgery kit never imports the service, and the
serving engine imports the surgery kit and its own modules only, never the registry, the API or the
checks. Read from the source with ``ast``, so an import inside a function counts too."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What the engine may import besides the standard library and its own modules.
ENGINE_MAY_IMPORT = {"torch", "transformers", "numpy", "editors"}


def imported_modules(path: Path) -> Iterator[str]:
    """Every absolute module ``path`` imports (relative imports resolve within its package)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = path.relative_to(ROOT).parent.parts
                base = ".".join(package[: len(package) - node.level + 1])
                if node.module:
                    yield f"{base}.{node.module}"
                else:
                    yield from (f"{base}.{alias.name}" for alias in node.names)
            else:
                yield node.module or ""


def sources(package: str) -> list[Path]:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, package
    return found


def test_the_surgery_kit_never_imports_the_service() -> None:
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sources("editors")
        for module in imported_modules(path)
        if module.split(".")[0] == "service"
    }
    assert not offending


def test_the_engine_imports_the_surgery_kit_and_itself_only() -> None:
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sources("service/engine")
        for module in imported_modules(path)
        if not (
            module.startswith("service.engine")
            or module.split(".")[0] in ENGINE_MAY_IMPORT
            or module.split(".")[0] in sys.stdlib_module_names
        )
    }
    assert not offending


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch) -> None:
    """The scan above can fail: a module importing the registry is reported."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "service" / "engine").mkdir(parents=True)
    module = tmp_path / "service" / "engine" / "leak.py"
    module.write_text("def f():\n    from service.registry import Registry\n    from . import sampling\n")
    assert list(imported_modules(module)) == ["service.registry", "service.engine.sampling"]


def test_the_surgery_kit_holds_no_serving_bookkeeping() -> None:
    """KV caches and batch bookkeeping live in the engine, not in the notebook library."""
    kit = {path.stem for path in (ROOT / "editors").glob("*.py")}
    assert not kit & {"decode_batch", "growing_cache", "ragged", "prefix_cache", "scheduler"}
