"""The README's Python examples run as written (so the documentation cannot drift from the code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_the_readme_has_python_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_readme_example_runs(number: int, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files (a trace PNG)
    monkeypatch.setenv("SCALPEL_DATA_DIR", str(tmp_path))  # and caches
    exec(compile(EXAMPLES[number], f"README.md example {number + 1}", "exec"), {"__name__": "readme"})
    for written in re.findall(r'"(\w+\.png)"', EXAMPLES[number]):
        assert (tmp_path / written).stat().st_size > 1000
