"""The gRPC service over a real socket, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import text
from transformers import AutoTokenizer

from editors import HeadAblation, LowRank, Steering, Surgeon
from editors.covariance import key_covariance
from editors.rome import RomeHyperParams, compute_rome
from editors.steering import derive_steering
from editors.toyworld import load_toy_model, reference_corpus
from editors.toyworld.counterfact import edit_cases, relation_prompts
from editors.toyworld.evaluate import sentiment_pairs
from service.api.auth import REQUIRED_ROLES
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient
from service.registry import ArtifactIntegrityError, Registry
from service.registry.registry import ROLES
from service.server import ScalpelServer, ServerConfig
from tests.certificates import make_certificates
from tests.conftest import TEST_DEVICE
from tests.scheduler_hold import scheduler_held


def _served(db_url: str, engine_process: bool):
    config = ServerConfig(
        address="127.0.0.1:0",
        database_url=db_url,
        metrics_address="127.0.0.1:0",
        device=TEST_DEVICE,
        engine_process=engine_process,
    )
    server = ScalpelServer(config)
    server.load_models()
    _, admin_secret = server.registry.create_key("admin", "admin", "bootstrap")
    _, reader_secret = server.registry.create_key("dashboard", "reader", "bootstrap")
    address = f"127.0.0.1:{server.port}"
    admin, reader = ScalpelClient(address, admin_secret), ScalpelClient(address, reader_secret)
    yield server, admin, reader, address
    admin.close()
    reader.close()
    server.stop(grace=0)


@pytest.fixture
def served(db_url):
    """A server as `scalpel serve` runs it: generation in each model's engine process."""
    yield from _served(db_url, engine_process=True)


@pytest.fixture
def served_inline(db_url):
    """A server whose generation runs on the serving process's scheduler thread (--no-engine-process),
    for tests that reach into that scheduler or hook the forwards there."""
    yield from _served(db_url, engine_process=False)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def run_checks(client: ScalpelClient, version: int) -> pb.CheckRun:
    """Start the suite on ``version`` and follow its progress stream to the end."""
    run = client.checks.StartRun(pb.StartRunRequest(version=f"models/toy/versions/{version}"))
    updates = list(client.checks.WatchRun(pb.GetRunRequest(id=run.id)))
    assert updates[-1].HasField("run") and updates[-1].state in ("passed", "failed")
    return updates[-1].run


def test_health_reflection_and_auth(served) -> None:
    _, admin, reader, address = served
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    per_service = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="scalpel.v1.InferenceService")
    )
    assert per_service.status == health_pb2.HealthCheckResponse.SERVING
    listed = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest()).statuses
    assert listed["scalpel.v1.AliasService"].status == health_pb2.HealthCheckResponse.SERVING
    assert listed["scalpel.v1.models/toy"].status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"scalpel.v1.InferenceService", "scalpel.v1.AliasService", "grpc.health.v1.Health"} <= services
    v1 = channel.stream_stream(  # grpc.reflection.v1 (what current grpcurl asks first): same messages
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = v1(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="scalpel.v1.AliasService")]))
    described = [reply.file_descriptor_response.file_descriptor_proto for reply in replies]
    assert described and described[0][0]
    replies = v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert "grpc.reflection.v1.ServerReflection" in {s.name for r in replies for s in r.list_services_response.service}
    anonymous = ScalpelClient(address)
    assert _code(lambda: anonymous.models.ListModels(pb.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: ScalpelClient(address, "sk_nope_x").alias("toy")) == grpc.StatusCode.UNAUTHENTICATED
    assert [m.name for m in reader.models.ListModels(pb.ListModelsRequest()).models] == ["models/toy"]
    assert _code(lambda: reader.promote("toy", 0)) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: reader.keys.ListKeys(pb.ListKeysRequest())) == grpc.StatusCode.PERMISSION_DENIED
    admin.keys.RevokeKey(pb.RevokeKeyRequest(name="dashboard"))
    assert _code(lambda: reader.alias("toy")) == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_generate_streams_tokens_and_names_the_version(served) -> None:
    _, admin, _, _ = served
    _, _, world = load_toy_model()
    fact = world.facts_for("capital")[0]
    result = admin.generate("toy", fact.canonical_prompt, max_tokens=1)
    assert result.version == "models/toy/versions/0" and result.finish_reason == "length"
    assert result.text.strip() == fact.object and len(result.token_ids) == 1
    longer = admin.generate("toy", fact.canonical_prompt, max_tokens=40)
    assert longer.finish_reason == "eos" and longer.text.strip().startswith(f"{fact.object}.")
    stopped = admin.generate("toy", fact.canonical_prompt, max_tokens=10, stop=[fact.object])
    assert stopped.finish_reason == "stop" and stopped.text.strip() == fact.object
    sampled = [
        admin.generate("toy", "the food was", max_tokens=6, temperature=1.0, top_p=0.9, seed=7) for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    scores = admin.inference.Score(
        pb.ScoreRequest(
            model="models/toy", prompt=fact.canonical_prompt, continuations=[fact.object, "Atlantis", "the"]
        )
    )
    assert scores.version == "models/toy/versions/0" and scores.logprobs[0] > scores.logprobs[2]
    for bad in (dict(prompt=""), dict(prompt="x", max_tokens=100000), dict(prompt="x", temperature=-1.0)):
        assert _code(lambda bad=bad: admin.generate("toy", **bad)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.generate("nope", "x")) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: admin.generate("toy", "x", version=99)) == grpc.StatusCode.NOT_FOUND


def test_edit_version_gate_promote_serve_and_roll_back(served) -> None:
    _, admin, _, _ = served
    model, tokenizer, world = load_toy_model()
    surgeon = Surgeon(model)
    case = edit_cases(world, 1, seed=4)[0]
    hparams = RomeHyperParams(keep_prompts=relation_prompts(world))  # as the toy model ships them
    covariance = _covariance(surgeon, tokenizer)
    rome = compute_rome(surgeon, tokenizer, case.request, covariance, reference_corpus(), hparams).edit
    edit = admin.create_edit("toy", rome, description="counterfactual", request_id="rome-1")
    assert admin.create_edit("toy", rome, description="counterfactual", request_id="rome-1").id == edit.id  # a retry
    version = admin.create_version("toy", 0, append=[edit.id], description="fact edit")
    assert version.number == 1 and version.status == "unchecked"
    with pytest.raises(grpc.RpcError) as refused:
        admin.promote("toy", 1)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "unchecked" in refused.value.details()
    checked = run_checks(admin, 1)
    assert checked.state == "passed", [(r.name, r.metric, r.threshold) for r in checked.results if not r.passed]
    assert admin.promote("toy", 1, reason="fact fix").version == 1
    served_edit = admin.generate("toy", case.request.text, max_tokens=1)
    assert served_edit.version == "models/toy/versions/1" and served_edit.text.strip() == case.request.target
    base = admin.generate("toy", case.request.text, version=0, max_tokens=1)
    assert base.version == "models/toy/versions/0" and base.text.strip() == case.old
    comparison = admin.versions.CompareVersions(
        pb.CompareVersionsRequest(
            base="models/toy/versions/0",
            candidate="models/toy/versions/1",
            prompts=[case.request.text, *[p for p, _ in case.neighbours[:4]]],
        )
    )
    assert comparison.prompts == 5 and comparison.changed_top1 == pytest.approx(0.2)
    assert comparison.worst[0].prompt == case.request.text and comparison.worst[0].candidate_top1 == case.request.target
    assert comparison.worst[0].kl > 1.0 > comparison.worst[-1].kl
    assert admin.rollback("toy", reason="back to base").version == 0
    assert admin.generate("toy", case.request.text, max_tokens=1).text.strip() == case.old
    verify = admin.audit.VerifyAudit(pb.VerifyAuditRequest())
    assert verify.ok and verify.events_checked >= 6
    moves = admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(subject="models/toy/aliases/production"))
    assert [e.action for e in moves.events] == ["alias.rollback", "alias.promote"]


def test_rollback_to_an_unchecked_version_is_refused_over_the_socket(served) -> None:
    server, admin, _, address = served
    _, approver_secret = server.registry.create_key("approver", "approver", "bootstrap")
    approver = ScalpelClient(address, approver_secret)
    huge = Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128), scale=5000.0)
    version = admin.create_version("toy", 0, append=[admin.create_edit("toy", huge).id])
    refused = _code(lambda: approver.rollback("toy", version=version.number, reason="sneak"))
    assert refused == grpc.StatusCode.FAILED_PRECONDITION
    denied = _code(lambda: approver.rollback("toy", version=version.number, reason="sneak", force=True))
    assert denied == grpc.StatusCode.PERMISSION_DENIED
    assert admin.alias("toy").version == 0
    forced = admin.rollback("toy", version=version.number, reason="incident 9", force=True)
    assert forced.version == version.number
    assert approver.rollback("toy", reason="undo").version == 0  # undoing is always allowed
    approver.close()


def _covariance(surgeon: Surgeon, tokenizer) -> torch.Tensor:
    return key_covariance(surgeon, tokenizer, reference_corpus(), 0)[0]


def test_bad_requests_get_the_right_codes_and_change_nothing(served) -> None:
    server, admin, _, _ = served
    before = server.registry.verify_audit().events_checked
    good = Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128), scale=2.0)
    wrong_width = Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(64), scale=2.0)
    assert _code(lambda: admin.create_edit("toy", wrong_width)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_json = pb.CreateEditRequest(parent="models/toy", spec_json="{nope")
    assert _code(lambda: admin.edits.CreateEdit(bad_json)) == grpc.StatusCode.INVALID_ARGUMENT
    missing_blob = pb.CreateEditRequest(parent="models/toy", spec_json=good.to_json())
    assert _code(lambda: admin.edits.CreateEdit(missing_blob)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.create_edit("elsewhere", good)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: admin.versions.GetVersion(pb.GetVersionRequest(name="toy/1"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    huge = pb.GetVersionRequest(name="models/toy/versions/" + "9" * 20)  # beyond any database integer
    assert _code(lambda: admin.versions.GetVersion(huge)) == grpc.StatusCode.INVALID_ARGUMENT
    stale = pb.PromoteRequest(name="models/toy/aliases/production", version=0, etag="stale")
    assert _code(lambda: admin.aliases.Promote(stale)) == grpc.StatusCode.ABORTED
    assert server.registry.verify_audit().events_checked == before


def test_the_default_suite_gates_ablations_and_huge_steering(served, induction_ablation) -> None:
    _, admin, _, _ = served
    model, tokenizer, world = load_toy_model()
    steering = derive_steering(Surgeon(model), tokenizer, sentiment_pairs(world), layer=1)
    failing = {
        "induction": (induction_ablation, {"induction"}),
        "huge steering": (
            Steering(site=steering.site, vector=steering.vector, scale=1000.0),
            {"kl_vs_base", "perplexity_ratio"},
        ),
    }
    for label, (edit, expected) in failing.items():
        version = admin.create_version("toy", 0, append=[admin.create_edit("toy", edit).id])
        run = run_checks(admin, version.number)
        failed = {r.name for r in run.results if not r.passed}
        assert run.state == "failed" and expected <= failed, (label, failed)
        assert all(r.worst_json for r in run.results)
        with pytest.raises(grpc.RpcError) as refused:
            admin.promote("toy", version.number)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert all(name in refused.value.details() for name in expected), refused.value.details()
    forced = admin.promote("toy", 1, reason="drill: forced on purpose", force=True)
    assert forced.version == 1
    assert (
        admin.aliases.ListAliasHistory(pb.ListAliasHistoryRequest(name="models/toy/aliases/production")).moves[0].forced
    )


def test_runs_left_running_are_interrupted_at_start_and_can_be_rerun(served, db_url) -> None:
    server, admin, _, _ = served
    version = admin.create_version("toy", 0, append=[admin.create_edit("toy", HeadAblation(layer=0, heads=(3,))).id])
    alive = server.registry.start_check_run("toy", version.number, "other-replica", claimed_by="other")
    fresh = ScalpelServer(ServerConfig(address="127.0.0.1:0", database_url=db_url, metrics_address=None))
    try:
        fresh.load_models()  # another replica starting does not touch a run with a fresh heartbeat
        assert fresh.registry.get_check_run(alive.id).state == "running"
    finally:
        fresh.stop(grace=0)
    orphan = alive  # …until its heartbeat is older than stale_run_seconds (0 here: its replica is gone)
    restarted = ScalpelServer(
        ServerConfig(address="127.0.0.1:0", database_url=db_url, metrics_address=None, stale_run_seconds=0)
    )
    try:
        restarted.load_models()
        assert restarted.registry.get_check_run(orphan.id).state == "interrupted"
    finally:
        # stopped before the rerun: with stale_run_seconds=0 its sweep would interrupt any live run
        restarted.stop(grace=0)
    assert (
        admin.versions.GetVersion(pb.GetVersionRequest(name=f"models/toy/versions/{version.number}")).status
        == "interrupted"
    )
    assert run_checks(admin, version.number).state in ("passed", "failed")


def test_client_conveniences_are_safe_to_retry(served) -> None:
    _, admin, _, _ = served
    edit = admin.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128)), request_id="e1")
    first = admin.create_version("toy", 0, append=[edit.id], request_id="v1")
    assert admin.create_version("toy", 0, append=[edit.id], request_id="v1").number == first.number  # a retry
    assert admin.create_version("toy", 0, append=[edit.id]).number == first.number + 1  # a new request
    staging = admin.promote("toy", 0, alias="staging")  # a new alias: no etag to read, none needed
    moved = admin.promote("toy", 0, alias="staging", etag=staging.etag, reason="same target, new move")
    stale = _code(lambda: admin.promote("toy", 0, alias="staging", etag=staging.etag))  # the retry of a done move
    assert stale == grpc.StatusCode.ABORTED and admin.alias("toy", "staging").etag == moved.etag


def test_a_retried_start_run_returns_the_run_it_started(served) -> None:
    _, admin, _, _ = served
    request = pb.StartRunRequest(version="models/toy/versions/0", request_id="nightly-42")
    first = admin.checks.StartRun(request)
    again = admin.checks.StartRun(request)
    assert again.id == first.id
    final = list(admin.checks.WatchRun(pb.GetRunRequest(id=first.id)))[-1].run
    assert admin.checks.StartRun(request).id == first.id and final.state in ("passed", "failed")
    runs = admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(action="checks.started")).events
    assert len(runs) == 1


def test_a_replica_refuses_rows_changed_outside_scalpel(served) -> None:
    server, admin, _, _ = served
    small = admin.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128), scale=0.5))
    direction = torch.randn(128, generator=torch.Generator().manual_seed(3))  # (a constant vector: LayerNorm drops it)
    huge = admin.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=direction, scale=50.0))
    version = admin.create_version("toy", 0, append=[small.id])
    failed = admin.create_version("toy", 0, append=[huge.id])
    assert run_checks(admin, failed.number).state == "failed"
    with server.registry.engine.begin() as connection:  # swap the served edit, flip the failed run
        connection.execute(
            text(
                "UPDATE version_edits SET edit_id = :e WHERE version_id = (SELECT id FROM versions WHERE number = :n)"
            ),
            {"e": huge.id, "n": version.number},
        )
        connection.execute(text("UPDATE check_runs SET state = 'passed' WHERE state = 'failed'"))
    assert _code(lambda: admin.generate("toy", "the food was", version=version.number)) == grpc.StatusCode.DATA_LOSS
    assert _code(lambda: admin.promote("toy", failed.number)) == grpc.StatusCode.DATA_LOSS
    assert admin.alias("toy").version == 0
    verify = admin.audit.VerifyAudit(pb.VerifyAuditRequest())
    assert not verify.ok and any(f"versions/{version.number}" in line for line in verify.mismatches)


def test_malformed_bytes_and_hostile_values_are_invalid_argument_and_change_nothing(served) -> None:
    server, admin, _, address = served
    _, secret = server.registry.create_key("raw-bytes", "admin", "test")
    before = server.registry.verify_audit().events_checked
    channel = grpc.insecure_channel(address)
    metadata = (("authorization", f"Bearer {secret}"),)
    for method in ("/scalpel.v1.EditService/CreateEdit", "/scalpel.v1.InferenceService/Score"):
        raw = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for payload in (b"\xff\xff\xff\xff", b"\x0a\x03\xff\xfe\xfd"):  # garbage; invalid UTF-8 in field 1
            with pytest.raises(grpc.RpcError) as caught:
                raw(payload, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, caught.value.details())
    stream = channel.unary_stream(
        "/scalpel.v1.InferenceService/Generate", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(stream(b"\x0a\x03\xff\xfe\xfd", metadata=metadata))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    nested = pb.CreateEditRequest(parent="models/toy", spec_json="[" * 100_000 + "]" * 100_000)
    duplicate = pb.CreateEditRequest(parent="models/toy", spec_json='{"kind": "steering", "kind": "steering"}')
    suite = pb.SetSuiteRequest(model="models/toy", spec_json='{"a": 1, "a": 2}')
    far_page = base64.urlsafe_b64encode(b"after:" + b"9" * 30).decode()  # beyond any database integer
    for call in (
        lambda: admin.edits.CreateEdit(nested),
        lambda: admin.edits.CreateEdit(duplicate),
        lambda: admin.checks.SetSuite(suite),
        lambda: admin.versions.ListVersions(pb.ListVersionsRequest(parent="models/toy", page_token=far_page)),
        lambda: admin.versions.GetVersion(pb.GetVersionRequest(name="models/toy/versions/\u0663")),
        lambda: admin.versions.GetVersion(pb.GetVersionRequest(name="models/toy/versions/03")),
        lambda: admin.generate("toy", "x", temperature=1e-45),
        *(
            lambda floor=floor: admin.checks.SetSuite(
                pb.SetSuiteRequest(
                    model="models/toy",
                    spec_json=f'{{"reference_texts": ["a b"], "tasks": {{"fact_recall": {floor}}}}}',
                )
            )
            for floor in ("NaN", "Infinity", "-5", "1e308")
        ),
        lambda: admin.checks.SetSuite(
            pb.SetSuiteRequest(model="models/toy", spec_json=json.dumps({"reference_texts": ["a b"] * 2000}))
        ),
        lambda: admin.versions.CompareVersions(
            pb.CompareVersionsRequest(base="models/toy/versions/0", candidate="models/toy/versions/0", worst=-1)
        ),
        lambda: admin.versions.CompareVersions(
            pb.CompareVersionsRequest(
                base="models/toy/versions/0", candidate="models/toy/versions/0", prompts=["the " * 5000]
            )
        ),
        lambda: admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(subject="x" * 50_000)),
        lambda: admin.generate("toy", "the " * 3_000_000),  # 12 MB: refused before tokenising
        lambda: admin.edits.DeriveSteering(
            pb.DeriveSteeringRequest(
                parent="models/toy", layer=1, pairs=[pb.PromptPair(positive="the " * 2000, negative="the food")]
            )
        ),
        lambda: admin.edits.DeriveSteering(pb.DeriveSteeringRequest(parent="models/toy", layer=1)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert len(caught.value.details()) < 2000
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'grpc_code="INVALID_ARGUMENT",grpc_method="CreateEdit"' in body  # refused calls are counted too
    assert server.registry.verify_audit().events_checked == before


def _forward_counts(metrics_port: int) -> tuple[float, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    forwards = re.search(r'^scalpel_forwards_total\{model="toy"\} (\S+)$', body, re.M)
    steps = re.search(r'^scalpel_decode_steps_total\{model="toy"\} (\S+)$', body, re.M)
    ridden = re.search(r'^scalpel_prefill_chunks_ridden_total\{model="toy"\} (\S+)$', body, re.M)
    assert forwards and steps and ridden, "the forward counters are missing from /metrics"
    assert float(ridden.group(1)) <= float(steps.group(1)) <= float(forwards.group(1))  # a ride is a decode step
    return float(forwards.group(1)), float(steps.group(1))


def test_the_metrics_count_the_forwards_that_generation_runs(served) -> None:
    """Counted where they run (the engine process, by default), read at each scrape: a lone stream
    of 6 tokens is at least one prefill and 5 decode steps."""
    server, admin, _, _ = served
    forwards, steps = _forward_counts(server.metrics_port)
    made = admin.generate("toy", "The capital of Riia is", max_tokens=6, ignore_eos=True)
    assert len(made.token_ids) == 6
    after_forwards, after_steps = _forward_counts(server.metrics_port)
    assert after_steps - steps >= 5 and after_forwards - forwards >= 6


def test_the_metrics_count_prompt_tokens_taken_from_the_prefix_cache(served) -> None:
    """A prompt that starts like an earlier one on the same version takes its stored blocks from
    the engine process's prefix cache: 32 of a 35-token shared start, counted on /metrics, and the
    same greedy tokens as with a cold cache."""
    server, admin, _, _ = served
    symbols = server.hosts["toy"].tokenizer.convert_ids_to_tokens(list(range(200, 235)))
    shared = " ".join(symbol.lstrip("Ġ") for symbol in symbols)

    def hits() -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        return _series(body, "scalpel_prefix_cache_hit_tokens_total")

    before = hits()
    cold = admin.generate("toy", shared, max_tokens=4, ignore_eos=True)
    assert hits() == before  # nothing stored for this start yet
    warm = admin.generate("toy", shared, max_tokens=4, ignore_eos=True)
    assert hits() - before >= 32 and warm.token_ids == cold.token_ids


def test_rows_a_step_had_no_memory_for_are_counted_and_their_streams_answer_in_full(served_inline) -> None:
    """Four gRPC streams join one batch whose decode steps over more than two rows run out of
    memory (raised by a hook in the second block): two rows are prefilled again, counted as
    ``scalpel_preempted_rows_total``, the batch's ``scalpel_generation_row_cap`` reads 2 meanwhile
    (256 again once it empties) and ``scalpel_kv_cache_bytes`` two rows' keys and values (0 once it
    empties), and every stream still answers exactly as it does alone."""
    server, admin, _, _ = served_inline
    host = server.hosts["toy"]
    prompts = [f"The capital of {country} is" for country in ("Riia", "Muford", "Pimir", "Sondra")]
    alone = [admin.generate("toy", prompt, max_tokens=8, ignore_eos=True).token_ids for prompt in prompts]

    caps: list[float] = []  # the gauge, scraped at the first step after the shortage
    held: list[float] = []  # and the batch's keys and values then

    def run_out(_: object, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] == 1 and hidden.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")
        if hidden.shape[1] == 1 and not caps and preempted():
            body = scrape()
            caps.append(_series(body, "scalpel_generation_row_cap"))
            held.append(_series(body, "scalpel_kv_cache_bytes"))

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()

    def preempted() -> float:
        return _series(scrape(), "scalpel_preempted_rows_total")

    assert preempted() == 0 and _series(scrape(), "scalpel_generation_row_cap") == 256
    hook = host.model.transformer.h[1].register_forward_pre_hook(run_out, with_kwargs=True)
    try:
        with ThreadPoolExecutor(4) as pool, scheduler_held(host):
            futures = [pool.submit(admin.generate, "toy", p, max_tokens=8, ignore_eos=True) for p in prompts]
            while host.scheduler.waiting < 4:  # all four queued: they join one batch
                threading.Event().wait(0.01)
        made = [future.result().token_ids for future in futures]
    finally:
        hook.remove()
    assert made == alone and preempted() == 2 and caps == [2]
    assert _series(scrape(), "scalpel_generation_row_cap") == 256
    # two rows' keys and values (every layer, the cache's spare room too) while they decoded, none after
    layers, config = host.model.config.n_layer, host.model.config
    assert held[0] >= 2 * 2 * layers * config.n_embd * 4 * len(host.tokenizer(prompts[0])["input_ids"])
    assert _series(scrape(), "scalpel_kv_cache_bytes") == 0


def _series(body: str, name: str) -> float:
    found = re.search(rf'^{name}\{{model="toy"\}} (\S+)$', body, re.M)
    assert found, f"{name} is missing from /metrics"
    return float(found.group(1))


@pytest.fixture(params=[True, False], ids=["engine-process", "inline"])
def served_either_way(db_url, request):
    yield from _served(db_url, engine_process=request.param)


def test_the_metrics_time_each_stream_to_its_first_token_and_per_token_after(served_either_way) -> None:
    """Every stream that reached its model is timed, in an engine process or inline: its queue
    wait and its time to first token once each (the wait inside the time to first token), its
    time per token after the first only if it finished with two tokens or more; a refused
    request is not timed at all, and its prompt is not counted as prefilled."""
    server, admin, _, _ = served_either_way
    tokenizer = server.hosts["toy"].tokenizer
    prompts = ["The capital of Riia is", "the food was", "Riia"]
    for prompt in prompts:
        assert len(admin.generate("toy", prompt, max_tokens=5, ignore_eos=True).token_ids) == 5
    assert len(admin.generate("toy", "the food was", max_tokens=1).token_ids) == 1  # no time per token
    stream = admin.stream("toy", "the food was", max_tokens=200, ignore_eos=True)
    next(iter(stream))  # its first token arrived, then the client hangs up: no time per token
    stream.cancel()
    assert _code(lambda: admin.generate("toy", "the food was", max_tokens=100_000)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.generate("toy", "the food was", version=99)) == grpc.StatusCode.NOT_FOUND
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert _series(body, "scalpel_time_to_first_token_seconds_count") == 5
    assert _series(body, "scalpel_queue_wait_seconds_count") == 5
    assert _series(body, "scalpel_time_per_output_token_seconds_count") == 3
    assert _series(body, "scalpel_time_per_output_token_seconds_sum") > 0
    prefilled = sum(len(tokenizer(p)["input_ids"]) for p in [*prompts, "the food was", "the food was"])
    assert _series(body, "scalpel_prompt_tokens_total") == prefilled
    first, waited = (_series(body, f"scalpel_{name}_seconds_sum") for name in ("time_to_first_token", "queue_wait"))
    assert first > waited >= 0
    assert _series(body, "scalpel_generation_waiting") == 0


def test_prometheus_metrics_on_their_own_port(served) -> None:
    server, admin, _, _ = served
    admin.generate("toy", "The capital of Riia is", max_tokens=2)
    assert _code(lambda: admin.alias("nope")) == grpc.StatusCode.NOT_FOUND
    admin.rollback("toy", version=0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    labels = 'grpc_code="OK",grpc_method="Generate",grpc_service="scalpel.v1.InferenceService"'
    assert f"grpc_server_handled_total{{{labels}}} 1.0" in body
    assert 'grpc_code="NOT_FOUND",grpc_method="GetAlias"' in body
    assert 'grpc_server_handling_seconds_count{grpc_method="Generate"' in body
    stream_labels = 'grpc_method="Generate",grpc_service="scalpel.v1.InferenceService",grpc_type="server_stream"'
    assert f"grpc_server_msg_sent_total{{{stream_labels}}}" in body
    assert 'grpc_server_started_total{grpc_method="GetAlias"' in body
    assert 'scalpel_active_version{alias="production",model="toy"} 0.0' in body
    assert 'scalpel_tokens_generated_total{model="toy",version="0"} 2.0' in body
    assert 'scalpel_active_version{alias="production",model="toy"} 0.0' in body
    assert 'scalpel_generation_rows{model="toy"} 0.0' in body  # the stream ended: its row left the batch
    # the standard process and runtime families, as a default registry would carry them
    assert "process_cpu_seconds_total" in body and "process_resident_memory_bytes" in body
    assert 'python_gc_collections_total{generation="2"}' in body and "python_info{" in body


def test_health_is_not_serving_until_models_load_and_tls_works(db_url, tmp_path) -> None:
    files = make_certificates(tmp_path)
    cert, key, ca = files["server.pem"], files["server.key"], files["ca.pem"]
    server = ScalpelServer(
        ServerConfig(
            address="127.0.0.1:0",
            database_url=db_url,
            metrics_address=None,
            tls_cert=cert,
            tls_key=key,
            health_address="127.0.0.1:0",
        )
    )
    try:
        credentials = grpc.ssl_channel_credentials(ca.read_bytes())
        channel = grpc.secure_channel(f"localhost:{server.port}", credentials)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        probe = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.health_port}"))
        assert probe.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        server.load_models()
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert probe.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        _, secret = server.registry.create_key("tls", "reader", "test")
        with ScalpelClient(f"localhost:{server.port}", secret, root_certificates=ca.read_bytes()) as client:
            assert client.alias("toy").version == 0
        plaintext = ScalpelClient(f"127.0.0.1:{server.port}", secret)
        assert _code(lambda: plaintext.alias("toy")) == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        server.stop(grace=0)


def test_oversized_messages_are_refused_with_resource_exhausted(db_url) -> None:
    server = ScalpelServer(
        ServerConfig(address="127.0.0.1:0", database_url=db_url, metrics_address="127.0.0.1:0", max_message_bytes=4096)
    )
    try:
        server.load_models()
        _, secret = server.registry.create_key("big", "admin", "test")
        before = server.registry.verify_audit().events_checked
        with ScalpelClient(f"127.0.0.1:{server.port}", secret) as client:
            big = LowRank(site="blocks.0.mlp.W_out", U=torch.zeros(128, 4), V=torch.zeros(512, 4))  # ~10 kB
            with pytest.raises(grpc.RpcError) as caught:
                client.create_edit("toy", big)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 4096" in caught.value.details()
        assert server.registry.verify_audit().events_checked == before
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        assert 'grpc_code="RESOURCE_EXHAUSTED",grpc_method="CreateEdit"' in body  # counted like any refusal
    finally:
        server.stop(grace=0)


def _rpcs() -> list[tuple[str, object, bool]]:
    """Every RPC the API declares: (full method path, request class, server-streaming?)."""
    return [
        (f"/{service.full_name}/{method.name}", GetMessageClass(method.input_type), method.server_streaming)
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def test_every_rpc_has_its_documented_role() -> None:
    """The interceptor's table covers every RPC in the protos and matches the manual's table."""
    declared = {path.rsplit("/", 1)[-1] for path, _, _ in _rpcs()}
    assert declared == set(REQUIRED_ROLES)
    readme = (Path(__file__).resolve().parent.parent / "docs" / "service.md").read_text()
    documented = {}
    for rpcs, role in re.findall(r"^\| \w+Service \| ([^|]+) \| (\w+) \|$", readme, re.MULTILINE):
        for rpc in re.findall(r"\b[A-Z]\w+", rpcs):
            documented[rpc] = role
    assert documented == REQUIRED_ROLES


def test_role_matrix_over_the_socket(served) -> None:
    """Each RPC with an empty request: a key one role short is PERMISSION_DENIED, a key with
    exactly the required role gets past auth to a clear validation answer (never UNKNOWN/INTERNAL)."""
    server, _, _, address = served
    secrets = {role: server.registry.create_key(f"k-{role}", role, "bootstrap")[1] for role in ROLES}
    audit_before = server.registry.verify_audit().events_checked
    channel = grpc.insecure_channel(address)
    for path, request_class, streaming in _rpcs():
        required = REQUIRED_ROLES[path.rsplit("/", 1)[-1]]
        factory = channel.unary_stream if streaming else channel.unary_unary
        call = factory(path, request_serializer=request_class.SerializeToString, response_deserializer=lambda b: b)

        def invoke(role: str, call=call, request_class=request_class, streaming=streaming) -> grpc.StatusCode:
            metadata = (("authorization", f"Bearer {secrets[role]}"),)
            try:
                reply = call(request_class(), metadata=metadata, timeout=30)
                if streaming:
                    list(reply)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        allowed = invoke(required)
        assert allowed not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INTERNAL,
        ), (path, allowed)
        if required != ROLES[0]:
            assert invoke(ROLES[ROLES.index(required) - 1]) == grpc.StatusCode.PERMISSION_DENIED, path
    channel.close()
    assert server.registry.verify_audit().events_checked == audit_before  # empty requests changed nothing


def test_concurrent_streams_on_two_versions_never_mix(served) -> None:
    """8 concurrent Generate streams alternating between the base and a steered version: each gets
    exactly its solo output, and every forward runs in the model's engine process (by default),
    none on the serving process's copy of the model."""
    server, admin, _, _ = served
    host = server.hosts["toy"]
    _, _, world = load_toy_model()
    direction = torch.randn(128, generator=torch.Generator().manual_seed(0))
    steer = Steering(site="blocks.1.hook_resid_post", vector=direction, scale=20.0)
    version = admin.create_version("toy", 0, append=[admin.create_edit("toy", steer).id]).number
    prompts = [f.canonical_prompt for f in world.facts[:8]]
    solo = {(p, v): admin.generate("toy", p, version=v, max_tokens=8) for p in prompts for v in (0, version)}
    assert any(solo[(p, 0)].text != solo[(p, version)].text for p in prompts)  # the versions differ
    running, most = [0], [0]

    def enter(*_: object) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])

    def leave(*_: object) -> None:
        running[0] -= 1

    hooks = [host.model.register_forward_pre_hook(enter), host.model.register_forward_hook(leave)]
    engine_forwards = host.engine.stats.forwards
    try:
        jobs = [(p, v) for p in prompts for v in (0, version)] * 2
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda job: admin.generate("toy", job[0], version=job[1], max_tokens=8), jobs))
    finally:
        for hook in hooks:
            hook.remove()
    assert results == [solo[job] for job in jobs]
    assert most[0] == 0 and host.engine.stats.forwards > engine_forwards


def test_generation_stops_at_the_context_window_with_length(served) -> None:
    """A prompt 3 tokens short of the context: 3 tokens then "length", not an indexing error."""
    server, admin, _, _ = served
    host = server.hosts["toy"]
    _, tokenizer, world = load_toy_model()
    sequence = world.symbols[:40]
    prompt = " ".join(sequence * 4)
    ids = tokenizer(prompt)["input_ids"]
    prompt = tokenizer.decode(ids[1 : host.context_length - 3], skip_special_tokens=True)
    assert len(tokenizer(prompt)["input_ids"]) == host.context_length - 3
    result = admin.generate("toy", prompt, max_tokens=512)
    assert result.finish_reason == "length" and len(result.token_ids) == 3


def test_a_cancelled_stream_stops_generating(served) -> None:
    """The client goes away after the first token: the server stops within a token or two."""
    server, admin, _, _ = served
    host = server.hosts["toy"]
    _, _, world = load_toy_model()
    prompt = " ".join(world.symbols[:40] + world.symbols[:2])  # induction carries the copy on
    assert len(admin.generate("toy", prompt, max_tokens=60).token_ids) > 20  # long enough to cut short
    forwards = []

    def slow(*_: object) -> None:
        forwards.append(time.monotonic())
        time.sleep(0.05)

    hook = host.model.register_forward_pre_hook(slow)
    try:
        stream = admin.stream("toy", prompt, max_tokens=60)
        next(iter(stream))
        stream.cancel()
        cancelled_at = time.monotonic()
        time.sleep(1.0)
    finally:
        hook.remove()
    assert len([t for t in forwards if t > cancelled_at]) <= 2
    assert len(forwards) <= 5  # the first token was streamed as soon as it existed


def test_an_unexpected_failure_is_internal_with_an_incident_id_and_no_internals(served_inline, caplog) -> None:
    server, admin, _, _ = served_inline
    host = server.hosts["toy"]

    def broken(*_: object) -> None:
        raise RuntimeError("secret internal detail")

    hook = host.model.register_forward_pre_hook(broken)
    try:
        for call in (
            lambda: admin.generate("toy", "the food was"),
            lambda: admin.inference.Score(pb.ScoreRequest(model="models/toy", prompt="a", continuations=["b"])),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            incident = re.search(r"incident ([0-9a-f]{8})", caught.value.details()).group(1)
            assert "secret" not in caught.value.details()
            assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        hook.remove()
    assert admin.generate("toy", "the food was", max_tokens=2).finish_reason in ("length", "eos")


def test_score_and_compare_limits_and_batching(served) -> None:
    server, admin, _, _ = served
    host = server.hosts["toy"]
    _, _, world = load_toy_model()
    long = " ".join(world.symbols[:40] * 4)
    score = pb.ScoreRequest(model="models/toy", prompt="the food was", continuations=["good", long])
    with pytest.raises(grpc.RpcError) as caught:
        admin.inference.Score(score)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "continuations[1]" in caught.value.details()
    too_many = pb.CompareVersionsRequest(
        base="models/toy/versions/0", candidate="models/toy/versions/0", prompts=["the food was"] * 1025
    )
    assert _code(lambda: admin.versions.CompareVersions(too_many)) == grpc.StatusCode.INVALID_ARGUMENT
    direction = torch.randn(128, generator=torch.Generator().manual_seed(0))
    steer = Steering(site="blocks.1.hook_resid_post", vector=direction, scale=3.0)
    version = admin.create_version("toy", 0, append=[admin.create_edit("toy", steer).id]).number
    prompts = [f.canonical_prompt for f in world.facts[:40]]  # two batches of different padded widths
    together = host.compare(0, version, prompts)
    alone = [host.compare(0, version, [p])[0] for p in prompts]
    assert [row[0] for row in together] == prompts
    for joint, single in zip(together, alone, strict=True):
        assert joint[2:] == single[2:] and joint[1] == pytest.approx(single[1], rel=1e-4, abs=1e-6)
    assert max(row[1] for row in together) > 0.01


def test_a_llama_model_without_a_pad_token_serves_generate_score_and_compare(db_url, tmp_path) -> None:
    """Another architecture end to end over gRPC: a tiny random Llama with a word-level tokenizer
    that, like Llama's, has no pad token."""
    from tests.conftest import save_tiny_llama

    save_tiny_llama(tmp_path / "llama")
    assert AutoTokenizer.from_pretrained(tmp_path / "llama").pad_token is None
    config = ServerConfig(
        models={"llama": str(tmp_path / "llama")}, address="127.0.0.1:0", database_url=db_url, metrics_address=None
    )
    server = ScalpelServer(config)
    server.load_models()
    _, secret = server.registry.create_key("admin", "admin", "bootstrap")
    client = ScalpelClient(f"127.0.0.1:{server.port}", secret)
    try:
        direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
        steer = Steering(site="blocks.1.hook_resid_pre", vector=direction, scale=5.0)
        version = client.create_version("llama", 0, append=[client.create_edit("llama", steer).id]).number
        base = client.generate("llama", "w1 w2 w3", version=0, max_tokens=5)
        steered = client.generate("llama", "w1 w2 w3", version=version, max_tokens=5)
        assert base.version.endswith("/0") and steered.version.endswith(f"/{version}")
        assert (
            base.finish_reason in ("length", "eos")
            and base.text == client.generate("llama", "w1 w2 w3", version=0, max_tokens=5).text
        )
        scores = client.inference.Score(
            pb.ScoreRequest(model="models/llama", prompt="w1 w2", continuations=["w3", "w4 w5"])
        )
        assert len(scores.logprobs) == 2 and all(lp < 0 for lp in scores.logprobs)
        comparison = client.versions.CompareVersions(
            pb.CompareVersionsRequest(
                base="models/llama/versions/0",
                candidate=f"models/llama/versions/{version}",
                prompts=["w1 w2 w3", "w4", "w5 w6 w7 w8 w9"],  # different lengths: padded
            )
        )
        assert comparison.prompts == 3 and comparison.kl_max > 0
    finally:
        client.close()
        server.stop(grace=0)


def test_a_second_server_on_a_taken_port_fails_to_start(served, db_url) -> None:
    """gRPC would share the port (SO_REUSEPORT) and silently split traffic; we refuse instead."""
    server, admin, _, _ = served
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        ScalpelServer(ServerConfig(address=f"127.0.0.1:{server.port}", database_url=db_url, metrics_address=None))
    assert admin.alias("toy").version == 0  # the first server is unaffected


def test_compute_rome_streams_its_progress_then_the_edit(served) -> None:
    _, admin, _, _ = served
    request = pb.ComputeRomeRequest(
        parent="models/toy",
        prompt="The capital of {} is",
        subject="Riia",
        target="Pimir",
        hparams_json=json.dumps({"steps": 10, "early_stop_nll": 0}),
        request_id="streamed-rome",
    )
    updates = list(admin.edits.ComputeRomeStream(request))
    steps = [u for u in updates if u.stage == "optimisation"]
    assert [u.done for u in steps] == list(range(1, 11)) and all(u.total == 10 for u in steps)
    assert steps[-1].target_nll < steps[0].target_nll  # the optimisation made the target likelier
    assert all(u.stage in ("covariance", "optimisation") for u in updates[:-1])
    final = updates[-1]
    assert final.stage == "done" and final.edit.kind == "low_rank" and final.converged
    again = list(admin.edits.ComputeRomeStream(request))[-1]  # a retried request_id: the same edit
    assert again.edit.id == final.edit.id


def test_every_call_leaves_one_access_log_line_with_its_caller_and_never_a_secret(served, caplog) -> None:
    import logging

    server, _, _, address = served
    _, secret = server.registry.create_key("logged", "reader", "test")
    caplog.set_level(logging.INFO, logger="scalpel.access")
    with ScalpelClient(address, secret) as client:
        client.generate("toy", "The capital of Riia is", max_tokens=2)
        assert _code(lambda: client.alias("toy", "nope")) == grpc.StatusCode.NOT_FOUND
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "scalpel.access"]
    generate = next(line for line in lines if line["method"] == "Generate")
    assert generate["code"] == "OK" and generate["caller"] == "logged" and generate["model"] == "toy"
    assert generate["ms"] > 0
    missing = next(line for line in lines if line["method"] == "GetAlias")
    assert missing["code"] == "NOT_FOUND" and missing["caller"] == "logged"
    assert secret not in caplog.text


def test_edits_and_aliases_are_listed_newest_first_in_pages(served, capsys, monkeypatch) -> None:
    from service.cli.main import main

    server, admin, reader, address = served
    made = [
        admin.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.randn(128), scale=s)).id
        for s in (1.0, 2.0, 3.0)
    ]
    first = reader.edits.ListEdits(pb.ListEditsRequest(parent="models/toy", page_size=2))
    assert [e.id for e in first.edits] == made[:0:-1] and first.next_page_token
    rest = reader.edits.ListEdits(pb.ListEditsRequest(parent="models/toy", page_token=first.next_page_token))
    assert [e.id for e in rest.edits] == [made[0]] and not rest.next_page_token
    admin.promote("toy", 0, alias="staging")
    aliases = reader.aliases.ListAliases(pb.ListAliasesRequest(parent="models/toy")).aliases
    assert {a.name: a.version for a in aliases} == {"models/toy/aliases/staging": 0, "models/toy/aliases/production": 0}
    assert _code(lambda: reader.aliases.ListAliases(pb.ListAliasesRequest(parent="models/nope"))) == (
        grpc.StatusCode.NOT_FOUND
    )
    _, secret = server.registry.create_key("lister", "reader", "test")
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", secret)
    assert main(["aliases", "list"]) == 0 and "models/toy/aliases/staging" in capsys.readouterr().out
    assert main(["edits", "list", "--json"]) == 0
    assert [int(e["id"]) for e in json.loads(capsys.readouterr().out)["edits"]] == made[::-1]


def test_an_alias_deleted_over_the_api_stops_serving_at_once(served, capsys, monkeypatch) -> None:
    from service.cli.main import main

    server, admin, reader, address = served
    admin.promote("toy", 0, alias="canary")
    assert admin.generate("toy", "The capital of Riia is", alias="canary", max_tokens=2).version.endswith("/0")
    assert _code(lambda: reader.delete_alias("toy", "canary")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: admin.delete_alias("toy", "production")) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(lambda: admin.delete_alias("toy", "canary", etag="stale")) == grpc.StatusCode.ABORTED
    _, secret = server.registry.create_key("operator", "approver", "test")
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", secret)
    assert main(["aliases", "delete", "canary", "--reason", "canary over"]) == 0
    assert "deleted alias 'canary'" in capsys.readouterr().out
    # this replica's cache forgot it: no request can still reach the deleted alias
    assert _code(lambda: admin.generate("toy", "The capital of Riia is", alias="canary")) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: admin.alias("toy", "canary")) == grpc.StatusCode.NOT_FOUND
    assert main(["aliases", "delete", "canary"]) == 2  # already gone: one line, exit 2
    assert "does not exist" in capsys.readouterr().err
    event = admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(action="alias.deleted")).events[0]
    assert (event.actor, event.subject) == ("operator", "models/toy/aliases/canary")
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'scalpel_active_version{alias="canary"' not in body
    assert 'scalpel_active_version{alias="production",model="toy"}' in body


def _http_status(server: ScalpelServer, secret: str) -> int:
    """The gateway's answer to GET /v1/models with ``secret``."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_verified_key_is_trusted_for_key_cache_seconds_and_a_revocation_here_counts_at_once(
    db_url, monkeypatch
) -> None:
    """One database read per key per ``key_cache_seconds``; a revocation through this replica
    refuses the key on its next call, one made elsewhere (another replica, the CLI) once the
    window has passed, and with 0 on the very next call."""
    elsewhere = Registry(db_url)  # another replica, or `scalpel keys revoke`, on the same database
    servers = []
    for seconds in (3600.0, 0.0):
        config = ServerConfig(
            address="127.0.0.1:0",
            database_url=db_url,
            metrics_address=None,
            models={},
            key_cache_seconds=seconds,
            http_address="127.0.0.1:0",  # the OpenAI-compatible gateway shares the cache
        )
        servers.append(ScalpelServer(config))
    cached, strict = servers
    checks: list[str] = []
    real = cached.registry.verify_key
    monkeypatch.setattr(cached.registry, "verify_key", lambda secret: checks.append(secret) or real(secret))
    keys = {name: elsewhere.create_key(name, "admin", "test")[1] for name in ("a", "b", "c")}
    clients = {name: ScalpelClient(f"127.0.0.1:{cached.port}", secret) for name, secret in keys.items()}
    try:
        for _ in range(5):
            clients["a"].models.ListModels(pb.ListModelsRequest())
        assert checks == [keys["a"]]  # verified once, then trusted
        elsewhere.revoke_key("a", "test")
        clients["a"].models.ListModels(pb.ListModelsRequest())  # within its window: still trusted here
        clients["c"].models.ListModels(pb.ListModelsRequest())
        assert _http_status(cached, keys["c"]) == 200
        clients["b"].keys.RevokeKey(pb.RevokeKeyRequest(name="c"))  # through this replica
        assert _code(lambda: clients["c"].models.ListModels(pb.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
        assert _http_status(cached, keys["c"]) == 401
        # the revocation here also dropped what was trusted before it: "a" is checked again, and refused
        assert _code(lambda: clients["a"].models.ListModels(pb.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
        with ScalpelClient(f"127.0.0.1:{strict.port}", keys["b"]) as b:
            b.models.ListModels(pb.ListModelsRequest())
            elsewhere.revoke_key("b", "test")
            assert _code(lambda: b.models.ListModels(pb.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(ValueError, match="key_cache_seconds"):
            ScalpelServer(ServerConfig(address="127.0.0.1:0", database_url=db_url, models={}, key_cache_seconds=-1))
    finally:
        for client in clients.values():
            client.close()
        for server in servers:
            server.stop(grace=0)


def test_a_checkpoint_over_grpc_verifies_later_and_catches_a_forged_tail(served, capsys, monkeypatch, tmp_path) -> None:
    """`scalpel audit checkpoint` keeps a signed head outside the database; `verify --checkpoint`
    passes while the log grows and fails, naming the event, once a database writer forges one."""
    from service.cli.main import main
    from service.registry.audit import event_hash

    server, admin, _, address = served
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    _, secret = server.registry.create_key("auditor", "reader", "test")
    monkeypatch.setenv("SCALPEL_API_KEY", secret)
    kept = tmp_path / "head.json"
    assert main(["audit", "checkpoint", "--out", str(kept), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    checkpoint = json.loads(kept.read_text())
    assert checkpoint["key_id"] == server.registry.audit_keys.key_id == written["key_id"]
    admin.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128), scale=1.0))
    assert main(["audit", "verify", "--checkpoint", str(kept), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    with server.registry.engine.begin() as connection:  # a database writer appends an event with a valid hash
        seq, prev = connection.execute(text("SELECT seq, hash FROM audit_head")).one()
        row = dict(
            seq=seq + 1,
            created_at="2026-12-07T00:00:00.000000Z",
            actor="admin",
            action="key.created",
            subject="keys/mallory",
            payload_json="{}",
            prev_hash=prev,
        )
        row["hash"] = event_hash(*row.values())
        connection.execute(
            text(
                "INSERT INTO audit_events (seq, created_at, actor, action, subject, payload_json, prev_hash, hash) "
                "VALUES (:seq, :created_at, :actor, :action, :subject, :payload_json, :prev_hash, :hash)"
            ),
            row,
        )
        connection.execute(text("UPDATE audit_head SET seq = :seq, hash = :hash"), row)
    assert main(["audit", "verify", "--checkpoint", str(kept), "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["ok"] is False and f"event {seq + 1}" in failed["problem"] and "not signed" in failed["problem"]
    assert any(f"audit event {seq + 1} (key.created)" in line for line in failed["mismatches"])  # named, no crash
    assert main(["audit", "checkpoint", "--out", str(tmp_path / "again.json")]) == 1  # no checkpoint of a forgery
    assert not (tmp_path / "again.json").exists()
    assert (
        _code(
            lambda: admin.create_edit(
                "toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128), scale=2.0)
            )
        )
        == grpc.StatusCode.DATA_LOSS
    )
    kept.write_text(kept.read_text().replace(checkpoint["hash"], "0" * 64))
    assert main(["audit", "verify", "--checkpoint", str(kept)]) == 1
    assert "does not verify" in capsys.readouterr().err


def test_an_alias_row_changed_in_the_database_is_refused_by_every_replica(served) -> None:
    """As a rewritten version, edit or run is: DATA_LOSS through the alias, here and on a replica
    that reads the row afresh, until a move through the API writes row and event together again."""
    from service.aliases import AliasCache

    server, admin, reader, _ = served
    edit = admin.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128), scale=1.0))
    version = admin.create_version("toy", parent=0, append=[edit.id]).number
    assert reader.generate("toy", "The capital of Riia is", max_tokens=2).version.endswith("/0")
    with server.registry.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE aliases SET version_id = (SELECT id FROM versions WHERE number = :n) WHERE name = 'production'"
            ),
            {"n": version},
        )
    server.aliases.refresh()  # what the poll (SQLite) or the NOTIFY re-read (PostgreSQL) does next
    with pytest.raises(grpc.RpcError) as refused:
        reader.generate("toy", "The capital of Riia is", max_tokens=2)
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS and "outside Scalpel" in refused.value.details()
    assert reader.generate("toy", "The capital of Riia is", max_tokens=2, version=0).version.endswith("/0")
    elsewhere = AliasCache(server.registry, poll_seconds=0.2)  # another replica, starting now
    with pytest.raises(ArtifactIntegrityError, match="audit log last moved it to 0"):
        elsewhere.version("toy", "production")
    admin.promote("toy", 0, force=True, reason="restore the row the database lost")
    assert reader.generate("toy", "The capital of Riia is", max_tokens=2).version.endswith("/0")
    elsewhere.refresh()
    assert elsewhere.version("toy", "production") == 0
    elsewhere.close()


def test_queued_runs_stay_alive_and_runs_cut_by_a_stop_end_interrupted(db_url) -> None:
    """Issue 37, defect 4: runs waiting for the one worker keep their claim fresh, so the sweep
    leaves them alone; a stop mid-run ends runs `interrupted` (rerun them), never `failed`."""
    config = ServerConfig(
        address="127.0.0.1:0", database_url=db_url, metrics_address=None, device=TEST_DEVICE, stale_run_seconds=2.0
    )
    server = ScalpelServer(config)
    server.load_models()
    _, secret = server.registry.create_key("admin", "admin", "bootstrap")
    client = ScalpelClient(f"127.0.0.1:{server.port}", secret)
    try:
        with scheduler_held(server.hosts["toy"]):  # the first run waits on the model, the others in the queue
            runs = [client.checks.StartRun(pb.StartRunRequest(version="models/toy/versions/0")).id for _ in range(3)]
            time.sleep(config.stale_run_seconds + 0.5)  # every start is now older than the sweep's window
            assert server.registry.interrupt_stale_runs("sweep", config.stale_run_seconds) == []
            with server.registry.engine.connect() as connection:
                beats = connection.execute(
                    text("SELECT heartbeat_at > started_at FROM check_runs WHERE id IN (:a, :b, :c)"),
                    dict(zip("abc", runs, strict=True)),
                ).scalars()
                assert all(beats)  # queued ones too
    finally:
        client.close()
        server.stop(grace=0)
    for _ in range(600):  # the worker records the cut run after the stop returns (each read its own
        ended = [server.registry.get_check_run(run) for run in runs]  # transaction: no lock held between)
        if all(run.state != "running" for run in ended):
            break
        time.sleep(0.1)
    for run in ended:
        assert run.state in ("interrupted", "passed"), run
        if run.state == "interrupted":
            assert "SchedulerClosed" in json.dumps(run.results)
    assert any(run.state == "interrupted" for run in ended)
    server.registry.engine.dispose()


def test_the_client_stamps_every_create_so_a_resent_request_returns_the_first(served, toy) -> None:
    """Issue 37, defect 5: a request built by hand on the client's stubs (no request_id) still
    carries one, so gRPC's retry on UNAVAILABLE, which resends the same bytes, makes nothing twice."""
    server, admin, _, _ = served
    steer = pb.DeriveSteeringRequest(parent="models/toy", layer=1, scale=1.0)
    for positive, negative in sentiment_pairs(toy[2])[:4]:
        steer.pairs.add(positive=positive, negative=negative)
    made = {
        "run": admin.checks.StartRun(pb.StartRunRequest(version="models/toy/versions/0")).id,
        "steering": admin.edits.DeriveSteering(steer).id,
    }
    with server.registry.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT operation, result_id, request_id FROM idempotency_keys WHERE actor = 'admin'")
        ).all()
    stamped = {(operation, result): request_id for operation, result, request_id in rows}
    run_id, steering_id = stamped[("start_check_run", made["run"])], stamped[("create_edit", made["steering"])]
    assert run_id != steering_id  # each create got an id of its own, which the caller never set
    resent_run = pb.StartRunRequest(version="models/toy/versions/0", request_id=run_id)
    assert admin.checks.StartRun(resent_run).id == made["run"]  # what a retry of those bytes gets
    steer.request_id = steering_id
    assert admin.edits.DeriveSteering(steer).id == made["steering"]
