"""A GPT-2-small-shaped model (124M, 1,024 positions) over the toy tokenizer, randomly initialised
(no download): the bench scripts' stand-in for a real model's size."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

POSITIONS = 1024


def gpt2_small_shaped(tokenizer: PreTrainedTokenizerBase, device: str) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    ends = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=POSITIONS, n_embd=768, n_layer=12, n_head=12, **ends)
    return GPT2LMHeadModel(config).eval().to(device)
