"""Deterministic trainer for the toy vision-language model (issue 34).

The model is ``transformers``' LLaVA built from small configs: a CLIP vision tower (2 layers,
64 wide, 8-pixel patches: 16 image tokens, one per grid cell for a 32-pixel picture), LLaVA's two-layer projector
and a Llama-shaped language model (4 layers, 128 wide), all trained from scratch on the toy
world's pictures (:mod:`editors.toyworld.vision.scenes`): a picture, a question, a one-word
answer, the loss on the answer. ``train_toy_vlm(out_dir)`` writes the model, its processor
(``AutoProcessor`` loads it: a word-level tokenizer with ``<image>`` and CLIP's image
processor), an evaluation and a manifest.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from editors.toyworld.manifest import write_manifest
from editors.toyworld.train import warmup_cosine
from editors.toyworld.vision.scenes import (
    IMAGE_SIZE,
    PATCH,
    PATCH_GRID,
    QUESTION_KINDS,
    Question,
    Scene,
    draw,
    questions,
    random_scene,
    vocabulary,
)

EVALUATION_FILE = "evaluation.json"
IMAGE_TOKENS = PATCH_GRID * PATCH_GRID


@dataclass(frozen=True)
class VisionTrainConfig:
    """Hyper-parameters; the defaults are the committed model's."""

    seed: int = 0
    steps: int = 4000
    batch: int = 64
    lr: float = 8e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    threads: int = 2
    vision_layers: int = 2
    vision_width: int = 64
    text_layers: int = 4
    text_width: int = 128
    #: the encoder block whose output the projector reads (LLaVA's own reads the one before last)
    vision_feature_layer: int = -1
    eval_scenes: int = 400


def build_processor() -> LlavaProcessor:
    """The toy VLM's processor: a word-level tokenizer (``<bos>`` first, ``<image>`` expanded to
    the 16 image tokens) and CLIP's image processor reading the 32-pixel picture as it is."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=128,
    )
    images = CLIPImageProcessor(
        do_resize=False, do_center_crop=False, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, which the "default" strategy drops
        image_token="<image>",
    )


def build_model(config: VisionTrainConfig, processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=config.vision_width,
        intermediate_size=4 * config.vision_width,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_width,
        intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy="default",
        )
    )


def pixels(scenes: list[Scene]) -> torch.Tensor:
    """``[n, 3, H, W]`` pixel values as the processor makes them (scaled to [-1, 1])."""
    drawn = torch.from_numpy(np.stack([draw(scene) for scene in scenes])).float()
    return (drawn.permute(0, 3, 1, 2) / 255 - 0.5) / 0.5


def prompt(question: Question) -> str:
    """The text the model reads for ``question`` (its answer is the next word)."""
    return f"<image> {question.text}"


def encode_questions(processor: LlavaProcessor, asked: list[Question]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` with each row's image tokens expanded, its ``attention_mask``,
    the position of each row's last token and each answer's token id."""
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    rows = [
        [tokenizer.bos_token_id, *[image_id] * IMAGE_TOKENS, *tokenizer.convert_tokens_to_ids(q.text.split())]
        for q in asked
    ]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "last": torch.tensor([len(row) - 1 for row in rows]),
        "answers": torch.tensor(tokenizer.convert_tokens_to_ids([q.answer for q in asked])),
    }


def sample(rng: random.Random, count: int) -> tuple[list[Scene], list[Question]]:
    """``count`` scenes, each with one question: a kind drawn uniformly, then one of its questions."""
    scenes, asked = [], []
    for _ in range(count):
        scene = random_scene(rng)
        kind = rng.choice(QUESTION_KINDS)
        scenes.append(scene)
        asked.append(rng.choice([q for q in questions(scene) if q.kind == kind]))
    return scenes, asked


@torch.no_grad()
def answer_logits(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene], asked: list[Question]
) -> torch.Tensor:
    batch = encode_questions(processor, asked)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels(scenes))
    return logits.logits[torch.arange(len(asked)), batch["last"]]


def evaluate(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: int, seed: int
) -> dict[str, float]:
    """Accuracy per question kind over every question of ``scenes`` fresh scenes."""
    rng = random.Random(seed)
    drawn = [random_scene(rng) for _ in range(scenes)]
    pairs = [(scene, q) for scene in drawn for q in questions(scene)]
    correct: dict[str, list[bool]] = {kind: [] for kind in QUESTION_KINDS}
    tokenizer = processor.tokenizer
    for start in range(0, len(pairs), 256):
        chunk = pairs[start : start + 256]
        logits = answer_logits(model, processor, [s for s, _ in chunk], [q for _, q in chunk])
        for (_, question), guess in zip(chunk, logits.argmax(-1).tolist(), strict=True):
            correct[question.kind].append(tokenizer.convert_ids_to_tokens(guess) == question.answer)
    return {f"{kind}_accuracy": round(sum(c) / len(c), 4) for kind, c in correct.items()}


def train_toy_vlm(
    out_dir: Path,
    config: VisionTrainConfig = VisionTrainConfig(),
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, float]:
    """Train and save the toy VLM into ``out_dir``; returns its evaluation, timing and final loss."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    processor = build_processor()
    model = build_model(config, processor)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps, floor=0.05)
    rng = random.Random(config.seed)
    loss_value = float("nan")
    for step in range(config.steps):
        scenes, asked = sample(rng, config.batch)
        batch = encode_questions(processor, asked)
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels(scenes)
        ).logits
        loss = torch.nn.functional.cross_entropy(logits[torch.arange(config.batch), batch["last"]], batch["answers"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        if progress is not None:
            progress(step + 1, config.steps, loss_value)
    model.eval()
    evaluation = evaluate(model, processor, config.eval_scenes, seed=config.seed + 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / EVALUATION_FILE).write_text(
        json.dumps({"evaluation": evaluation, "training": asdict(config)}, indent=1, sort_keys=True) + "\n"
    )
    write_manifest(out_dir)
    return {**evaluation, "seconds": round(time.perf_counter() - started, 1), "final_loss": round(loss_value, 4)}
