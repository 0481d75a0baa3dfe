"""``scalpel export``: a registered version, loaded from the registry, written in a format other
engines serve (see :mod:`editors.export`), with an audit event naming who exported which version,
in which format, and the SHA-256 of every file written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from editors import weights_sha256
from editors.choices import EXPORT_FORMATS
from editors.export import export_lora, export_merged
from editors.steering_files import directions, write_gguf, write_safetensors
from service.registry import FailedPrecondition, Registry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_version(
    registry: Registry, model: str, version: int, fmt: str, directory: Path, actor: str
) -> dict[str, str]:
    """Export ``version`` of ``model`` as ``fmt`` into ``directory``; return {file name: SHA-256}.

    The base weights are read from the model's registered source and must still hash to what was
    registered; the version's rows and edits are verified against their hashes as when serving."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    info = registry.get_model(model)
    version_info = registry.verified_version(model, version)
    edits = [registry.load_edit(model, edit_id) for edit_id in version_info.edit_ids]
    weights = AutoModelForCausalLM.from_pretrained(info.source).eval()
    if weights_sha256(weights) != info.weights_sha256:
        raise FailedPrecondition(
            f"{info.source} no longer holds the weights model {model!r} was registered with; refusing to export"
        )
    provenance = {"version": f"models/{model}/versions/{version}", "edit_ids": list(version_info.edit_ids)}
    if fmt == "merged":
        files = export_merged(weights, AutoTokenizer.from_pretrained(info.source), edits, directory, provenance)
    elif fmt == "lora":
        files = export_lora(weights, edits, directory, info.source, provenance)
    else:
        layers = directions(edits)  # refusals before anything is written
        directory.mkdir(parents=True, exist_ok=True)
        if fmt == "gguf":
            files = [directory / "control_vector.gguf"]
            write_gguf(layers, files[0], weights.config.model_type)
        else:
            files = [directory / "steering.safetensors"]
            write_safetensors(layers, files[0], {key: json.dumps(value) for key, value in provenance.items()})
    hashes = {path.name: _sha256(path) for path in files}
    registry.record_export(model, version, actor, {"format": fmt, "files": hashes})
    return hashes
