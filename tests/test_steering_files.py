"""Steering vectors in and out: llama.cpp / repeng GGUF control vectors and safetensors per-layer
dicts, round trips lossless, misfits refused with the expected shape before anything is made."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from editors import Steering, Surgeon, weights_sha256
from editors.export import NotExportable
from editors.steering_files import (
    BadSteeringFile,
    directions,
    read_gguf,
    read_safetensors,
    write_gguf,
    write_safetensors,
)
from service.api.scalpel.v1 import scalpel_pb2 as pb
from tests.test_service import served  # noqa: F401  (the gRPC server fixture)


def _vectors(*layers: int) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    return {layer: torch.randn(128, generator=generator) for layer in layers}


def test_both_formats_round_trip_losslessly(tmp_path) -> None:
    layers = _vectors(1, 3)
    write_gguf(layers, tmp_path / "v.gguf", "gpt2")
    write_safetensors(layers, tmp_path / "v.safetensors", {})
    for read in (read_gguf(tmp_path / "v.gguf"), read_safetensors(tmp_path / "v.safetensors")):
        assert sorted(read) == [1, 3] and all(torch.equal(read[k], layers[k]) for k in layers)
    with pytest.raises(NotExportable, match=r"direction\.0"):
        write_gguf(_vectors(0), tmp_path / "zero.gguf", "gpt2")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(BadSteeringFile):
        read_gguf(tmp_path / "junk.gguf")
    save_file({"embed": torch.zeros(3)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(BadSteeringFile, match="layer numbers"):
        read_safetensors(tmp_path / "odd.safetensors")


def test_only_block_output_additions_are_control_vectors() -> None:
    vector = torch.ones(128)
    same_layer = [Steering(site="blocks.2.hook_resid_post", vector=vector, scale=2.0)] * 2
    assert torch.equal(directions(same_layer)[2], vector * 4)  # scaled, and summed per layer
    with pytest.raises(NotExportable) as refused:
        directions(
            [
                Steering(site="blocks.2.hook_resid_pre", vector=vector),
                Steering(site="blocks.2.hook_resid_post", vector=vector, positions=(0,)),
            ]
        )
    assert [r.split(" (")[0] for r in refused.value.reasons] == ["edit 0", "edit 1"]


def test_import_over_the_api_and_export_as_gguf(served, toy, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    from service.cli.main import main

    server, admin, _, address = served
    model, _, _ = toy
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", server.registry.create_key("ops", "editor", "test")[1])
    layers = _vectors(1, 2)
    write_gguf(layers, tmp_path / "calm.gguf", "gpt2")
    assert main(["edits", "import-steering", str(tmp_path / "calm.gguf"), "--scale", "3", "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)["edits"]
    version = admin.create_version("toy", 0, append=ids).number
    served_text = admin.generate("toy", "The capital of Riia is", version=version, max_tokens=6).text
    expected = [Steering(site=f"blocks.{k}.hook_resid_post", vector=v * 3) for k, v in layers.items()]
    tokenizer = server.hosts["toy"].tokenizer
    ids_in = tokenizer("The capital of Riia is", return_tensors="pt")["input_ids"]
    with torch.inference_mode(), Surgeon(model).apply(expected):
        out = model.generate(ids_in, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    produced = out[0, ids_in.shape[1] :].tolist()
    if tokenizer.eos_token_id in produced:
        produced = produced[: produced.index(tokenizer.eos_token_id)]
    assert served_text == tokenizer.decode(produced)

    edits_before = len(admin.edits.ListEdits(pb.ListEditsRequest(parent="models/toy", page_size=100)).edits)
    save_file({"1": torch.zeros(64), "2": torch.zeros(128)}, str(tmp_path / "narrow.safetensors"))
    assert main(["edits", "import-steering", str(tmp_path / "narrow.safetensors")]) == 2
    assert "layer 1's vector has shape (64,); the model needs (128,)" in capsys.readouterr().err
    save_file({"9": torch.zeros(128)}, str(tmp_path / "deep.safetensors"))
    assert main(["edits", "import-steering", str(tmp_path / "deep.safetensors")]) == 2
    assert "layer 9 is not in the model's 0..3" in capsys.readouterr().err
    assert len(admin.edits.ListEdits(pb.ListEditsRequest(parent="models/toy", page_size=100)).edits) == edits_before

    assert weights_sha256(model) == server.registry.get_model("toy").weights_sha256
    out_dir = tmp_path / "exported"
    url = server.config.database_url
    assert main(["export", str(version), "--format", "gguf", "--out", str(out_dir), "--database-url", url]) == 0
    exported = read_gguf(out_dir / "control_vector.gguf")
    assert sorted(exported) == [1, 2] and all(torch.equal(exported[k], layers[k] * 3) for k in layers)
