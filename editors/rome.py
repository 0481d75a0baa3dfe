"""ROME: rank-one model editing of a fact (Meng et al. 2022), implemented from the paper.

Given a request (prompt template with ``{}`` for the subject, the subject, a new target):

1. **key** ``k*``: the input of the chosen layer's MLP output projection (``mlp.hook_post``) at
   the subject's last token, averaged over the prompt preceded by random context prefixes, and
   mixed (``essence_weight``) with its key in the essence prompt (by default the subject alone,
   nothing before it, as in phrasings that open with it: "{s} has its capital in");
2. **value** ``v*``: a vector ``δ`` added to that layer's MLP output at the subject's last token
   is optimised so the model predicts the new target after every prefixed prompt, with a KL term
   keeping the model's next-token distribution after ``essence`` prompts about the subject, a
   weight decay and a norm clamp; ``v* = (W k* + b) + δ``;
3. **update** in closed form with the key covariance ``C = E[k kᵀ]`` of that projection's inputs
   over a corpus: ``ΔW = (v* − W k* − b) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*)``, returned as a ``low_rank``
   edit ``U = δ / ((C⁻¹k*)ᵀ k*)``, ``V = C⁻¹ k*`` that records the request and hyper-parameters.

Everything runs on the shared model through the Surgeon under ``edits`` (earlier edits), so
sequential edits each see the model as edited so far. The covariance comes from
:mod:`editors.covariance` (computed once per model, layer and corpus, then cached).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch, last_token_index
from editors.covariance import KeyCovariance
from editors.edits import Edit, LowRank, Op
from editors.errors import Cancelled, InvalidEditError
from editors.null_space import check_null_space, null_space_projector, projected_keys
from editors.patching import subject_token_span
from editors.progress import progress_bar
from editors.surgeon import Surgeon
from editors.validation import check_choice, check_int, check_scale


@dataclass(frozen=True)
class RomeRequest:
    """Rewrite the fact ``prompt → target`` about ``subject``.

    ``prompt`` is a template with ``{}`` where the subject goes ("The capital of {} is"), or the
    filled-in prompt containing the subject ("The capital of Riia is").
    """

    prompt: str
    subject: str
    target: str

    @property
    def template(self) -> str:
        if "{}" in self.prompt:
            return self.prompt
        head, _, tail = self.prompt.rpartition(self.subject)
        return f"{head}{{}}{tail}"

    @property
    def text(self) -> str:
        return self.template.format(self.subject)

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RomeHyperParams:
    """Hyper-parameters; the defaults suit the toy model. Any of them can be overridden per request."""

    layer: int = 0
    steps: int = 80
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.05
    clamp_norm_factor: float = 1.0
    n_prefixes: int = 10
    prefix_words: int = 8
    essence_prompt: str = "{}"
    ridge: float = 1e-4
    seed: int = 0
    early_stop_nll: float = 0.01
    protect_weight: float = 1.0
    kl_direction: str = "init_new"
    weight_decay_form: str = "squared"
    clamp_radius: str = "prefixed"
    denominator_key: str = "prefixed"
    #: k* = (1 − w) · mean of the prefixed keys + w · the essence prompt's key (see BENCHMARKS.md)
    essence_weight: float = 0.4
    #: prompts ("{}" for the subject) whose next-token distribution the edit must keep, weighed by
    #: ``keep_factor`` (KL, as the essence prompt's): e.g. the subject's other relations. The
    #: request's own prompt, and any the unedited model answers as it answers the request's (another
    #: phrasing of the edited fact), are skipped: they are the ones meant to change
    keep_prompts: tuple[str, ...] = ()
    keep_factor: float = 1.0
    #: > 0: the null-space formulation (:mod:`editors.null_space`, AlphaEdit): the update's key
    #: direction is ``(P Kₚ Kₚᵀ P + α I)⁻¹ P k*`` instead of ``C⁻¹k*``, with this eigenvalue threshold
    null_space: float = 0.0
    null_space_ridge: float = 1.0

    @classmethod
    def for_model(cls, surgeon: Surgeon, **overrides: Any) -> RomeHyperParams:
        """The defaults for ``surgeon``'s model: its family's edit layer (:data:`EDIT_DEPTH`) unless
        ``overrides`` name one; the other fields are this class's defaults (tuned on the toy model)."""
        share = EDIT_DEPTH.get(surgeon.adapter.family)
        n_layers = surgeon.dims.n_layers
        if "layer" not in overrides and share is not None and n_layers >= MIN_LAYERS_FOR_DEPTH:
            overrides = {**overrides, "layer": min(n_layers - 1, round(share * n_layers))}
        return cls(**overrides)

    def validated(self, n_layers: int) -> RomeHyperParams:
        check_int("layer", self.layer, 0, n_layers - 1)
        check_value_fields(self, ("ridge", "protect_weight"))
        check_null_space(self)
        check_choice("denominator_key", self.denominator_key, KEY_CHOICES)
        if not 0 <= check_scale("essence_weight", self.essence_weight) <= 1:
            raise InvalidEditError("essence_weight", f"{self.essence_weight} is outside [0, 1]", "a share in [0, 1]")
        return self


#: The formulation switches (see docs/fact-surgery.md's ROME section for what each changes and the figures):
#: ``kl_direction``: "init_new" = KL(unedited ‖ edited) on the essence prompt, "new_init" = KL(edited ‖
#: unedited) (the reference code's); ``weight_decay_form``: "squared" = ‖δ‖²/‖v‖², "linear" =
#: ‖δ‖/‖v‖² (the reference's); ``clamp_radius`` and ``denominator_key``: which key and output set
#: the clamp's radius and the update's scale, "prefixed" = averaged over the context-prefixed
#: prompts, "prompt" = the prompt alone (the reference's).
KL_CHOICES = ("init_new", "new_init")
MAX_KEEP_PROMPTS = 16
DECAY_CHOICES = ("squared", "linear")
KEY_CHOICES = ("prefixed", "prompt")


def check_value_fields(hparams: Any, scales: tuple[str, ...] = ()) -> None:
    """The fields every value optimisation has (ROME's, MEMIT's), plus ``scales``: non-negative."""
    check_int("steps", hparams.steps, 1, 10_000)
    check_int("n_prefixes", hparams.n_prefixes, 0, 1000)
    check_int("prefix_words", hparams.prefix_words, 1, 1000)
    check_int("seed", hparams.seed)
    for name in ("lr", "kl_factor", "keep_factor", "weight_decay", "clamp_norm_factor", "early_stop_nll", *scales):
        value = check_scale(name, getattr(hparams, name))
        if value < 0:
            raise InvalidEditError(name, f"{value} is negative", "a non-negative number")
    if hparams.essence_prompt.count("{}") != 1:
        raise InvalidEditError("essence_prompt", "must contain exactly one '{}'", "e.g. '{} is a'")
    keep = hparams.keep_prompts
    if not isinstance(keep, list | tuple) or len(keep) > MAX_KEEP_PROMPTS:
        raise InvalidEditError(
            "keep_prompts", f"expected a list of at most {MAX_KEEP_PROMPTS} prompts", "e.g. ['{} lies in']"
        )
    for i, prompt in enumerate(keep):
        if not isinstance(prompt, str) or prompt.count("{}") != 1:
            raise InvalidEditError(
                f"keep_prompts[{i}]", "must be text with exactly one '{}'", "e.g. 'The language of {} is'"
            )
    check_choice("kl_direction", hparams.kl_direction, KL_CHOICES)
    check_choice("weight_decay_form", hparams.weight_decay_form, DECAY_CHOICES)
    check_choice("clamp_radius", hparams.clamp_radius, KEY_CHOICES)


def validate_request(request: RomeRequest, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Check a request before any computation; return the target's token ids."""
    if not isinstance(request.subject, str) or not request.subject.strip():
        raise InvalidEditError("subject", "is empty", "a non-empty string")
    allowed = "a template with one '{}' for the subject, or a prompt containing the subject"
    if not isinstance(request.prompt, str) or not request.prompt.strip() or request.prompt.count("{}") > 1:
        raise InvalidEditError("prompt", f"{request.prompt!r} is not a usable prompt", allowed)
    if "{}" not in request.prompt and request.subject not in request.prompt:
        raise InvalidEditError("subject", f"{request.subject!r} does not occur in {request.prompt!r}", allowed)
    if not isinstance(request.target, str) or not request.target.strip():
        raise InvalidEditError("target", "is empty", "a non-empty string")
    ids = tokenizer(" " + request.target.strip(), add_special_tokens=False)["input_ids"]
    if not ids or tokenizer.unk_token_id in ids:
        raise InvalidEditError(
            "target", f"{request.target!r} tokenises to nothing known", "text made of tokens in the model's vocabulary"
        )
    subject_token_span(tokenizer, request.text, request.subject)
    return ids


def context_prefixes(texts: Sequence[str], n: int, words: int, seed: int) -> list[str]:
    """The empty prefix and ``n - 1`` random corpus snippets of at most ``words`` words, each ending in " ."."""
    rng = random.Random(seed)
    pool = [t for t in texts if t.strip()]
    prefixes = [""]
    for _ in range(max(0, n - 1) if pool else 0):
        first_sentence = rng.choice(pool).split(" . ")[0].split()[:words]
        prefixes.append(" ".join(first_sentence).rstrip(" .") + " .")
    return prefixes


def subject_positions(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], subject: str, encoded: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Position of the subject's last token in each (padded) row."""
    positions = []
    for row, text in enumerate(texts):
        _, end = subject_token_span(tokenizer, text, subject)
        offset = int(encoded["attention_mask"][row].argmax()) if tokenizer.padding_side == "left" else 0
        positions.append(end - 1 + offset)
    return torch.tensor(positions)


def _inverse_key(
    covariance: torch.Tensor,
    k_star: torch.Tensor,
    k_scale: torch.Tensor,
    protect_keys: torch.Tensor | None,
    hparams: RomeHyperParams,
) -> torch.Tensor:
    """``C⁻¹k*`` of the closed-form update (float64, CPU). It needs only the covariance and the
    key, so it is computed, and a hopeless one refused in the request's terms, before the value
    optimisation runs."""
    d_mlp = covariance.shape[0]
    second_moment = covariance.double().cpu()
    second_moment = second_moment + hparams.ridge * second_moment.diagonal().mean() * torch.eye(
        d_mlp, dtype=torch.float64
    )
    if protect_keys is not None and len(protect_keys):
        keys = protect_keys.double().cpu()
        second_moment = second_moment + hparams.protect_weight * keys.T @ keys
    if not torch.isfinite(second_moment).all() or not torch.isfinite(k_star).all():
        raise InvalidEditError(
            "covariance",
            "or the subject's key holds NaN or infinity",
            "a covariance and model that compute in finite numbers (try float32 weights)",
        )
    try:
        if hparams.null_space:
            projector = null_space_projector(covariance, hparams.null_space)
            kept = None if protect_keys is None else hparams.protect_weight**0.5 * protect_keys.double().cpu().T
            key = k_star.unsqueeze(1)
            inverse_key = projected_keys(projector, covariance, key, hparams.null_space_ridge, kept).squeeze(1)
        else:
            inverse_key = torch.linalg.solve(second_moment, k_star)
    except torch.linalg.LinAlgError:  # exactly singular
        inverse_key = torch.full_like(k_star, float("nan"))
    alignment = float(inverse_key @ k_scale)  # the update's denominator
    if not torch.isfinite(inverse_key).all() or not alignment > 0:
        raise InvalidEditError(
            "covariance",
            f"is too close to singular at layer {hparams.layer} for this subject's key "
            f"((C⁻¹k*)·k = {alignment:.3g} with the {hparams.denominator_key} key, ridge {hparams.ridge})",
            f"a larger ridge (e.g. {max(hparams.ridge * 100, 1e-2):g}), more covariance texts, or another layer",
        )
    return inverse_key


def _add_at(positions: torch.Tensor, delta: torch.Tensor) -> Op:
    """Op adding ``delta`` at one position per row (differentiable in ``delta``)."""

    def fn(x: torch.Tensor, _: object) -> torch.Tensor:
        mask = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
        mask[torch.arange(x.shape[0], device=x.device), positions.to(x.device)] = 1
        return x + mask.unsqueeze(-1) * delta.to(x.dtype)

    return Op(fn)


def _record(positions: torch.Tensor, out: dict[str, torch.Tensor], name: str) -> Op:
    def fn(x: torch.Tensor, _: object) -> torch.Tensor:
        out[name] = x[torch.arange(x.shape[0], device=x.device), positions.to(x.device)].detach()
        return x

    return Op(fn)


#: Where ROME edits, as a share of the model's depth, by family, from the configurations the
#: method's authors and EasyEdit publish: GPT-2 XL layer 17 of 48 (ROME, hparams/ROME/gpt2-xl.json),
#: GPT-NeoX-20B layer 15 of 44 (ROME, EleutherAI_gpt-neox-20b.json), Llama-2-7B layer 5 of 32
#: (EasyEdit, hparams/ROME/llama-7b.yaml). Models shallower than MIN_LAYERS_FOR_DEPTH (the toy
#: model) keep layer 0, where causal tracing finds their facts.
EDIT_DEPTH = {"gpt2": 17 / 48, "gpt_neox": 15 / 44, "llama": 5 / 32}
MIN_LAYERS_FOR_DEPTH = 8

#: Mean NLL per target token above which the optimisation counts as not converged (p < e⁻¹ ≈ 0.37).
CONVERGED_NLL = 1.0


class RomeNotConverged(UserWarning):
    """The value optimisation ended far from producing the target: the edit will likely not work."""


@dataclass(frozen=True)
class RomeResult:
    edit: LowRank
    key: torch.Tensor  # k*, [d_mlp]: pass it in ``protect_keys`` of later edits at this layer
    seconds: float
    final_nll: float
    delta_norm: float
    steps_run: int
    converged: bool = True  # the target's mean NLL per token ended at most CONVERGED_NLL


@dataclass(frozen=True)
class RewriteRows:
    """One request's batch: every context-prefixed prompt followed by the target (teacher forcing),
    then the essence prompt, then the keep prompts; where the subject's last token and the target
    tokens sit in it."""

    request: RomeRequest
    ids: torch.Tensor
    mask: torch.Tensor
    subject_pos: torch.Tensor
    ends: torch.Tensor
    target_pos: torch.Tensor  # [rewrite rows, target tokens]: positions whose logits predict them
    target_tok: torch.Tensor
    n_rewrite: int
    essence_logp: torch.Tensor | None = None  # the essence prompt's next-token log-probs, unedited
    keep_logp: torch.Tensor | None = None  # [keep prompts, vocab]: theirs, unedited
    #: [keep prompts]: 0 for a keep prompt the unedited model answers as it answers the request's
    #: prompt (it asks the fact being edited, in other words), else 1
    keep_weight: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        surgeon: Surgeon,
        tokenizer: PreTrainedTokenizerBase,
        request: RomeRequest,
        target_ids: list[int],
        prefix_texts: Sequence[str],
        hparams: Any,
    ) -> RewriteRows:
        prefixes = context_prefixes(prefix_texts, hparams.n_prefixes, hparams.prefix_words, hparams.seed)
        target_text = tokenizer.decode(target_ids)
        rewrite_texts = [f"{f'{p} {request.text}'.strip()} {target_text}" for p in prefixes]
        keep = [prompt.format(request.subject) for prompt in hparams.keep_prompts if prompt != request.template]
        texts = [*rewrite_texts, hparams.essence_prompt.format(request.subject), *keep]
        device, _ = surgeon.device_dtype
        encoded = encode_batch(tokenizer, texts)
        subject_pos = subject_positions(tokenizer, texts, request.subject, encoded).to(device)
        ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        n_rewrite, ends, n_target = len(rewrite_texts), last_token_index(mask), len(target_ids)
        # logits predicting target token j of row r sit at position ends[r] - n_target + j
        target_pos = ends[:n_rewrite, None] - n_target + torch.arange(n_target, device=device)
        target_tok = torch.tensor(target_ids, device=device).expand(n_rewrite, -1)
        return cls(request, ids, mask, subject_pos, ends, target_pos, target_tok, n_rewrite)

    def record(
        self, surgeon: Surgeon, edits: Sequence[Edit], sites: dict[str, str], with_essence: bool = False
    ) -> dict[str, torch.Tensor]:
        """Each named site's activation at the subject token of every rewrite row (and, with
        ``with_essence``, of the essence prompt as a last row), under ``edits``; the first call also
        keeps the essence prompt's log-probs (the KL anchor)."""
        seen: dict[str, torch.Tensor] = {}
        extra = [(site, _record(self.subject_pos, seen, name)) for name, site in sites.items()]
        with torch.inference_mode(), surgeon.apply(surgeon.compile(edits, extra_ops=extra)):
            logits = surgeon.model(input_ids=self.ids, attention_mask=self.mask).logits
        if self.essence_logp is None:
            anchors = logits[torch.arange(self.n_rewrite, len(self.ids)), self.ends[self.n_rewrite :]]
            anchors = anchors.float().log_softmax(dim=-1)
            old_answer = logits[0, self.target_pos[0, 0]].argmax()  # row 0: the bare prompt
            object.__setattr__(self, "essence_logp", anchors[0])
            object.__setattr__(self, "keep_logp", anchors[1:])
            object.__setattr__(self, "keep_weight", (anchors[1:].argmax(dim=-1) != old_answer).float())
        return {name: value[: self.n_rewrite + with_essence] for name, value in seen.items()}


def optimise_value(
    surgeon: Surgeon,
    rows: RewriteRows,
    site: str,
    edits: Sequence[Edit],
    hparams: Any,
    current_norm: float,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int, int, float], None] | None = None,
    show_progress: bool = False,
    method: str = "ROME",
) -> tuple[torch.Tensor, float, int]:
    """The vector that, added at ``site`` on the subject's last token, makes the target likely:
    Adam on the target NLL plus ``kl_factor`` × KL to the essence prompt's distribution (and
    ``keep_factor`` × the keep prompts') plus a
    weight decay, its norm clamped to ``clamp_norm_factor`` × ``current_norm``. Returns the
    vector (float32, detached), the final NLL per target token and the steps run."""
    assert rows.essence_logp is not None, "call rows.record first"
    device = rows.ids.device
    delta = torch.zeros(surgeon.dims.d_model, device=device, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hparams.lr)
    max_norm = hparams.clamp_norm_factor * current_norm
    stack = surgeon.compile(edits, extra_ops=[(site, _add_at(rows.subject_pos, delta))])
    nll_value, step, n = float("nan"), 0, rows.n_rewrite
    bar = progress_bar(hparams.steps, f"{method} value for {rows.request.subject!r}", show_progress)
    for step in range(1, hparams.steps + 1):
        bar.update(1)
        if should_stop():
            bar.close()
            raise Cancelled(f"{method} stopped at optimisation step {step} of {hparams.steps}")
        with torch.enable_grad(), surgeon.apply(stack):
            out = surgeon.model(input_ids=rows.ids, attention_mask=rows.mask).logits.float()
            logp = out[torch.arange(n, device=device)[:, None], rows.target_pos].log_softmax(dim=-1)
            nll = -logp.gather(-1, rows.target_tok.unsqueeze(-1)).squeeze(-1).mean()
            anchors = out[torch.arange(n, len(rows.ids), device=device), rows.ends[n:]].log_softmax(dim=-1)
            pair = (anchors, torch.cat([rows.essence_logp[None], rows.keep_logp]))
            first, second = pair if hparams.kl_direction == "init_new" else pair[::-1]  # see KL_CHOICES
            kl_rows = torch.nn.functional.kl_div(first, second, log_target=True, reduction="none").sum(-1)
            kl = kl_rows[0] + hparams.keep_factor * (kl_rows[1:] * rows.keep_weight).sum()
            power = 2 if hparams.weight_decay_form == "squared" else 1
            decay = hparams.weight_decay * delta.norm() ** power / current_norm**2
            loss = nll + hparams.kl_factor * kl + decay
            (grad,) = torch.autograd.grad(loss, [delta])
        nll_value = nll.item()
        bar.set_postfix_str(f"target NLL {nll_value:.3f}")
        if progress is not None:
            progress(step, hparams.steps, nll_value)
        if nll_value < hparams.early_stop_nll:
            break
        delta.grad = grad
        optimizer.step()
        with torch.no_grad():
            norm = delta.norm().item()
            if norm > max_norm:
                delta.mul_(max_norm / norm)
    bar.close()
    return delta.detach(), nll_value, step


def compute_rome(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    request: RomeRequest,
    covariance: torch.Tensor | KeyCovariance,
    prefix_texts: Sequence[str],
    hparams: RomeHyperParams = RomeHyperParams(),
    edits: Sequence[Edit] = (),
    protect_keys: torch.Tensor | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    show_progress: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> RomeResult:
    """Compute a ROME edit for ``request`` on the model as edited by ``edits``.

    ``should_stop`` is asked before every optimisation step; once it answers true the work stops
    with :class:`~editors.errors.Cancelled` (a service passes "the client went away").

    ``covariance``: ``[d_mlp, d_mlp]`` second moment of the layer's ``mlp.hook_post`` (see
    :func:`editors.covariance.key_covariance`). ``prefix_texts``: a corpus to draw context
    prefixes from. Every input is validated before any computation.
    """
    started = time.perf_counter()
    hparams = hparams.validated(surgeon.dims.n_layers)
    target_ids = validate_request(request, tokenizer)
    d_mlp = surgeon.dims.d_mlp
    if isinstance(covariance, KeyCovariance):
        if covariance.layer != hparams.layer:
            raise InvalidEditError(
                "covariance",
                f"was computed at layer {covariance.layer} but the edit is at layer {hparams.layer}",
                f"a covariance of layer {hparams.layer} (CovarianceCache.get_or_compute(..., layer={hparams.layer}))",
            )
        if covariance.model_sha256 != surgeon.weights_sha256:
            raise InvalidEditError(
                "covariance",
                f"was computed on weights {covariance.model_sha256[:12]}…, not this model's "
                f"{surgeon.weights_sha256[:12]}…",
                "a covariance computed on this model",
            )
        covariance = covariance.matrix
    if not isinstance(covariance, torch.Tensor) or covariance.shape != (d_mlp, d_mlp):
        raise InvalidEditError("covariance", "has the wrong shape", f"[{d_mlp}, {d_mlp}] for this model")
    surgeon.validate(list(edits))
    layer = hparams.layer
    key_site, out_site = f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"
    rows = RewriteRows.build(surgeon, tokenizer, request, target_ids, prefix_texts, hparams)
    seen = rows.record(surgeon, edits, {"k": key_site, "v": out_site}, with_essence=True)
    n = rows.n_rewrite
    # the closed-form update runs on the CPU in float64; row 0: no prefix; row n: the essence prompt
    all_keys = seen["k"].double().cpu()
    keys, outputs = all_keys[:n], seen["v"][:n]
    k_star = (1 - hparams.essence_weight) * keys.mean(dim=0) + hparams.essence_weight * all_keys[n]
    k_scale = k_star if hparams.denominator_key == "prefixed" else keys[0]
    radius = (outputs.double().mean(dim=0) if hparams.clamp_radius == "prefixed" else outputs[0]).norm().item()
    inverse_key = _inverse_key(covariance, k_star, k_scale, protect_keys, hparams)  # checked before the long part
    delta, nll_value, step = optimise_value(
        surgeon, rows, out_site, edits, hparams, radius, should_stop, progress, show_progress, "ROME"
    )
    residual = delta.double().cpu()
    U = (residual / (inverse_key @ k_scale)).unsqueeze(1)
    V = inverse_key.unsqueeze(1)
    converged = nll_value <= CONVERGED_NLL
    if not converged:
        warnings.warn(
            f"ROME did not converge: after {step} steps the target {request.target!r} ({len(target_ids)} tokens) still "
            f"has a mean NLL of {nll_value:.2f} per token (p ≈ {math.exp(-nll_value):.2g}); the edit will likely not "
            "produce it. Try more steps, a higher lr, a larger clamp_norm_factor or another layer",
            RomeNotConverged,
            stacklevel=2,
        )
    provenance = {
        "method": "rome",
        "request": request.as_dict(),
        "layer": layer,
        "hparams": dataclasses.asdict(hparams),
        "target_tokens": target_ids,
        "final_nll": round(nll_value, 4),
        "converged": converged,
    }
    edit = LowRank(site=f"blocks.{layer}.mlp.W_out", U=U.float(), V=V.float(), provenance=provenance)
    return RomeResult(
        edit, k_star.float(), time.perf_counter() - started, nll_value, residual.norm().item(), step, converged
    )
