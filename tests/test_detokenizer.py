"""Incremental detokenisation gives exactly the text of a full decode, token by token."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from service.engine.detokenizer import Detokenizer

TEXT = "Le café coûte 3 €, ça dépend. 日本語のテキスト 🙂 naïve façade — straße ü ö ä " * 20


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2 style): multi-byte characters span several tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def metaspace_bpe() -> PreTrainedTokenizerFast:
    """SentencePiece-style (Llama): spaces are part of tokens as ▁ and the decoder strips the first."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


def _stream(tokenizer, ids: list[int]) -> str:
    detokenizer = Detokenizer(tokenizer)
    return "".join(detokenizer.add(token) for token in ids)


def test_byte_level_pieces_add_up_to_the_full_decode_and_never_emit_half_a_character() -> None:
    tokenizer = byte_level_bpe()
    ids = tokenizer(TEXT[:200])["input_ids"]
    assert len(ids) > 60 and any(len(tokenizer.decode([i])) and "\ufffd" in tokenizer.decode([i]) for i in ids)
    for cut in range(1, len(ids) + 1):
        streamed = _stream(tokenizer, ids[:cut])
        full = tokenizer.decode(ids[:cut], skip_special_tokens=True)
        assert "\ufffd" not in streamed
        assert full.startswith(streamed) and full[len(streamed) :].strip("\ufffd") == ""


@pytest.mark.parametrize("make", [byte_level_bpe, metaspace_bpe])
def test_random_token_sequences_stream_as_they_decode(make) -> None:
    tokenizer = make()
    rng = random.Random(0)
    for _ in range(100):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 40))]
        full = tokenizer.decode(ids, skip_special_tokens=True)
        streamed = _stream(tokenizer, ids)
        assert full.startswith(streamed) and full[len(streamed) :].strip("\ufffd") == ""


@pytest.mark.parametrize("make", [byte_level_bpe, metaspace_bpe])
def test_tokens_arriving_together_decode_at_once_to_the_same_text(make) -> None:
    """``extend`` (a coalesced chunk, one decode) gives, chunk by chunk, the text ``add`` gives
    token by token, whatever the chunks: the window slides at a chunk's end instead of inside."""
    tokenizer = make()
    rng = random.Random(1)
    for _ in range(100):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 60))]
        chunked, start = Detokenizer(tokenizer), 0
        pieces = []
        while start < len(ids):
            size = rng.choice([1, 2, 3, 5, 8, 20])
            pieces.append(chunked.extend(ids[start : start + size]))
            start += size
        assert "".join(pieces) == _stream(tokenizer, ids)


def test_word_level_toy_tokenizer_keeps_its_spaces(toy) -> None:
    _, tokenizer, world = toy
    fact = world.facts[0]
    ids = tokenizer(f"{fact.canonical_prompt} {fact.object} .", add_special_tokens=False)["input_ids"]
    assert _stream(tokenizer, ids) == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("special", ["eos_token_id", "bos_token_id"])
def test_special_tokens_add_no_text(toy, special) -> None:
    _, tokenizer, world = toy
    ids = tokenizer(world.facts[0].canonical_prompt, add_special_tokens=False)["input_ids"]
    detokenizer = Detokenizer(tokenizer)
    pieces = [detokenizer.add(i) for i in ids[:2]]
    assert detokenizer.add(getattr(tokenizer, special)) == ""
    pieces += [detokenizer.add(i) for i in ids[2:]]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
