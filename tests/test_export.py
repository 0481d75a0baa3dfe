"""Edits that travel: merged weights that `AutoModelForCausalLM` loads, and a PEFT LoRA adapter that
`peft` loads, each giving the logits of the version Scalpel serves; what has no exact form is refused."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from editors import HeadAblation, NeuronAblation, Steering, Surgeon, weights_sha256
from editors.covariance import key_covariance
from editors.export import NotExportable, export_lora, export_merged, merged_model
from editors.rome import compute_rome
from editors.toyworld import TOY_MODEL_DIR, reference_corpus
from editors.toyworld.counterfact import edit_cases
from tests.conftest import tiny_model
from tests.test_service import served  # noqa: F401  (the gRPC server fixture)

PROVENANCE = {"version": "models/toy/versions/7", "edit_ids": [3, 4]}


@pytest.fixture(scope="module")
def rome_edits(toy):
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    covariance = key_covariance(surgeon, tokenizer, reference_corpus(), 0)[0]
    return [
        compute_rome(surgeon, tokenizer, case.request, covariance, reference_corpus()).edit
        for case in edit_cases(world, 2, seed=5)
    ]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


def _served(model, edits, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), Surgeon(model).apply(edits):
        return model(ids).logits


def test_a_merged_export_loads_anywhere_with_the_served_logits(toy, rome_edits, tmp_path) -> None:
    model, tokenizer, _ = toy
    means = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    edits = [
        *rome_edits,
        HeadAblation(layer=1, heads=(0, 2)),
        HeadAblation(layer=2, heads=(1,), mode="mean", means=means),
        NeuronAblation(layer=3, neurons=(5, 17, 200)),
    ]
    before = weights_sha256(model)
    files = export_merged(model, tokenizer, edits, tmp_path / "merged", PROVENANCE)
    assert weights_sha256(model) == before  # the served model is untouched
    assert {"config.json", "model.safetensors"} <= {f.name for f in files}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = tokenizer(["The capital of Riia is", "terrible awful day"], return_tensors="pt", padding=True)["input_ids"]
    assert (_logits(loaded, ids) - _served(model, edits, ids)).abs().max() < 1e-4
    assert (_logits(loaded, ids) - _logits(model, ids)).abs().max() > 1e-2  # the edits are really in there
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["scalpel"] == PROVENANCE


def test_edits_without_an_exact_weight_form_are_refused_by_name(toy, rome_edits, tmp_path) -> None:
    model, tokenizer, _ = toy
    steer = Steering(site="blocks.2.hook_resid_pre", vector=torch.ones(128))
    resample = HeadAblation(layer=1, heads=(0,), mode="resample", pool=torch.randn(4, 1, 32))
    with pytest.raises(NotExportable) as refused:
        export_merged(model, tokenizer, [rome_edits[0], steer, resample], tmp_path / "out", PROVENANCE)
    assert [r.split(":")[0] for r in refused.value.reasons] == [
        "edit 1 (steering at blocks.2.hook_resid_pre)",
        "edit 2 (head_ablation at layer 1)",
    ]
    assert not (tmp_path / "out").exists()  # nothing written
    llama = tiny_model("llama")  # no bias on o_proj: a mean ablation has nowhere to go
    with pytest.raises(NotExportable, match="bias"):
        merged_model(llama, [HeadAblation(layer=0, heads=(0,), mode="mean", means=torch.zeros(1, 8))])
    with pytest.raises(NotExportable, match="only low_rank"):
        export_lora(model, [rome_edits[0], HeadAblation(layer=1, heads=(0,))], tmp_path / "lora", "toy", PROVENANCE)


def test_a_peft_adapter_gives_the_served_logits(toy, rome_edits, tmp_path) -> None:
    model, tokenizer, _ = toy
    edits = [*rome_edits, rome_edits[0]]  # two edits on one module stack their ranks
    files = export_lora(model, edits, tmp_path / "lora", str(TOY_MODEL_DIR), PROVENANCE)
    assert [f.name for f in files] == ["adapter_config.json", "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR).eval()
    adapted = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    ids = tokenizer(["The capital of Riia is"], return_tensors="pt")["input_ids"]
    assert (_logits(adapted, ids) - _served(model, edits, ids)).abs().max() < 1e-4
    assert (_logits(adapted, ids) - _logits(model, ids)).abs().max() > 1e-2
    with safe_open(tmp_path / "lora" / "adapter_model.safetensors", "pt") as stored:
        assert json.loads(stored.metadata()["scalpel_version"]) == PROVENANCE["version"]


def test_scalpel_export_writes_a_registered_version_and_audits_its_hashes(toy, rome_edits, db_url, tmp_path, capsys):
    import hashlib

    from service.cli.main import main
    from service.registry import Registry

    model, tokenizer, _ = toy
    registry = Registry(db_url)
    registry.register_model("toy", str(TOY_MODEL_DIR), weights_sha256(model), "alice")
    rome = registry.create_edit("toy", rome_edits[0], "alice").id
    steer = registry.create_edit("toy", Steering(site="blocks.2.hook_resid_pre", vector=torch.ones(128)), "alice").id
    fact = registry.create_version("toy", 0, "alice", append=[rome]).number
    steered = registry.create_version("toy", fact, "alice", append=[steer]).number

    out = tmp_path / "lora"
    assert main(["export", str(fact), "--format", "lora", "--out", str(out), "--database-url", db_url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    event = registry.list_audit(page_size=1, action="version.exported").items[0]
    assert event.subject == f"models/toy/versions/{fact}"
    assert json.loads(event.payload_json) == {"format": "lora", "files": printed["files"]}
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR), out).eval()
    ids = tokenizer(["The capital of Riia is"], return_tensors="pt")["input_ids"]
    assert (_logits(adapted, ids) - _served(model, [rome_edits[0]], ids)).abs().max() < 1e-4

    before = registry.verify_audit().events_checked
    refused = tmp_path / "refused"
    assert main(["export", str(steered), "--out", str(refused), "--database-url", db_url]) == 2
    assert "cannot export: edit 1 (steering at blocks.2.hook_resid_pre)" in capsys.readouterr().err
    assert not refused.exists() and registry.verify_audit().events_checked == before  # nothing written
    assert registry.verify_audit().ok
    registry.engine.dispose()


def test_export_over_grpc_streams_the_files_in_checked_chunks_and_audits_them(
    served,  # noqa: F811
    toy,
    rome_edits,
    tmp_path,
    monkeypatch,
    capsys,
) -> None:
    import hashlib

    import grpc

    from editors.steering_files import read_gguf
    from service.api import version_service
    from service.api.scalpel.v1 import scalpel_pb2 as pb
    from service.cli.main import main
    from tests.test_registry import snapshot

    server, admin, reader, address = served
    model, tokenizer, _ = toy
    monkeypatch.setattr(version_service, "EXPORT_CHUNK", 512)  # many chunks per file
    rome = admin.create_edit("toy", rome_edits[0]).id
    vector = torch.linspace(-1, 1, 128)
    steer = admin.create_edit("toy", Steering(site="blocks.2.hook_resid_post", vector=vector)).id
    fact = admin.create_version("toy", 0, append=[rome]).number
    steered = admin.create_version("toy", 0, append=[steer]).number
    request = pb.ExportVersionRequest(name=f"models/toy/versions/{fact}", format="lora")
    with pytest.raises(grpc.RpcError) as denied:
        list(reader.versions.ExportVersion(request))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    chunks = list(admin.versions.ExportVersion(request))
    assert len(chunks) > 4 and all(len(c.data) <= 512 for c in chunks)
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", server.registry.create_key("ed", "editor", "test")[1])
    out = tmp_path / "lora"
    assert main(["versions", "export", str(fact), "--format", "lora", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert set(printed["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    events = server.registry.list_audit(page_size=2, action="version.exported").items
    assert [e.actor for e in events] == ["ed", "admin"]  # newest first: one event per export, its caller
    assert json.loads(events[0].payload_json) == {"format": "lora", "files": printed["files"]}
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR), out).eval()
    ids = tokenizer(["The capital of Riia is"], return_tensors="pt")["input_ids"]
    assert (_logits(adapted, ids) - _served(model, [rome_edits[0]], ids)).abs().max() < 1e-4

    gguf = admin.export_version("toy", steered, "gguf", tmp_path / "gguf")
    assert list(gguf) == ["control_vector.gguf"]
    torch.testing.assert_close(read_gguf(tmp_path / "gguf" / "control_vector.gguf")[2], vector)

    before = snapshot(server.registry)
    for name, fmt, code, needle in (
        (f"models/toy/versions/{steered}", "merged", grpc.StatusCode.FAILED_PRECONDITION, "steering at blocks.2"),
        (f"models/toy/versions/{fact}", "onnx", grpc.StatusCode.INVALID_ARGUMENT, "merged, lora, gguf, steering"),
        ("models/toy/versions/99", "lora", grpc.StatusCode.NOT_FOUND, "99"),
        ("models/nope/versions/1", "lora", grpc.StatusCode.NOT_FOUND, "nope"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            list(admin.versions.ExportVersion(pb.ExportVersionRequest(name=name, format=fmt)))
        assert refused.value.code() == code and needle in refused.value.details(), refused.value.details()
    assert snapshot(server.registry) == before  # no audit event for a refused export
    refused_dir = tmp_path / "refused"
    assert main(["versions", "export", str(steered), "--format", "merged", "--out", str(refused_dir)]) == 2
    assert not refused_dir.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["versions", "export", str(fact), "--format", "lora", "--out", str(out)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("chunks", "problem"),
    [
        ([("../evil", 0, b"x", "")], "refusing to write it"),
        ([("a.bin", 0, b"ab", ""), ("a.bin", 1, b"c", "")], "offset 1, expected 2"),
        ([("a.bin", 0, b"ab", "0" * 64)], "does not match its SHA-256"),
        ([("a.bin", 0, b"ab", "")], "ended inside a.bin"),
        ([("a.bin", 0, b"ab", ""), ("b.bin", 0, b"c", "")], "a.bin ended without its SHA-256"),
    ],
)
def test_a_damaged_export_stream_writes_nothing(tmp_path, chunks, problem) -> None:
    from service.api.scalpel.v1 import scalpel_pb2 as pb
    from service.client import ExportDamaged, _receive

    stream = iter(pb.ExportChunk(file=f, offset=o, data=d, sha256=h) for f, o, d, h in chunks)
    with pytest.raises(ExportDamaged, match=problem.replace(".", r"\.")):
        _receive(stream, tmp_path)
    assert not (tmp_path.parent / "evil").exists()
