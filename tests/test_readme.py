"""The Python examples of the README and the manual (docs/) run as written, so the documentation
cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [
    (f"{page.relative_to(ROOT)} example {number + 1}", code)
    for page in PAGES
    for number, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL))
]


def test_the_readme_and_the_manual_have_python_examples() -> None:
    assert any(name.startswith("README.md") for name, _ in EXAMPLES)
    assert len({name.split(" ")[0] for name, _ in EXAMPLES}) >= 3


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_documented_example_runs(name: str, code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files (a trace PNG)
    monkeypatch.setenv("SCALPEL_DATA_DIR", str(tmp_path))  # and caches
    exec(compile(code, name, "exec"), {"__name__": "readme"})
    for written in re.findall(r'"(\w+\.png)"', code):
        assert (tmp_path / written).stat().st_size > 1000
