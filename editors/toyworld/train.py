"""Deterministic trainer for the toy-world GPT-2 model.

``train_toy_model(out_dir)`` generates the world, builds a word-level ``tokenizers`` tokenizer,
trains a small GPT-2-shaped model on freshly sampled documents and writes everything with
``save_pretrained`` (loadable by ``AutoModelForCausalLM`` / ``AutoTokenizer``), plus the world,
a reference corpus and a manifest of SHA-256 hashes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from editors.toyworld import CORPUS_FILE, WORLD_FILE
from editors.toyworld.edit_hparams import write_edit_hparams
from editors.toyworld.manifest import write_manifest
from editors.toyworld.tasks import write_task_files
from editors.toyworld.world import ALL_RELATIONS, World, generate_world


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the committed model's."""

    world_seed: int = 0
    train_seed: int = 0
    steps: int = 6000
    batch_rows: int = 28
    row_length: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    reference_documents: int = 2000
    threads: int = 2
    #: five attributes per country (issue 38: two did not make subjects distinct enough for batch edits)
    relations: tuple[str, ...] = ALL_RELATIONS
    #: shares of the documents; the rest (half) are induction sequences: fixed subject embeddings
    #: slow the induction heads (0.87 with 43% of the documents, 1.0 with half)
    fact_share: float = 0.36
    sentiment_share: float = 0.06
    ioi_share: float = 0.08
    #: Subjects' token embeddings stay at random near-orthogonal vectors of this norm (0: learned).
    #: Learned ones collapse onto a few directions (60 subjects' layer-0 keys held 90% of their
    #: variance in 9 dimensions), so a batch of edits could not be independent; fixed random ones
    #: make the MLPs key facts on distinct subject representations, as in large models.
    subject_embedding_norm: float = 2.0

    def world(self) -> World:
        """The world this configuration trains on."""
        return generate_world(
            self.world_seed,
            relations=self.relations,
            fact_share=self.fact_share,
            sentiment_share=self.sentiment_share,
            ioi_share=self.ioi_share,
        )


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, steps: int, floor: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over ``warmup`` steps, then a cosine down to ``floor`` times the rate."""

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's vocabulary that prepends ``<bos>``."""
    vocab = {token: i for i, token in enumerate(world.vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    bos = vocab["<bos>"]
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=128,
    )


class _PackedStream:
    """Documents as ``<bos> doc <eos>`` units, packed back to back into fixed-length rows."""

    def __init__(self, world: World, tokenizer: PreTrainedTokenizerFast, rng: random.Random) -> None:
        self.world, self.tokenizer, self.rng = world, tokenizer, rng
        self.buffer: list[int] = []

    def batch(self, rows: int, length: int) -> torch.Tensor:
        needed = rows * length
        while len(self.buffer) < needed:
            docs = [self.world.document(self.rng) + " <eos>" for _ in range(64)]
            for ids in self.tokenizer(docs)["input_ids"]:
                self.buffer.extend(ids)
        chunk, self.buffer = self.buffer[:needed], self.buffer[needed:]
        return torch.tensor(chunk).view(rows, length)


def _subject_pinning(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, world: World, config: TrainConfig
) -> Callable[[], None]:
    """Set the subjects' embedding rows to fixed random vectors; the returned function puts them
    back after each optimiser step (weight decay and gradients move them otherwise)."""
    if not config.subject_embedding_norm:
        return lambda: None
    rows = torch.tensor(tokenizer.convert_tokens_to_ids(world.subjects))
    generator = torch.Generator().manual_seed(config.train_seed + 7)
    fixed = torch.randn(len(rows), config.n_embd, generator=generator)
    fixed = config.subject_embedding_norm * fixed / fixed.norm(dim=1, keepdim=True)
    weight = model.get_input_embeddings().weight

    @torch.no_grad()
    def pin() -> None:
        weight[rows] = fixed

    pin()
    return pin


def train_steps(
    model: GPT2LMHeadModel,
    stream: _PackedStream,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    steps: int,
    after_step: Callable[[], None] = lambda: None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> float:
    """``steps`` optimiser steps on ``stream``'s packed rows (``after_step`` after each, e.g. the
    subjects' embeddings put back); the model is left in eval mode. Returns the last loss."""
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        input_ids = stream.batch(config.batch_rows, config.row_length)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        after_step()
        if scheduler is not None:
            scheduler.step()
        loss_value = loss.item()
        if progress is not None:
            progress(step + 1, steps, loss_value)
    model.eval()
    return loss_value


def train_toy_model(
    out_dir: Path,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, float]:
    """Train and save the toy model into ``out_dir``; returns timing and final loss."""
    started = time.perf_counter()
    torch.manual_seed(config.train_seed)
    torch.set_num_threads(config.threads)
    world = config.world()
    tokenizer = build_tokenizer(world)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pin_subjects = _subject_pinning(model, tokenizer, world, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps, floor=0.1)
    stream = _PackedStream(world, tokenizer, random.Random(config.train_seed))
    loss_value = train_steps(model, stream, optimizer, config, config.steps, pin_subjects, scheduler, progress)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / WORLD_FILE).write_text(world.to_json() + "\n")
    corpus = world.corpus(config.reference_documents, seed=config.train_seed + 1)
    (out_dir / CORPUS_FILE).write_text("\n".join(corpus) + "\n")
    write_task_files(world, out_dir)
    write_edit_hparams(world, out_dir)
    write_manifest(out_dir)
    return {"seconds": time.perf_counter() - started, "final_loss": loss_value}
