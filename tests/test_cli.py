"""The main job: `scalpel demo` runs end to end."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_reports_unchanged_weights() -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "demo"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "induction heads (layer, head): [(" in result.stdout
    assert "base weights bit-identical after all of the above: True" in result.stdout
