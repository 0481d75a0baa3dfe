"""Sparse autoencoders (SAEs): a residual activation decomposed into many sparse features.

``SparseAutoencoder`` holds one SAE's weights in SAELens's layout (``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, and ``threshold`` for JumpReLU) and computes what
SAELens computes for its three inference architectures:

* ``relu`` (SAELens's ``standard``): ``f = relu((x - b_dec) W_enc + b_enc)``;
* ``jumprelu`` (Gemma Scope): ``f = relu(h) · [h > threshold]`` with ``h`` as above;
* ``topk``: the ``k`` largest of ``h`` kept (then relu), the rest zero.

``b_dec`` is subtracted from the input only where the SAE says so (``apply_b_dec_to_input``:
SAELens's default; Gemma Scope's SAEs do not). ``decode(f) = f W_dec + b_dec``, and the error
term ``x - decode(encode(x))`` is what a feature edit keeps, so only the edited features move.

:func:`load_sae` reads SAELens's folder format (``cfg.json`` and ``sae_weights.safetensors``) and
Gemma Scope's ``params.npz``; :meth:`SparseAutoencoder.save` writes SAELens's format. The feature
edits (:mod:`editors.feature_edits`) are made from an SAE with :meth:`~SparseAutoencoder.ablation`,
:meth:`~SparseAutoencoder.clamp` and :meth:`~SparseAutoencoder.steering`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from editors.blobs import tensor_to_blob
from editors.errors import InvalidEditError
from editors.sites import RESIDUAL_POINTS, Site
from editors.validation import check_choice, check_indices, check_int, check_tensor

ARCHITECTURES = ("relu", "jumprelu", "topk")
#: SAELens's architecture names → ours
SAELENS_ARCHITECTURES = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}
CONFIG_FILE, WEIGHTS_FILE, GEMMA_SCOPE_FILE = "cfg.json", "sae_weights.safetensors", "params.npz"
#: The suffixes ``Surgeon.trace`` records at an SAE's site: feature activations, the error term, the reconstruction.
SAE_POINTS = ("sae.acts", "sae.error", "sae.recons")


@dataclass(frozen=True, eq=False)
class SparseAutoencoder:
    """One SAE at a residual ``site`` of a model (see the module docstring). ``metadata`` holds
    what is known of where it came from (its training provenance and metrics, a source path)."""

    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    site: str
    architecture: str = "relu"
    threshold: torch.Tensor | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Site.parse(self.site, "site", RESIDUAL_POINTS)
        check_choice("architecture", self.architecture, ARCHITECTURES)
        w_enc = check_tensor("W_enc", self.W_enc, 2)
        d_in, d_sae = w_enc.shape
        object.__setattr__(self, "W_enc", w_enc)
        object.__setattr__(self, "W_dec", check_tensor("W_dec", self.W_dec, 2, (d_sae, d_in)))
        object.__setattr__(self, "b_enc", check_tensor("b_enc", self.b_enc, 1, (d_sae,)))
        object.__setattr__(self, "b_dec", check_tensor("b_dec", self.b_dec, 1, (d_in,)))
        if (self.architecture == "jumprelu") != (self.threshold is not None):
            raise InvalidEditError("threshold", "is required by a jumprelu SAE and only by one", "jumprelu: [d_sae]")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_tensor("threshold", self.threshold, 1, (d_sae,)))
        if (self.architecture == "topk") != (self.k is not None):
            raise InvalidEditError("k", "is required by a topk SAE and only by one", f"topk: 1..{d_sae}")
        if self.k is not None:
            check_int("k", self.k, 1, d_sae)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def sha256(self) -> str:
        """The SAE's identity: a hash of its weights and of what decides its output."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.architecture, self.k, self.apply_b_dec_to_input, self.site]).encode())
        for tensor in (self.W_enc, self.W_dec, self.b_enc, self.b_dec, self.threshold):
            if tensor is not None:
                digest.update(tensor_to_blob(tensor))
        return digest.hexdigest()

    # -- the SAE's computation ------------------------------------------------------------------
    def _cast(self, tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(like.device, like.dtype)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``h = (x - b_dec) W_enc + b_enc`` (``x - b_dec`` only with ``apply_b_dec_to_input``)."""
        if self.apply_b_dec_to_input:
            x = x - self._cast(self.b_dec, x)
        return x @ self._cast(self.W_enc, x) + self._cast(self.b_enc, x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` of activations ``x`` ``[..., d_in]``."""
        hidden = self.pre_acts(x)
        if self.architecture == "relu":
            return torch.relu(hidden)
        if self.architecture == "jumprelu":
            return torch.relu(hidden) * (hidden > self._cast(self.threshold, hidden))
        top = hidden.topk(self.k, dim=-1)
        return torch.zeros_like(hidden).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self._cast(self.W_dec, features) + self._cast(self.b_dec, features)

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """What the SAE does not reconstruct: ``x - decode(encode(x))``."""
        return x - self.decode(self.encode(x))

    def splice(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``decode(features) + error(x)`` (default features: ``encode(x)``, which gives ``x`` back up
        to rounding): the SAE spliced into the model with its error term kept."""
        actual = self.encode(x)
        chosen = actual if features is None else features
        return self.decode(chosen) + (x - self.decode(actual))

    def view(self, point: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function a trace records for ``point`` (one of :data:`SAE_POINTS`)."""
        views = {"sae.acts": self.encode, "sae.error": self.error, "sae.recons": lambda x: self.decode(self.encode(x))}
        return views[check_choice("point", point, SAE_POINTS)]

    # -- feature edits ----------------------------------------------------------------------------
    def _features(self, features: Sequence[int] | int) -> tuple[int, ...]:
        return check_indices("features", [features] if isinstance(features, int) else features, self.d_sae - 1)

    def _reference(self) -> dict[str, Any]:
        """What a feature edit records of the SAE it came from."""
        reference = {"sha256": self.sha256, "architecture": self.architecture, "d_sae": self.d_sae}
        name = self.metadata.get("name")
        return {**reference, "name": name} if isinstance(name, str) else reference

    def _encoder_slice(self, features: tuple[int, ...]) -> dict[str, Any]:
        """The encoder a feature edit needs: the features' own columns (ReLU, JumpReLU: one dot
        product per feature), or all of them (TopK: whether a feature is kept depends on the rest)."""
        index = torch.tensor(features)
        whole = self.architecture == "topk"
        threshold = self.threshold[index] if self.threshold is not None else torch.zeros(len(features))
        return {
            "encoder": self.W_enc if whole else self.W_enc[:, index],
            "encoder_bias": self.b_enc if whole else self.b_enc[index],
            "threshold": threshold,
            "input_bias": self.b_dec if self.apply_b_dec_to_input else torch.zeros_like(self.b_dec),
            "top_k": self.k,
        }

    def ablation(self, features: Sequence[int] | int, scale: float = 0.0) -> Any:
        """A ``feature_ablation``: the features' activations times ``scale`` (0: zero ablation)."""
        from editors.feature_edits import FeatureAblation

        chosen = self._features(features)
        return FeatureAblation(
            site=self.site,
            features=chosen,
            decoder=self.W_dec[torch.tensor(chosen)],
            scale=scale,
            sae=self._reference(),
            **self._encoder_slice(chosen),
        )

    def clamp(self, features: Sequence[int] | int, value: float, positions: Sequence[int] | None = None) -> Any:
        """A ``feature_clamp``: the features set to ``value`` wherever they fire (or at ``positions``)."""
        from editors.feature_edits import FeatureClamp

        chosen = self._features(features)
        return FeatureClamp(
            site=self.site,
            features=chosen,
            decoder=self.W_dec[torch.tensor(chosen)],
            value=value,
            positions=None if positions is None else tuple(positions),
            sae=self._reference(),
            **self._encoder_slice(chosen),
        )

    def steering(self, features: Sequence[int] | int, alpha: float) -> Any:
        """A ``feature_steering``: ``alpha`` times the features' decoder directions added everywhere."""
        from editors.feature_edits import FeatureSteering

        chosen = self._features(features)
        return FeatureSteering(
            site=self.site,
            features=chosen,
            decoder=self.W_dec[torch.tensor(chosen)],
            alpha=alpha,
            sae=self._reference(),
        )

    # -- files -------------------------------------------------------------------------------------
    def save(self, folder: Path | str) -> Path:
        """SAELens's folder format: ``cfg.json`` and ``sae_weights.safetensors`` (returns the folder)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        save_file({name: t.contiguous() for name, t in tensors.items()}, folder / WEIGHTS_FILE)
        architecture = {v: k for k, v in SAELENS_ARCHITECTURES.items()}[self.architecture]
        config: dict[str, Any] = {
            "architecture": architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.W_enc.dtype).removeprefix("torch."),
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "metadata": {**self.metadata, "hook_name": self.site},
        }
        if self.k is not None:
            config["k"] = self.k
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
        return folder


def split_sae_point(name: str) -> tuple[str, str | None]:
    """``("blocks.1.hook_resid_post", "sae.acts")`` for ``blocks.1.hook_resid_post.sae.acts``;
    ``(name, None)`` for a name without an SAE view."""
    for point in SAE_POINTS:
        if name.endswith("." + point):
            return name[: -len(point) - 1], point
    return name, None


def _malformed(folder: Path, problem: str) -> InvalidEditError:
    return InvalidEditError("sae", f"{folder}: {problem}", "a SAELens folder (cfg.json, sae_weights.safetensors) "
                            "or a Gemma Scope folder (params.npz)")  # fmt: skip


def _saelens_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise _malformed(folder, f"{CONFIG_FILE} does not read as JSON ({error})") from None
    if not isinstance(config, dict):
        raise _malformed(folder, f"{CONFIG_FILE} is not a JSON object")
    return config


def _load_saelens(folder: Path, site: str | None) -> SparseAutoencoder:
    config = _saelens_config(folder)
    try:
        weights = load_file(folder / WEIGHTS_FILE)
    except (OSError, ValueError, SafetensorError) as error:
        raise _malformed(folder, f"{WEIGHTS_FILE} does not load ({error})") from None
    return sae_from_saelens(config, weights, site, str(folder))


def sae_from_saelens(
    config: Mapping[str, Any], weights: Mapping[str, torch.Tensor], site: str | None = None, source: str = "the SAE"
) -> SparseAutoencoder:
    """An SAE from SAELens's ``cfg.json`` (as a mapping) and its weights; ``site`` overrides the
    config's ``hook_name``. Errors name ``source`` and what is wrong."""
    where = Path(source)
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    architecture = config.get("architecture", "standard")
    if architecture not in SAELENS_ARCHITECTURES:
        raise _malformed(where, f"architecture {architecture!r} is not one of {', '.join(SAELENS_ARCHITECTURES)}")
    if config.get("normalize_activations", "none") not in ("none", None):
        raise _malformed(where, f"normalize_activations {config['normalize_activations']!r} is not supported (none)")
    hook = site or config.get("hook_name") or metadata.get("hook_name")
    if not isinstance(hook, str):
        raise _malformed(where, "no hook_name in cfg.json: pass site=")
    k = config.get("k", (config.get("activation_fn_kwargs") or {}).get("k"))
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec"} - weights.keys())
    if missing:
        raise _malformed(where, f"{WEIGHTS_FILE} lacks {', '.join(missing)}")
    for name, expected in (("d_in", weights["W_enc"].shape[0]), ("d_sae", weights["W_enc"].shape[-1])):
        if name in config and config[name] != expected:
            raise _malformed(where, f"cfg.json says {name} = {config[name]} but W_enc has {expected}")
    return SparseAutoencoder(
        W_enc=weights["W_enc"],
        W_dec=weights["W_dec"],
        b_enc=weights["b_enc"],
        b_dec=weights["b_dec"],
        site=hook,
        architecture=SAELENS_ARCHITECTURES[architecture],
        threshold=weights.get("threshold"),
        k=k if architecture == "topk" else None,
        apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        metadata={**metadata, "source": source},
    )


def _load_gemma_scope(folder: Path, site: str | None) -> SparseAutoencoder:
    if site is None:
        raise _malformed(
            folder, f"{GEMMA_SCOPE_FILE} does not name its site: pass site= (e.g. blocks.12.hook_resid_post)"
        )
    try:
        params = np.load(folder / GEMMA_SCOPE_FILE)
        tensors = {name: torch.from_numpy(np.asarray(params[name], dtype=np.float32)) for name in params.files}
    except (OSError, ValueError) as error:
        raise _malformed(folder, f"{GEMMA_SCOPE_FILE} does not load ({error})") from None
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - tensors.keys())
    if missing:
        raise _malformed(folder, f"{GEMMA_SCOPE_FILE} lacks {', '.join(missing)}")
    return SparseAutoencoder(
        W_enc=tensors["W_enc"],
        W_dec=tensors["W_dec"],
        b_enc=tensors["b_enc"],
        b_dec=tensors["b_dec"],
        site=site,
        architecture="jumprelu",
        threshold=tensors["threshold"],
        apply_b_dec_to_input=False,  # Gemma Scope encodes x itself
        metadata={"source": str(folder)},
    )


def load_sae(folder: Path | str, site: str | None = None) -> SparseAutoencoder:
    """The SAE in ``folder``: SAELens's format (its ``hook_name`` is the site unless ``site`` is
    given) or Gemma Scope's ``params.npz`` (``site`` required). A malformed folder raises an
    :class:`InvalidEditError` naming the file and what is wrong with it."""
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        return _load_saelens(folder, site)
    if (folder / GEMMA_SCOPE_FILE).is_file():
        return _load_gemma_scope(folder, site)
    raise _malformed(folder, "holds neither cfg.json nor params.npz")
