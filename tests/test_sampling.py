"""Sampling options users expect from a serving API: repetition penalty, top_k, min_p, per-token
log-probabilities and every end-of-sequence id of the model, on the batched engine."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
import torch
from transformers import GenerationConfig

from editors import Surgeon
from editors.toyworld import TOY_MODEL_DIR
from service.db.migrate import upgrade
from service.engine.sampling import RowSampler, Sampling, pick_tokens
from service.engine.scheduler import Finished, Scheduler, Token
from service.hosting import ModelHost, eos_ids
from service.registry import InvalidArgument, Registry
from tests.test_service import served  # noqa: F401  (the gRPC server fixture)

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> ModelHost:
    url = f"sqlite:///{tmp_path_factory.mktemp('sampling') / 'registry.db'}"
    upgrade("head", url)
    host = ModelHost("toy", str(TOY_MODEL_DIR), Registry(url))
    yield host
    host.close()


def _prompt(toy) -> str:
    _, _, world = toy
    sequence = world.symbols[3:11]
    return " ".join(sequence + sequence[:3])


def _run(events) -> tuple[list[int], list, Finished]:
    tokens, logprobs = [], []
    for event in events:
        if isinstance(event, Token):
            tokens.extend(event.token_ids)
            logprobs.extend(event.logprobs)
        else:
            return tokens, logprobs, event
    raise AssertionError("no Finished event")


def _generate(model, tokenizer, text: str, **options) -> list[int]:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id, **options)
    produced = out[0, ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return produced[: produced.index(eos)] if eos in produced else produced  # the stream stops before it


def test_repetition_penalty_matches_transformers_generate(host, toy) -> None:
    model, tokenizer, _ = toy
    text = _prompt(toy)
    plain, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS))
    for penalty in (1.3, 3.0):
        tokens, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS, repetition_penalty=penalty))
        assert tokens == _generate(model, tokenizer, text, do_sample=False, repetition_penalty=penalty)
    # the toy model continues a repeated sequence: a strong penalty must change what it says
    assert tokens != plain


def _openai_penalised_greedy(model, tokenizer, text: str, presence: float, frequency: float) -> list[int]:
    """Greedy decoding with OpenAI's presence and frequency penalties written out: a full forward
    per token, each logit lowered by presence (if the output holds the token) + frequency × its
    count there."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0].tolist()
    produced: list[int] = []
    with torch.inference_mode():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([ids + produced])).logits[0, -1].clone()
            for token in set(produced):
                logits[token] -= presence + frequency * produced.count(token)
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            produced.append(token)
    return produced


def test_presence_and_frequency_penalties_are_openais(host, toy) -> None:
    model, tokenizer, _ = toy
    text = _prompt(toy)
    plain, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS))
    outputs = []
    for presence, frequency in ((1.5, 0.0), (0.0, 2.0), (-1.0, 0.7)):
        tokens, _, _ = _run(
            host.generate(0, text, max_tokens=NEW_TOKENS, presence_penalty=presence, frequency_penalty=frequency)
        )
        assert tokens == _openai_penalised_greedy(model, tokenizer, text, presence, frequency), (presence, frequency)
        outputs.append(tokens)
    # the toy model repeats its prompt's sequence: a strong presence penalty must change what it says
    assert outputs[0] != plain


def test_logit_bias_matches_transformers_sequence_bias(host, toy) -> None:
    model, tokenizer, _ = toy
    text = _prompt(toy)
    plain, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS))
    bias = {plain[1]: -100.0, plain[0]: -3.5, 5: 2.0}  # ban the second token, discourage the first
    tokens, logprobs, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS, logit_bias=bias, logprobs=1))
    expected = _generate(
        model, tokenizer, text, do_sample=False, sequence_bias={(token,): value for token, value in bias.items()}
    )
    assert tokens == expected and plain[1] not in tokens
    # log-probabilities are those of the biased distribution
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        first = model(ids).logits[0, -1].clone()
        for token, value in bias.items():
            first[token] += value
    assert logprobs[0][0] == pytest.approx(float(first.log_softmax(-1)[tokens[0]]), abs=1e-4)


def test_logprobs_are_the_models_and_rank_the_alternatives(host, toy) -> None:
    model, tokenizer, _ = toy
    text = _prompt(toy)
    tokens, logprobs, finished = _run(host.generate(0, text, max_tokens=NEW_TOKENS, logprobs=3))
    assert len(logprobs) == len(tokens) == finished.tokens
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        full = model(torch.cat([ids, torch.tensor([tokens])], dim=1)).logits[0].log_softmax(-1)
    for step, (token, (chosen, top)) in enumerate(zip(tokens, logprobs, strict=True)):
        expected = full[ids.shape[1] - 1 + step]
        assert chosen == pytest.approx(float(expected[token]), abs=1e-4)
        assert [t for t, _ in top] == expected.topk(3).indices.tolist()
        assert top[0][0] == token  # greedy: the chosen token is the likeliest
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
    _, without, _ = _run(host.generate(0, text, max_tokens=3))
    assert without == []
    _, chosen_only, _ = _run(host.generate(0, text, max_tokens=3, logprobs=0))
    assert len(chosen_only) == 3 and all(top == () for _, top in chosen_only)


def test_top_k_one_and_min_p_one_sample_the_greedy_token(host, toy) -> None:
    text = _prompt(toy)
    greedy, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS))
    for options in ({"top_k": 1}, {"min_p": 1.0}):
        sampled, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS, temperature=1.5, seed=1, **options))
        assert sampled == greedy, options
    free = [_run(host.generate(0, text, max_tokens=NEW_TOKENS, temperature=5.0, seed=s))[0] for s in range(4)]
    assert any(tokens != greedy for tokens in free)  # without the cut, a hot temperature wanders


def test_top_k_keeps_every_draw_among_the_k_likeliest(host, toy) -> None:
    model, tokenizer, _ = toy
    text = _prompt(toy)
    tokens, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS, temperature=5.0, top_k=3, seed=7))
    again, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS, temperature=5.0, top_k=3, seed=7))
    assert tokens == again  # same seed, same tokens
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(torch.cat([ids, torch.tensor([tokens])], dim=1)).logits[0]
    for step, token in enumerate(tokens):
        assert token in logits[ids.shape[1] - 1 + step].topk(3).indices.tolist()


def test_every_eos_id_of_the_model_ends_the_stream(host, toy) -> None:
    model, tokenizer, _ = toy
    text = _prompt(toy)
    greedy, _, _ = _run(host.generate(0, text, max_tokens=NEW_TOKENS))
    third = greedy[2]
    scheduler = Scheduler(model, Surgeon(model), tokenizer, eos_ids=frozenset({tokenizer.eos_token_id, third}))
    try:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        tokens, _, finished = _run(scheduler.generate(ids, host.stack(0), Sampling(NEW_TOKENS)))
    finally:
        scheduler.close()
    assert tokens == greedy[: greedy.index(third)] and finished.finish_reason == "eos"


def test_eos_ids_come_from_the_generation_config_and_the_tokenizer(toy) -> None:
    model, tokenizer, _ = toy
    saved = model.generation_config
    try:
        model.generation_config = GenerationConfig(eos_token_id=[7, 9])
        assert eos_ids(model, tokenizer) == {7, 9, tokenizer.eos_token_id}
        model.generation_config = GenerationConfig(eos_token_id=11)
        assert eos_ids(model, tokenizer) == {11, tokenizer.eos_token_id}
    finally:
        model.generation_config = saved


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"repetition_penalty": 11.0}, "repetition_penalty"),
        ({"logprobs": 21}, "logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"logit_bias": {100_000: 1.0}}, "token ids must be in"),
        ({"logit_bias": {-1: 1.0}}, "token ids must be in"),
        ({"logit_bias": {3: 101.0}}, r"\[-100, 100\]"),
        ({"logit_bias": {3: float("nan")}}, r"\[-100, 100\]"),
        ({"logit_bias": dict.fromkeys(range(301), 1.0)}, "at most 300"),
    ],
)
def test_bad_sampling_options_are_refused_before_joining(host, toy, options, message) -> None:
    waiting = len(host.scheduler._waiting)
    with pytest.raises(InvalidArgument, match=message):
        host.generate(0, _prompt(toy), **options)
    assert len(host.scheduler._waiting) == waiting


def test_the_generate_rpc_carries_the_options_and_the_logprobs(served, toy) -> None:  # noqa: F811
    _, client, _, _ = served
    text = _prompt(toy)
    chunks = [
        message.token
        for message in client.stream("toy", text, version=0, max_tokens=4, logprobs=2, repetition_penalty=1.3)
        if message.HasField("token")
    ]
    assert sum(len(chunk.token_ids) for chunk in chunks) == 4
    assert all(len(chunk.logprobs) == len(chunk.token_ids) for chunk in chunks)
    assert all(len(lp.top_token_ids) == 2 and lp.logprob <= 0 for chunk in chunks for lp in chunk.logprobs)
    model, tokenizer, _ = toy
    produced = [token for chunk in chunks for token in chunk.token_ids]
    assert produced == _generate(model, tokenizer, text, do_sample=False, repetition_penalty=1.3)[:4]
    penalised = client.generate("toy", text, version=0, max_tokens=NEW_TOKENS, presence_penalty=1.5)
    assert penalised.token_ids == _openai_penalised_greedy(model, tokenizer, text, 1.5, 0.0)
    plain = client.generate("toy", text, version=0, max_tokens=2)
    biased = client.generate("toy", text, version=0, max_tokens=2, logit_bias={plain.token_ids[0]: -100.0})
    assert biased.token_ids[:1] != plain.token_ids[:1]  # another first token, or the end at once
    for bad in ({"logit_bias": {10_000: 1.0}}, {"presence_penalty": 3.0}):
        with pytest.raises(grpc.RpcError) as refused:
            client.generate("toy", text, version=0, **bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        list(client.stream("toy", text, version=0, top_k=-2))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_ignore_eos_runs_to_max_tokens_through_the_end_of_sequence(host, toy) -> None:
    _, tokenizer, _ = toy
    text = "The capital of Riia is"
    ended, _, finished = _run(host.generate(0, text, max_tokens=NEW_TOKENS))
    assert finished.finish_reason == "eos" and len(ended) < NEW_TOKENS
    through, _, finished = _run(host.generate(0, text, max_tokens=NEW_TOKENS, ignore_eos=True))
    assert finished.finish_reason == "length" and len(through) == NEW_TOKENS
    assert through[: len(ended) + 1] == [*ended, tokenizer.eos_token_id]


def _filtered(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution a row samples from, written out: softmax at the temperature, the top_k
    likeliest, the smallest set holding top_p of their mass, those at least min_p × the likeliest."""
    probs = (logits / sampling.temperature).softmax(-1)
    order = probs.argsort(descending=True).tolist()
    if sampling.top_k:
        order = order[: sampling.top_k]
    mass = sum(float(probs[t]) for t in order)
    kept, before = [], 0.0
    for token in order:
        if sampling.top_p < 1 and before / mass >= sampling.top_p:
            break
        kept.append(token)
        before += float(probs[token])
    kept = [t for t in kept if float(probs[t]) >= sampling.min_p * float(probs[order[0]])]
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()
    return expected


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(1, temperature=1.0),
        Sampling(1, temperature=0.5, top_k=3),
        Sampling(1, temperature=1.0, top_p=0.6),
        Sampling(1, temperature=2.0, top_k=5, top_p=0.7),
        Sampling(1, temperature=1.0, min_p=0.2),
        Sampling(1, temperature=1.5, top_p=0.95, min_p=0.05),
    ],
)
def test_batched_draws_follow_each_rows_filtered_distribution(sampling: Sampling) -> None:
    """4,000 seeded draws of one 12-token row (so the result is fixed, not flaky): each token's
    share is within 0.03 of the filtered distribution's, and a token it excludes is never drawn.
    Rows with other options share each batch, as in serving."""
    torch.manual_seed(0)
    logits = torch.randn(12) * 2
    expected = _filtered(logits, sampling)
    others = [Sampling(1, temperature=0.8, top_k=2), Sampling(1), Sampling(1, temperature=1.0, top_p=0.3)]
    counts = torch.zeros(12)
    for start in range(0, 4000, 50):
        rows = [RowSampler(replace(sampling, seed=start + i), torch.tensor([0])) for i in range(50)]
        rows += [RowSampler(replace(other, seed=start), torch.tensor([0])) for other in others]
        tokens, _ = pick_tokens(torch.stack([logits] * 50 + [torch.randn(12)] * 3), rows)
        counts += torch.bincount(torch.tensor(tokens[:50]), minlength=12)
    shares = counts / counts.sum()
    assert (shares[expected == 0] == 0).all()
    assert (shares - expected).abs().max() < 0.03


def test_a_seeded_row_draws_the_same_tokens_alone_or_among_other_rows() -> None:
    torch.manual_seed(1)
    logits = torch.randn(64, 300) * 3
    sampling = Sampling(8, temperature=0.9, top_p=0.9, seed=42)
    alone, crowded = RowSampler(sampling, torch.tensor([0])), RowSampler(sampling, torch.tensor([0]))
    neighbours = [RowSampler(Sampling(8, temperature=1.3, top_k=7, seed=i), torch.tensor([0])) for i in range(63)]
    for _ in range(8):
        (mine,), _ = pick_tokens(logits[:1], [alone])
        together, _ = pick_tokens(logits, [crowded, *neighbours])
        assert together[0] == mine
        logits = logits.roll(1, dims=1)
