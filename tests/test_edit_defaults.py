"""A model's shipped editor defaults (``edit_hparams.json``) under a request's overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editors.edit_defaults import EDIT_HPARAMS_FILE, hparams_from, shipped_overrides
from editors.memit import MemitHyperParams
from editors.rome import RomeHyperParams


def test_shipped_defaults_sit_under_the_overrides(tmp_path: Path) -> None:
    (tmp_path / EDIT_HPARAMS_FILE).write_text(
        json.dumps({"rome": {"keep_prompts": ["The language of {} is"], "steps": 30}, "memit": {"layers": [0, 1]}})
    )
    rome = RomeHyperParams(**hparams_from(RomeHyperParams, tmp_path, "rome", steps=12))
    assert rome.keep_prompts == ("The language of {} is",) and rome.steps == 12
    assert MemitHyperParams(**hparams_from(MemitHyperParams, tmp_path, "memit")).layers == (0, 1)
    assert hparams_from(RomeHyperParams, tmp_path / "elsewhere", "rome") == {}
    assert shipped_overrides(None, "memit") == {}


def test_a_bad_shipped_file_or_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / EDIT_HPARAMS_FILE).write_text(json.dumps({"rome": ["steps"]}))
    with pytest.raises(ValueError, match="must map hyper-parameter names"):
        shipped_overrides(tmp_path, "rome")
    with pytest.raises(ValueError, match="method must be one of"):
        shipped_overrides(tmp_path, "lora")
    with pytest.raises(TypeError, match="no field"):
        hparams_from(MemitHyperParams, None, "memit", lyers=[0])
