"""The end-to-end demo: the service on SQLite with the toy model, driven over gRPC.

Every step checks that it behaved as described; the demo exits non-zero at the first that did
not. It uses ``$SCALPEL_DATA_DIR`` (default ``~/.local/share/scalpel``) for its database and
caches, so a fresh directory gives a fresh demo.
"""

from __future__ import annotations

import json

import grpc
from tqdm import tqdm

from editors.toyworld import SUCCESSOR_MODEL_DIR, TOY_SAE_DIR, WORLD_FILE, World, load_toy_model
from editors.toyworld.locate_pairs import INDUCTION_METRIC, SENTIMENT_METRIC, induction_pairs, sentiment_pairs
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.cli.check_report import verdict_word
from service.cli.drift_report import drift_lines, summary_line
from service.client import ScalpelClient
from service.db.engine import database_url
from service.db.migrate import upgrade
from service.server import ScalpelServer, ServerConfig


class DemoFailure(SystemExit):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(f"demo step did not behave as described: {message}")


def step(title: str) -> None:
    print(f"\n== {title}")


def run_checks(client: ScalpelClient, version: int, model: str = "toy") -> pb.CheckRun:
    run = client.checks.StartRun(pb.StartRunRequest(version=f"models/{model}/versions/{version}"))
    bar = tqdm(total=1, desc=f"  checks on version {version}", unit="check", leave=False, disable=None)
    final = None
    for update in client.checks.WatchRun(pb.GetRunRequest(id=run.id)):
        if update.total:
            bar.total = update.total
            bar.n = update.done
            bar.set_postfix_str(update.current)
            bar.refresh()
        if update.HasField("run"):
            final = update.run
    bar.close()
    expect(final is not None, "the check-run stream ended without the finished run")
    for result in final.results:
        mark = f"{verdict_word(result):<4}"
        interval = f"{result.metric:.4f} [{result.ci_low:.4f}, {result.ci_high:.4f}]"
        print(f"  {mark} {result.name:<20} {interval:<26} {result.comparison} {result.threshold:<5g} ({result.rule})")
    return final


def run_demo() -> None:
    url = database_url()
    upgrade("head", url)
    server = ScalpelServer(ServerConfig(address="127.0.0.1:0", database_url=url, metrics_address=None))
    try:
        server.load_models()
        _, secret = server.registry.create_key(f"demo-{server.port}", "admin", "demo")
        with ScalpelClient(f"127.0.0.1:{server.port}", secret) as client:
            _walk_through(client)
    finally:
        server.stop(grace=1)
    print("\nevery step behaved as described")


def _toy_sae(client: ScalpelClient) -> pb.Sae:
    """The committed toy SAE as ``models/toy/saes/resid1`` (registered by an earlier demo run, or now)."""
    try:
        return client.features.GetSae(pb.GetSaeRequest(name="models/toy/saes/resid1"))
    except grpc.RpcError as missing:
        if missing.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return client.create_sae("toy", "resid1", TOY_SAE_DIR, description="demo: the toy SAE")


def _sentiment_gap(client: ScalpelClient, pairs: list, version: int) -> float:
    """Mean log-probability gap, answer over wrong, after the positive prompts under ``version``."""
    gaps = []
    for pair in pairs:
        scored = client.inference.Score(
            pb.ScoreRequest(
                model="models/toy",
                selector=pb.VersionSelector(version=version),
                prompt=pair.clean,
                continuations=[" " + pair.answer, " " + pair.wrong],
            )
        ).logprobs
        gaps.append(scored[0] - scored[1])
    return sum(gaps) / len(gaps)


def _feature_step(client: ScalpelClient, world: World) -> None:
    step("7. features, not neurons: find the sentiment features in the toy SAE, cut them, check, gate")
    sae = _toy_sae(client)
    found = client.search_features("toy", "resid1", " ".join(world.positive_words), top=1).features[0]
    print(f"  {sae.name}: {sae.architecture}, {sae.d_sae} features at {sae.site}")
    print(f"  search {'/'.join(world.positive_words[:3])}/…: feature {found.feature} fires on "
          f"{', '.join(found.tokens)} in {found.contexts_matched}/{found.contexts} of its top contexts")  # fmt: skip
    expect(found.contexts_matched == found.contexts, "the positive-word feature is found by its words")
    pairs = sentiment_pairs(world, 48)
    located = None
    for update in client.edits.DiscoverCircuit(
        pb.DiscoverCircuitRequest(
            parent="models/toy",
            pairs=[pb.LocatePair(clean=p.clean, corrupted=p.corrupted, answer=p.answer, wrong=p.wrong) for p in pairs],
            metric=SENTIMENT_METRIC.kind,
            kinds=["features"],
            sae=sae.name,
            propose="feature_ablation",
            description="demo: cut the features that carry a sentence's sentiment to the next",
        )
    ):
        located = update.circuit if update.stage == "done" else None
    expect(
        located is not None and len(located.proposed) == 1, "DiscoverCircuit ends with the feature circuit and its cut"
    )
    cut = json.loads(located.proposed[0].spec_json)["params"]
    print(f"  feature circuit: {len(located.nodes)} nodes ({', '.join(located.nodes[:4])}, …), held-out "
          f"faithfulness {located.faithfulness:.2f}, completeness {located.completeness:.2f}")  # fmt: skip
    print(f"  the cut: {len(cut['features'])} features zero-ablated, removing "
          f"{cut['provenance']['cut']['removed_share']:.0%} of the behaviour")  # fmt: skip
    expect(located.faithfulness >= 0.8, "the feature circuit keeps the behaviour on held-out pairs")
    version = client.create_version("toy", 0, append=[located.proposed[0].id], description="demo: sentiment cut")
    before, after = _sentiment_gap(client, pairs[:8], 0), _sentiment_gap(client, pairs[:8], version.number)
    print(f"  version {version.number}: after a positive sentence, log p(positive) − log p(negative) "
          f"{before:.2f} → {after:.2f}")  # fmt: skip
    expect(after < before, "the cut weakens the carried sentiment")
    run = run_checks(client, version.number)
    expect(
        all(r.passed for r in run.results if r.name in ("fact_recall", "induction")),
        "a sentiment cut leaves fact recall and induction alone",
    )
    try:  # the gate: the run's verdict decides, whatever side effects the 19 features' cut had
        client.promote("toy", version.number, reason="demo: the sentiment feature cut")
    except grpc.RpcError as refused:
        expect(run.state == "failed" and refused.code() == grpc.StatusCode.FAILED_PRECONDITION, "refused if failed")
        print(f"  promotion refused: {refused.details().split(' and alias')[0]}")
    else:
        expect(run.state == "passed", "promoted only if passed")
        print(f"  promoted: version {version.number} passed its checks")
        client.rollback("toy", reason="demo: back to the base before the successor arrives")


def _walk_through(client: ScalpelClient) -> None:
    _, _, world = load_toy_model()
    fact = world.facts_for("capital")[0]
    new_capital = next(o for o in world.objects("capital") if o != fact.object)

    step("1. generate from the base model")
    base = client.generate("toy", fact.canonical_prompt, version=0, max_tokens=1)
    print(f"  {fact.canonical_prompt!r} → {base.text.strip()!r}   [{base.version}]")
    expect(base.text.strip() == fact.object and base.version == "models/toy/versions/0", "base answer")
    production = client.alias("toy").version

    step(f"2. a ROME edit: {fact.subject}'s capital becomes {new_capital}")
    edit = client.edits.ComputeRome(
        pb.ComputeRomeRequest(
            parent="models/toy",
            prompt="The capital of {} is",
            subject=fact.subject,
            target=new_capital,
            description="demo fact edit",
        )
    )
    version = client.create_version("toy", production, append=[edit.id], description="demo: ROME")
    print(f"  edit {edit.id} ({edit.kind}, rank one) → version {version.number} ({version.status})")

    step("3. run the regression checks")
    run = run_checks(client, version.number)
    expect(run.state == "passed", f"the ROME version's checks should pass, got {run.state}")

    step("4. promote it and serve the new fact")
    client.promote("toy", version.number, reason="demo fact edit passed its checks")
    served = client.generate("toy", fact.canonical_prompt, max_tokens=1)
    print(f"  {fact.canonical_prompt!r} → {served.text.strip()!r}   [{served.version}]")
    expect(
        served.text.strip() == new_capital and served.version == f"models/toy/versions/{version.number}",
        "the promoted version serves the new fact and names itself",
    )

    step("5. locate the induction circuit, cut it: its checks fail and promotion is refused")
    pairs = [pb.LocatePair(clean=p.clean, corrupted=p.corrupted) for p in induction_pairs(world, 48)]
    located = None
    for update in client.edits.DiscoverCircuit(
        pb.DiscoverCircuitRequest(
            parent="models/toy",
            pairs=pairs,
            metric=INDUCTION_METRIC.kind,
            score_from=INDUCTION_METRIC.score_from,
            kinds=["heads"],
            propose="ablation",
            description="demo: cut the induction circuit",
        )
    ):
        located = update.circuit if update.stage == "done" else None
    expect(located is not None and len(located.proposed) > 0, "DiscoverCircuit ends with the circuit and its cut")
    cut = json.loads(located.proposed[0].spec_json)["params"]["provenance"]["cut"]
    print(
        f"  circuit {', '.join(located.nodes)}: held-out faithfulness {located.faithfulness:.2f}, "
        f"completeness {located.completeness:.2f} ({located.passes} passes); the cut: {', '.join(cut['nodes'])}"
    )
    expect(located.faithfulness >= 0.9, "the located circuit keeps the behaviour on held-out pairs")
    ablated = client.create_version(
        "toy",
        version.number,
        append=[edit.id for edit in located.proposed],
        description="demo: cut the induction circuit",
    )
    run = run_checks(client, ablated.number)
    expect(
        run.state == "failed" and any(r.name == "induction" and not r.passed for r in run.results),
        "the ablation fails the induction floor",
    )
    try:
        client.promote("toy", ablated.number)
    except grpc.RpcError as refused:
        expect(refused.code() == grpc.StatusCode.FAILED_PRECONDITION, f"refusal code {refused.code()}")
        print(f"  promotion refused: {refused.details()}")
    else:
        expect(False, "promotion of a failed version was accepted")

    step("6. roll back to the base")
    back = client.rollback("toy", reason="demo over")
    again = client.generate("toy", fact.canonical_prompt, max_tokens=1)
    print(f"  production → version {back.version}; {fact.canonical_prompt!r} → {again.text.strip()!r}")
    expect(back.version == production and again.text.strip() == fact.object, "rollback restores the old answer")

    _feature_step(client, world)

    step("8. a successor checkpoint arrives: rebase the fact edit's version onto it")
    successor = client.load_model("toy-v2", str(SUCCESSOR_MODEL_DIR))
    client.register_successor("toy-v2", "toy")
    new_world = World.load(SUCCESSOR_MODEL_DIR / WORLD_FILE)
    moved = sum(new.object != old.object for new, old in zip(new_world.facts, world.facts, strict=True))
    print(f"  {successor.name} loaded: the toy model trained on with {moved} capitals moved; its predecessor: toy")
    unrebased = client.generate("toy-v2", fact.canonical_prompt, version=0, max_tokens=1)
    rebase = client.rebase_version("toy", version.number, "toy-v2", description="demo: the fact edit, rebased")
    print(f"  {summary_line(rebase)}")
    for line in drift_lines(rebase):
        print(f"    {line}")
    rebased = rebase.version.number
    expect(rebase.summary.fact_edits_held == rebase.summary.fact_edits == 1, "the fact edit holds on the successor")
    run = run_checks(client, rebased, "toy-v2")
    expect(run.state == "passed", f"the rebased version's checks should pass, got {run.state}")
    client.promote("toy-v2", rebased, reason="demo: the fact edit, rebased, passed its checks")
    served = client.generate("toy-v2", fact.canonical_prompt, max_tokens=1)
    print(
        f"  toy-v2 {fact.canonical_prompt!r}: base → {unrebased.text.strip()!r}, "
        f"production → {served.text.strip()!r}   [{served.version}]"
    )
    expect(served.text.strip() == new_capital, "the successor's production version serves the edited fact")

    step("9. the audit history, and its hash chain verified")
    events = client.audit.ListAuditEvents(pb.ListAuditEventsRequest(page_size=8)).events
    for event in events:
        print(
            f"  #{event.seq:<4} {event.time}  {event.actor:<16} {event.action:<18} {event.subject}"
            f"  {json.loads(event.payload_json).get('to', '')}"
        )
    verdict = client.audit.VerifyAudit(pb.VerifyAuditRequest())
    print(f"  chain of {verdict.events_checked} events verified: {verdict.ok}")
    expect(verdict.ok, f"audit chain broken: {verdict.problem}")
