"""A GPT-2-small-shaped model (124M, 1,024 positions) over the toy tokenizer, randomly initialised
(no download): the bench scripts' stand-in for a real model's size. With ``vocab_size``
(``GPT2_VOCAB``: GPT-2's own 50,257) its logits are a real model's width too, for the benches
where that is the cost (the toy tokenizer's ids stay valid inputs)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

POSITIONS = 1024
GPT2_VOCAB = 50257


def gpt2_small_shaped(
    tokenizer: PreTrainedTokenizerBase, device: str, vocab_size: int | None = None
) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    ends = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    vocab = vocab_size or len(tokenizer)
    config = GPT2Config(vocab_size=vocab, n_positions=POSITIONS, n_embd=768, n_layer=12, n_head=12, **ends)
    return GPT2LMHeadModel(config).eval().to(device)
