"""The main job: `scalpel demo` runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_and_reports_unchanged_weights(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SCALPEL_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "induction heads (layer, head): [(" in result.stdout
    assert "efficacy       before 0.00  after 1.00" in result.stdout
    assert "base weights bit-identical after all of the above: True" in result.stdout
    assert list((tmp_path / "cache" / "covariance").glob("*.safetensors"))
