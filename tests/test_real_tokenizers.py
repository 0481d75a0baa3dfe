"""The library's helpers on what real checkpoints ship: random GPT-2, GPT-NeoX and Llama models
with a byte-level BPE tokenizer that has no pad token (Llama's and Pythia's), in float32 and
bfloat16. Nothing here needs the toy world."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from editors import Steering, Surgeon
from editors.covariance import CovarianceCache, key_covariance
from editors.induction import induction_head_scores, repeated_token_batch
from editors.patching import causal_trace, plot_causal_trace
from editors.rome import RomeHyperParams, RomeRequest, compute_rome
from editors.stats import activation_stats
from editors.steering import derive_steering
from tests.conftest import tiny_model

CORPUS = [
    "The capital of France is Paris and the capital of Spain is Madrid.",
    "The river runs through the old town before it reaches the sea.",
    "A good day starts with coffee, a walk and a short list of tasks.",
    "The film was wonderful and the music was lovely.",
    "The film was terrible and the music was awful.",
    "Engineers tested the bridge after the storm and found it safe.",
] * 4
VOCAB = 320


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained here on a few sentences, with an end-of-text token and no pad token."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    assert tokenizer.pad_token is None
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return bpe_tokenizer()


@pytest.fixture(params=[(f, d) for f in ("gpt2", "gpt_neox", "llama") for d in ("float32", "bfloat16")], ids=str)
def surgeon(request, tokenizer) -> Surgeon:
    family, dtype = request.param
    model = tiny_model(family, vocab=len(tokenizer)).to(getattr(torch, dtype))
    return Surgeon(model)


def test_batched_helpers_work_without_a_pad_token_and_leave_the_tokenizer_alone(surgeon, tokenizer, tmp_path) -> None:
    pairs = [("The film was wonderful", "The film was terrible"), ("the music was lovely", "the music was awful")]
    steering = derive_steering(surgeon, tokenizer, pairs, layer=1)
    assert steering.vector.shape == (surgeon.dims.d_model,) and steering.vector.dtype == torch.float32
    assert torch.isfinite(steering.vector).all() and steering.vector.abs().sum() > 0
    stats = activation_stats(surgeon, tokenizer, CORPUS[:6], "blocks.1.hook_resid_pre")
    assert stats.n_tokens == sum(len(tokenizer(t)["input_ids"]) for t in CORPUS[:6])  # padding left out
    covariance, n_tokens = key_covariance(surgeon, tokenizer, CORPUS[:6], 1)
    assert covariance.shape == (surgeon.dims.d_mlp,) * 2 and n_tokens == stats.n_tokens
    cached = CovarianceCache(tmp_path).get_or_compute(surgeon, tokenizer, CORPUS[:6], 1)
    assert torch.allclose(cached.matrix, covariance) and cached.layer == 1
    assert tokenizer.pad_token is None  # the helpers padded on their own


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_padding_does_not_change_what_a_row_computes(family, tokenizer) -> None:
    """A short prompt's last-token activation is the same alone and in a batch with a long one
    (float32: bfloat16 batches of another shape accumulate in another order)."""
    from editors.steering import last_token_activations

    surgeon = Surgeon(tiny_model(family, vocab=len(tokenizer)))
    short, long = "The film was", "The river runs through the old town before it reaches"
    alone = last_token_activations(surgeon, tokenizer, [short], "blocks.2.hook_resid_pre")
    together = last_token_activations(surgeon, tokenizer, [short, long], "blocks.2.hook_resid_pre")
    assert torch.allclose(alone[0], together[0], atol=1e-5)


def test_tracing_rome_and_induction_scores_run_in_the_models_dtype(surgeon, tokenizer, tmp_path) -> None:
    trace = causal_trace(surgeon, tokenizer, "The capital of France is", "France", samples=2, kinds=("resid",))
    assert trace.grids["resid"].shape[0] == surgeon.dims.n_layers and torch.isfinite(trace.grids["resid"]).all()
    assert "".join(trace.tokens) == "The capital of France is" and trace.tokens[-1] == " is"  # text, not "Ġis"
    assert plot_causal_trace(trace, tmp_path / "trace.png").stat().st_size > 1000
    covariance, _ = key_covariance(surgeon, tokenizer, CORPUS, 1)
    hparams = RomeHyperParams(layer=1, steps=5, n_prefixes=2)
    result = compute_rome(surgeon, tokenizer, RomeRequest("The capital of {} is", "France", "Madrid"), covariance,
                          CORPUS, hparams)  # fmt: skip
    assert result.edit.U.dtype == torch.float32 and torch.isfinite(result.edit.U).all()
    batch = repeated_token_batch(range(10, 200), n=4, length=6)
    scores = induction_head_scores(surgeon.model, batch, length=6)
    assert scores.shape == (surgeon.dims.n_layers, surgeon.dims.n_heads) and torch.isfinite(scores).all()


def test_an_edit_is_a_value_replace_works_and_its_repr_is_short() -> None:
    import dataclasses

    steering = Steering(site="blocks.1.hook_resid_pre", vector=torch.randn(4096), provenance={"pairs": [["a", "b"]]})
    louder = dataclasses.replace(steering, scale=4.0)
    assert (
        louder.scale == 4.0 and louder.provenance == steering.provenance and torch.equal(louder.vector, steering.vector)
    )
    text = repr(louder)
    assert len(text) < 400 and "4096" in text and "sha256" in text


def test_rome_says_when_it_did_not_converge_and_refuses_a_covariance_of_another_layer(tokenizer, tmp_path) -> None:
    from editors.covariance import CovarianceCache
    from editors.errors import InvalidEditError
    from editors.rome import RomeNotConverged

    surgeon = Surgeon(tiny_model("gpt2", vocab=len(tokenizer)))
    covariance = CovarianceCache(tmp_path).get_or_compute(surgeon, tokenizer, CORPUS, 1)
    request = RomeRequest("The capital of {} is", "France", "Madrid and Spain")  # several tokens, 1 step
    with pytest.warns(RomeNotConverged, match="did not converge"):
        result = compute_rome(surgeon, tokenizer, request, covariance, CORPUS, RomeHyperParams(layer=1, steps=1))
    assert not result.converged and result.edit.provenance["converged"] is False
    with pytest.raises(InvalidEditError, match="computed at layer 1 but the edit is at layer 2"):
        compute_rome(surgeon, tokenizer, request, covariance, CORPUS, RomeHyperParams(layer=2, steps=1))


def test_unknown_words_are_named_and_a_custom_architecture_is_pointed_to_adapters() -> None:
    from tokenizers import Tokenizer as Backend
    from tokenizers import models as backend_models
    from tokenizers import pre_tokenizers as splitters

    from editors.errors import UnsupportedArchitectureError
    from tests.conftest import VOCAB

    words = ["<unk>", "</s>", *(f"w{i}" for i in range(VOCAB - 2))]
    backend = Backend(backend_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = splitters.WhitespaceSplit()
    word_level = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    surgeon = Surgeon(tiny_model("llama"))
    with pytest.warns(UserWarning, match="does not know 'nasty', 'nice'"):
        derive_steering(surgeon, word_level, [("w1 w2 nice", "w1 w2 nasty")], layer=1)
    odd = tiny_model("gpt2")
    odd.config.model_type = "gemma"
    with pytest.raises(UnsupportedArchitectureError, match=r"Surgeon\(model, adapter="):
        Surgeon(odd)


def test_long_work_shows_a_progress_bar_to_a_person_and_not_when_asked(tokenizer, monkeypatch) -> None:
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    surgeon = Surgeon(tiny_model("gpt2", vocab=len(tokenizer)))
    shown, quiet = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stderr", shown)
    key_covariance(surgeon, tokenizer, CORPUS, 1)
    monkeypatch.setattr(sys, "stderr", quiet)
    key_covariance(surgeon, tokenizer, CORPUS, 1, show_progress=False)
    assert "key covariance, layer 1" in shown.getvalue() and f"/{len(CORPUS)} " in shown.getvalue()
    assert quiet.getvalue() == ""


def test_a_hopeless_covariance_is_refused_before_the_optimisation_in_the_requests_terms(tokenizer) -> None:
    from editors.errors import InvalidEditError

    surgeon = Surgeon(tiny_model("llama", vocab=len(tokenizer)))
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return False

    request = RomeRequest("The capital of {} is", "France", "Madrid")
    singular = torch.zeros(surgeon.dims.d_mlp, surgeon.dims.d_mlp)
    with pytest.raises(InvalidEditError, match=r"too close to singular at layer 1 .* a larger ridge \(e\.g\. 0\.01\)"):
        compute_rome(surgeon, tokenizer, request, singular, CORPUS, RomeHyperParams(layer=1, ridge=0.0),
                     should_stop=should_stop)  # fmt: skip
    with pytest.raises(InvalidEditError, match="NaN or infinity"):
        compute_rome(surgeon, tokenizer, request, singular + float("nan"), CORPUS, RomeHyperParams(layer=1))
    assert asked == []  # refused before a single optimisation step


def test_rome_edits_each_familys_published_depth_and_the_toy_model_its_own() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    deep = Surgeon(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=32,
                                                num_attention_heads=2, intermediate_size=32)))  # fmt: skip
    assert RomeHyperParams.for_model(deep).layer == 5  # EasyEdit's Llama-2-7B layer
    assert RomeHyperParams.for_model(deep, layer=9).layer == 9
    assert RomeHyperParams.for_model(Surgeon(tiny_model("gpt2"))).layer == 0  # 3 layers: too shallow to scale
