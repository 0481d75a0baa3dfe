"""The toy world and its small GPT-2 model, shipped with the package (DESIGN §5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from editors.toyworld.world import Fact, World, generate_world

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOY_MODEL_DIR = Path(__file__).parent / "model"
#: The committed successor: the toy model trained on a world where six capitals moved (editors.toyworld.successor).
SUCCESSOR_MODEL_DIR = Path(__file__).parent / "successor_model"
#: Where the committed SAE of the toy model reads and writes, and its folder (SAELens's format).
TOY_SAE_SITE = "blocks.1.hook_resid_pre"
TOY_SAE_DIR = Path(__file__).parent / "sae" / TOY_SAE_SITE
WORLD_FILE = "world.json"
CORPUS_FILE = "reference_corpus.txt"


def load_toy_model(directory: Path = TOY_MODEL_DIR) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, World]:
    """The committed toy model (eval mode), its tokenizer and its world."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # here: TOY_MODEL_DIR alone needs no torch

    model = AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer, World.load(Path(directory) / WORLD_FILE)


def reference_corpus(directory: Path = TOY_MODEL_DIR) -> list[str]:
    """The committed reference corpus (documents drawn like the training data)."""
    return (Path(directory) / CORPUS_FILE).read_text().splitlines()


__all__ = [
    "SUCCESSOR_MODEL_DIR",
    "TOY_MODEL_DIR",
    "TOY_SAE_DIR",
    "TOY_SAE_SITE",
    "Fact",
    "World",
    "generate_world",
    "load_toy_model",
    "reference_corpus",
]
