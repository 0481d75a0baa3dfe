"""The main job: `scalpel demo` runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_over_grpc_behaves_as_described_twice_in_the_same_data_dir(tmp_path) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "demo"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "SCALPEL_DATA_DIR": str(tmp_path)},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "every step behaved as described" in result.stdout
        assert "promotion refused: version" in result.stdout and "task:induction_accuracy" in result.stdout
    assert (tmp_path / "scalpel.db").exists()


def test_walkthrough_runs_and_reports_unchanged_weights(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "walkthrough"],
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
