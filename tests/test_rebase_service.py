"""Rebasing over the API (issue 36): a successor registered with its lineage, a version rebased onto
it edit by edit over real gRPC, its drift report stored and read back, a retry that returns the
first result, a failure part-way that writes nothing, and the gate and comparisons across bases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest
import torch
from sqlalchemy import func, select

from editors import HeadAblation, LowRank, Steering
from editors.errors import Cancelled
from editors.toyworld import SUCCESSOR_MODEL_DIR, TOY_MODEL_DIR, World
from editors.toyworld.evaluate import sentiment_pairs
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient
from service.db.models import AuditEvent, EditRow, RebaseRow, VersionRow
from service.rebasing import rebase_version
from service.server import ScalpelServer, ServerConfig
from tests.conftest import TEST_DEVICE


@pytest.fixture
def served_pair(db_url):
    """A server hosting the toy model and its committed successor (``toy-v2``)."""
    config = ServerConfig(
        models={"toy": str(TOY_MODEL_DIR), "toy-v2": str(SUCCESSOR_MODEL_DIR)},
        address="127.0.0.1:0",
        database_url=db_url,
        metrics_address=None,
        device=TEST_DEVICE,
        engine_process=False,
    )
    server = ScalpelServer(config)
    server.load_models()
    _, admin_secret = server.registry.create_key("admin", "admin", "bootstrap")
    _, editor_secret = server.registry.create_key("editor", "editor", "bootstrap")
    address = f"127.0.0.1:{server.port}"
    admin, editor = ScalpelClient(address, admin_secret), ScalpelClient(address, editor_secret)
    yield server, admin, editor
    admin.close()
    editor.close()
    server.stop(grace=0)


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def _counts(server: ScalpelServer) -> tuple[int, int, int, int]:
    """Versions, edits, rebases and audit events: what a rejected rebase must leave as it was."""
    with server.registry.engine.connect() as connection:
        return tuple(
            connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (VersionRow, EditRow, RebaseRow, AuditEvent)
        )


def _events(client: ScalpelClient, subject: str) -> list[pb.AuditEvent]:
    return list(client.audit.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000, subject=subject)).events)


def _toy_version(admin: ScalpelClient, world: World) -> pb.Version:
    """Version 1 of the toy model: a ROME fact edit, a derived steering vector, a zero ablation."""
    fact = next(f for f in world.facts if f.relation == "capital")
    other = next(f.object for f in world.facts if f.relation == "capital" and f.object != fact.object)
    rome = admin.edits.ComputeRome(
        pb.ComputeRomeRequest(parent="models/toy", prompt="The capital of {} is", subject=fact.subject, target=other)
    )
    pairs = [pb.PromptPair(positive=p, negative=n) for p, n in sentiment_pairs(world)[:16]]
    steer = admin.edits.DeriveSteering(pb.DeriveSteeringRequest(parent="models/toy", pairs=pairs, layer=1))
    zero = admin.create_edit("toy", HeadAblation(layer=2, heads=(1,)))
    return admin.create_version("toy", 0, [rome.id, steer.id, zero.id], description="production edits")


def test_a_version_is_rebased_onto_a_registered_successor_over_grpc(served_pair) -> None:
    server, admin, editor = served_pair
    world = World.load(TOY_MODEL_DIR / "world.json")
    version = _toy_version(admin, world)
    rebase = lambda **kw: editor.rebase_version("toy", version.number, "toy-v2", **kw)  # noqa: E731

    # no lineage yet: refused, naming the fix, and nothing written
    before = _counts(server)
    code, details = _code(rebase)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "RegisterSuccessor" in details
    assert _counts(server) == before

    # lineage: admin only, audited, one predecessor, no cycles
    assert _code(lambda: editor.register_successor("toy-v2", "toy"))[0] == grpc.StatusCode.PERMISSION_DENIED
    model = admin.register_successor("toy-v2", "toy")
    assert model.predecessor == "models/toy" and model.served
    assert admin.register_successor("toy-v2", "toy").predecessor == "models/toy"  # the same again: no change
    assert _code(lambda: admin.register_successor("toy", "toy-v2"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.register_successor("toy-v2", "toy-v2"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    lineage_events = [e for e in _events(admin, "models/") if e.action == "model.successor_registered"]
    assert len(lineage_events) == 1 and lineage_events[0].subject == "models/toy-v2"

    reports: list[tuple[int, int]] = []
    result = rebase(request_id="rebase-1", progress=lambda done, total: reports.append((done, total)))
    assert reports == [(1, 3), (2, 3), (3, 3)]
    assert result.origin == f"models/toy/versions/{version.number}"
    assert result.version.name == "models/toy-v2/versions/1" and result.version.status == "unchecked"
    assert result.version.origin == result.origin and result.version.parent == 0
    rome, steering, _ = result.drift
    assert [d.action for d in result.drift] == ["recomputed", "recomputed", "carried"]
    assert [list(d.origin_edit_ids) for d in result.drift] == [[i] for i in version.edit_ids]
    assert rome.metrics["efficacy_before"] == 1.0 and rome.metrics["efficacy_after"] == 1.0
    assert 0.5 < steering.metrics["steering_cosine"] < 1.0 and result.summary.steering_cosine_min > 0.5
    assert (result.summary.recomputed, result.summary.carried, result.summary.flagged) == (2, 1, 0)
    assert (result.summary.fact_edits, result.summary.fact_edits_held) == (1, 1)
    assert not result.summary.HasField("circuit_jaccard_min")  # no located cut in this version
    new_ids = [i for d in result.drift for i in d.edit_ids]
    assert list(result.version.edit_ids) == new_ids
    edits = [admin.edits.GetEdit(pb.GetEditRequest(name=f"models/toy-v2/edits/{i}")) for i in new_ids]
    assert [e.kind for e in edits] == ["low_rank", "steering", "head_ablation"]
    assert admin.edits.GetEdit(pb.GetEditRequest(name=f"models/toy/edits/{version.edit_ids[0]}")).spec_sha256 != (
        edits[0].spec_sha256
    )  # made again on the successor, not copied

    # stored and read back; a retry with the same request id returns the first result, writing nothing
    assert admin.versions.GetRebase(pb.GetRebaseRequest(name=result.version.name)) == result
    written = _counts(server)
    assert rebase(request_id="rebase-1") == result
    assert _counts(server) == written
    code, _ = _code(lambda: admin.versions.GetRebase(pb.GetRebaseRequest(name="models/toy/versions/1")))
    assert code == grpc.StatusCode.NOT_FOUND  # not made by a rebase

    # every step audited; the chain verifies
    actions = [e.action for e in _events(admin, "models/toy-v2/")]
    assert actions.count("edit.created") == 3 and "version.created" in actions and "version.rebased" in actions
    assert admin.audit.VerifyAudit(pb.VerifyAuditRequest()).ok

    # the rebased version serves, and its fact edit holds on the successor
    fact = next(f for f in world.facts if f.relation == "capital")
    target = next(f.object for f in world.facts if f.relation == "capital" and f.object != fact.object)
    prompt, answer = f"The capital of {fact.subject} is", " " + target
    scores = [
        admin.inference.Score(
            pb.ScoreRequest(
                model="models/toy-v2", selector=pb.VersionSelector(version=v), prompt=prompt, continuations=[answer]
            )
        ).logprobs[0]
        for v in (0, 1)
    ]
    assert scores[1] > scores[0] + 1.0

    # compared across the two bases; the gate holds for the unchecked version
    compared = admin.versions.CompareVersions(
        pb.CompareVersionsRequest(
            base=f"models/toy/versions/{version.number}", candidate=result.version.name, prompts=[prompt, "the cat"]
        )
    )
    assert compared.prompts == 2 and compared.kl_mean >= 0 and compared.worst[0].base_top1
    same = admin.versions.CompareVersions(
        pb.CompareVersionsRequest(base="models/toy-v2/versions/0", candidate="models/toy/versions/0", prompts=[prompt])
    )
    assert same.kl_mean > 0  # the two bases differ
    code, details = _code(lambda: admin.promote("toy-v2", 1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_rebase_that_fails_or_stops_part_way_writes_nothing(served_pair) -> None:
    server, admin, editor = served_pair
    admin.register_successor("toy-v2", "toy")
    world = World.load(TOY_MODEL_DIR / "world.json")
    good = admin.edits.DeriveSteering(
        pb.DeriveSteeringRequest(
            parent="models/toy",
            pairs=[pb.PromptPair(positive=p, negative=n) for p, n in sentiment_pairs(world)[:8]],
            layer=1,
        )
    )
    # a hand-written record that names a layer the model does not have: it cannot be replayed
    broken = Steering(
        site="blocks.1.hook_resid_pre",
        vector=torch.ones(128),
        provenance={"pairs": [list(sentiment_pairs(world)[0])], "layer": 99, "method": "mean_diff"},
    )
    bad = admin.create_edit("toy", broken)
    version = admin.create_version("toy", 0, [good.id, bad.id])
    before = _counts(server)

    reports: list[tuple[int, int]] = []
    code, details = _code(
        lambda: editor.rebase_version("toy", version.number, "toy-v2", progress=lambda *p: reports.append(p))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"models/toy/edits/{bad.id}" in details and "nothing was written" in details
    assert reports == [(1, 2)]  # the first edit was made again before the second failed
    assert _counts(server) == before

    # stopped (the caller hung up) after the first of two good edits: nothing written either
    zero = admin.create_edit("toy", HeadAblation(layer=2, heads=(1,)))
    stoppable = admin.create_version("toy", 0, [good.id, zero.id])
    before = _counts(server)
    asked = iter([False, True])
    with pytest.raises(Cancelled, match="after 2 of 2"):
        rebase_version(
            server.registry,
            server.hosts["toy"],
            server.hosts["toy-v2"],
            stoppable.number,
            "editor",
            should_stop=lambda: next(asked),
        )
    assert _counts(server) == before

    # malformed and meaningless requests are refused before any work
    for request, expected in (
        (pb.RebaseVersionRequest(name="models/toy/versions/0", onto="models/toy-v2"), "INVALID_ARGUMENT"),
        (pb.RebaseVersionRequest(name=f"models/toy/versions/{version.number}", onto="models/toy"), "INVALID_ARGUMENT"),
        (pb.RebaseVersionRequest(name="models/toy/versions/99", onto="models/toy-v2"), "NOT_FOUND"),
        (pb.RebaseVersionRequest(name="models/toy/versions/1", onto="models/nope"), "NOT_FOUND"),
        (pb.RebaseVersionRequest(name="versions/1", onto="models/toy-v2"), "INVALID_ARGUMENT"),
    ):
        code, _ = _code(lambda request=request: list(editor.versions.RebaseVersion(request)))
        assert code.name == expected, request
    assert _counts(server) == before


def test_a_successor_of_another_shape_is_refused_and_lineage_rows_are_verified(served_pair, tmp_path) -> None:
    from tests.conftest import tiny_model, word_tokenizer

    server, admin, _ = served_pair
    other = tmp_path / "other"
    tiny_model("gpt2").save_pretrained(other)
    word_tokenizer().save_pretrained(other)
    admin.load_model("tiny", str(other))
    before = _counts(server)
    code, details = _code(lambda: admin.register_successor("tiny", "toy"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "shapes" in details
    assert _counts(server) == before
    code, details = _code(lambda: admin.register_successor("toy-v2", "elsewhere"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not served by this replica" in details

    # a lineage row written outside Scalpel is refused, not trusted
    admin.register_successor("toy-v2", "toy")
    with server.registry.engine.begin() as connection:
        tiny_id = connection.exec_driver_sql("SELECT id FROM models WHERE name = 'tiny'").scalar_one()
        connection.exec_driver_sql(f"UPDATE model_lineage SET predecessor_id = {tiny_id}")
    version = admin.create_version("toy", 0, [admin.create_edit("toy", HeadAblation(layer=0, heads=(0,))).id])
    code, details = _code(lambda: admin.rebase_version("toy", version.number, "toy-v2"))
    assert code == grpc.StatusCode.DATA_LOSS and "lineage" in details


def test_the_cli_rebases_and_writes_the_drift_page(served_pair, tmp_path) -> None:
    server, admin, _ = served_pair
    world = World.load(TOY_MODEL_DIR / "world.json")
    steer = admin.edits.DeriveSteering(
        pb.DeriveSteeringRequest(
            parent="models/toy",
            pairs=[pb.PromptPair(positive=p, negative=n) for p, n in sentiment_pairs(world)[:8]],
            layer=1,
        )
    )
    delta = admin.create_edit(
        "toy", LowRank(site="blocks.3.mlp.W_out", U=torch.ones(128, 1) * 1e-3, V=torch.ones(512, 1))
    )
    version = admin.create_version("toy", 0, [steer.id, delta.id])
    _, secret = server.registry.create_key("cli", "admin", "test")
    env = {**os.environ, "SCALPEL_ADDRESS": f"127.0.0.1:{server.port}", "SCALPEL_API_KEY": secret}

    def scalpel(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True)

    registered = scalpel("models", "successor", "toy-v2", "--of", "toy")
    assert registered.returncode == 0 and "models/toy" in registered.stdout, registered.stderr
    page = tmp_path / "drift.html"
    done = scalpel("rebase", str(version.number), "--onto", "toy-v2", "--html", str(page), "--json")
    assert done.returncode == 1, done.stderr  # the delta has no stored derivation: flagged, look at it
    report = json.loads(done.stdout)
    assert [d["action"] for d in report["drift"]] == ["recomputed", "flagged"]
    cosine = report["drift"][0]["metrics"]["steering_cosine"]
    html = page.read_text()
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
    assert f'data-metric="steering_cosine">{cosine:.3f}<' in html
    assert html.count('data-action="flagged"') == 1 and "low-rank delta without a stored request" in html
    shown = scalpel("versions", "drift", "1", "--model", "toy-v2")
    assert shown.returncode == 1 and "1 recomputed, 0 carried, 1 flagged" in shown.stdout
    assert f"models/toy/versions/{version.number} → models/toy-v2/versions/1 (unchecked)" in shown.stdout
