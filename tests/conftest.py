"""Shared fixtures: the committed toy model and small random models of each supported family."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from editors import HeadAblation, Surgeon
from editors.induction import induction_head_scores, repeated_token_batch, top_heads
from editors.toyworld import load_toy_model
from tests.replicas import create_shared_roles, worker_database

VOCAB = 64
#: where the device-aware tests (batched rows, scheduler, engine process) put their models:
#: ``SCALPEL_TEST_DEVICE=cuda pytest tests/test_batched_rows.py …`` runs them on a GPU
TEST_DEVICE = os.environ.get("SCALPEL_TEST_DEVICE", "cpu")


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` each worker gets a PostgreSQL database of its own (``test_gw0``, …):
    the cases reset theirs to empty. What the workers would share is made once, first, by the
    controller: the cluster-wide roles the migrations and the role test create, and the audit key
    in the data directory, so no two workers race to create them."""
    config.addinivalue_line("markers", "exclusive: needs the machine alone (it restarts PostgreSQL)")
    url = os.environ.get("SCALPEL_TEST_POSTGRES_URL")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None:
        if url:
            os.environ["SCALPEL_TEST_POSTGRES_URL"] = worker_database(url, worker)
        return
    from service.registry.audit_keys import load_keyring

    load_keyring()
    if url and getattr(config.option, "numprocesses", None):
        create_shared_roles(url)


def tiny_model(family: str, vocab: int = VOCAB) -> torch.nn.Module:
    """A small randomly initialised causal LM of ``family`` (seeded, eval mode)."""
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=3, n_head=4))
    elif family.startswith("gpt_neox"):
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                use_parallel_residual=family.endswith("parallel"),
            )
        )
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_llama_shaped(vocab)))
    elif family == "mistral":  # a 4-token sliding window: not in FAMILIES, for what a window changes
        model = MistralForCausalLM(MistralConfig(**_llama_shaped(vocab), sliding_window=4))
    else:
        raise ValueError(family)
    return model.eval()


def word_tokenizer():
    """A word-level tokenizer for the tiny models' vocabulary (``w0`` … ``w61``) that, like
    Llama's, has no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "</s>", *(f"w{i}" for i in range(VOCAB - 2))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def save_tiny_llama(directory: Path) -> Path:
    """A tiny random Llama saved with :func:`word_tokenizer`: a model directory ``ModelHost`` and
    ``scalpel serve`` can load."""
    word_tokenizer().save_pretrained(directory)
    tiny_model("llama").save_pretrained(directory)
    return directory


FAMILIES = ("gpt2", "gpt_neox", "gpt_neox_parallel", "llama")


@pytest.fixture(params=FAMILIES)
def tiny(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, Surgeon]:
    model = tiny_model(request.param)
    return model, Surgeon(model)


@pytest.fixture(scope="session")
def toy():
    """(model, tokenizer, world) of the committed toy model, on :data:`TEST_DEVICE`."""
    model, tokenizer, world = load_toy_model()
    return model.to(TEST_DEVICE), tokenizer, world


@pytest.fixture(scope="session")
def toy_surgeon(toy) -> Surgeon:
    return Surgeon(toy[0])


@pytest.fixture(scope="session")
def induction_heads(toy) -> list[tuple[int, int]]:
    """The toy model's induction heads as measured, strongest first: (layer, head)."""
    model, tokenizer, world = toy
    batch = repeated_token_batch(
        tokenizer.convert_tokens_to_ids(world.symbols), n=32, length=10, seed=1, prefix_id=tokenizer.bos_token_id
    )
    heads = top_heads(induction_head_scores(model, batch.to(model.device), length=10))
    assert heads
    return heads


@pytest.fixture(scope="session")
def induction_ablation(induction_heads) -> HeadAblation:
    """Zero ablation of the toy model's induction heads (one layer holds them)."""
    (layer,) = {layer for layer, _ in induction_heads}
    return HeadAblation(layer=layer, heads=tuple(sorted(head for _, head in induction_heads)))


@pytest.fixture
def token_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, 12), generator=generator)


DATABASES = ("sqlite", "postgres")


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A freshly migrated database: a SQLite file, or the PostgreSQL test database reset to empty."""
    from service.db.migrate import upgrade
    from tests.replicas import reset_postgres

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = os.environ.get("SCALPEL_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("SCALPEL_TEST_POSTGRES_URL is not set: PostgreSQL cases skipped (.ci/run sets it)")
        reset_postgres(url)
    upgrade("head", url)
    return url


def _llama_shaped(vocab: int) -> dict[str, int]:
    """The tiny Llama layout (grouped-query attention), which Mistral shares."""
    return {
        "vocab_size": vocab,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
