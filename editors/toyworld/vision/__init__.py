"""The toy world's eyes: a small LLaVA trained from scratch on pictures of coloured shapes
(issue 34; :mod:`editors.toyworld.vision.scenes`, :mod:`editors.toyworld.vision.train`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration

TOY_VLM_DIR = Path(__file__).parent / "model"


def load_toy_vlm(directory: Path = TOY_VLM_DIR) -> tuple[LlavaForConditionalGeneration, Any]:
    """The committed toy VLM (eval mode) and its processor, as ``transformers`` loads them."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(directory)
    model.eval()
    return model, AutoProcessor.from_pretrained(directory)
