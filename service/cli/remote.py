"""Client commands of the ``scalpel`` CLI: every operation over gRPC, tables by default, ``--json``.

Connection: ``--address`` (or ``$SCALPEL_ADDRESS``, default 127.0.0.1:50051), ``--api-key``
(or ``$SCALPEL_API_KEY``), and for TLS ``--tls`` / ``--tls-ca`` (``$SCALPEL_TLS_CA``), with
``--tls-cert`` and ``--tls-key`` (``$SCALPEL_TLS_CERT`` / ``$SCALPEL_TLS_KEY``) where the server
requires client certificates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from editors.choices import CIRCUIT_KINDS, DEFAULT_NODE_KINDS, DIRECTIONS, EXPORT_FORMATS, METRICS, PROPOSALS
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.cli.check_report import find_browser, render_html, screenshot
from service.cli.checks import format_run, inline_item_files, run_dict
from service.cli.drift_report import drift_lines, held, render_drift_html, summary_line
from service.cli.errors import UsageError, read_yaml, require_empty_directory
from service.cli.feature_report import feature_dashboard
from service.cli.signing import audit_pubkey, audit_rotate_key, read_checkpoint, write_checkpoint
from service.client import ScalpelClient


def _client(args: argparse.Namespace) -> ScalpelClient:
    address = args.address or os.environ.get("SCALPEL_ADDRESS", "127.0.0.1:50051")
    ca, cert, key = (Path(p).read_bytes() if p else None for p in (args.tls_ca, args.tls_cert, args.tls_key))
    if (cert is None) != (key is None):
        raise SystemExit("scalpel: --tls-cert and --tls-key go together")
    return ScalpelClient(
        address,
        args.api_key or os.environ.get("SCALPEL_API_KEY"),
        root_certificates=ca,
        client_certificate=cert,
        client_key=key,
        tls=args.tls,
    )


def _print(args: argparse.Namespace, message: Any, columns: Sequence[str] = (), rows_field: str | None = None) -> None:
    """``--json``: the message as JSON; otherwise a table of ``columns`` (of each row, or of the message)."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if args.json:
        print(json.dumps(data))
        return
    rows = data.get(rows_field, []) if rows_field else [data]
    columns = list(columns) or sorted({key for row in rows for key in row})
    widths = {c: max([len(c), *(len(str(row.get(c, ""))) for row in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    if rows_field and data.get("next_page_token"):
        print(f"(more: --page-token {data['next_page_token']})")


def _edit_from_file(path: Path) -> Any:
    """An edit from a ``save_edit`` safetensors file, or YAML ``{kind, params, tensors: {name: list}}``."""
    import torch  # the commands that build edits load torch; the others start without it

    from editors import edit_from_parts, load_edit

    if path.suffix == ".safetensors":
        return load_edit(path)
    spec = read_yaml(path, "edit file")
    if not isinstance(spec, dict):
        raise UsageError(f"{path} must be a mapping {{kind, params, tensors}}; fix the edit file")
    tensors = {name: torch.tensor(values, dtype=torch.float32) for name, values in (spec.get("tensors") or {}).items()}
    return edit_from_parts(spec.get("kind"), spec.get("params") or {}, tensors)


def _models_list(args: argparse.Namespace, c: ScalpelClient) -> None:
    _print(
        args,
        c.models.ListModels(pb.ListModelsRequest(page_size=args.page_size, page_token=args.page_token)),
        ("name", "served", "device", "dtype", "source", "weights_sha256"),
        "models",
    )


def _models_load(args: argparse.Namespace, c: ScalpelClient) -> None:
    _print(args, c.load_model(args.name, args.source, args.device or "", args.dtype or ""), ("name", "device", "dtype"))


def _models_successor(args: argparse.Namespace, c: ScalpelClient) -> None:
    _print(args, c.register_successor(args.name, args.of), ("name", "predecessor", "weights_sha256"))


def _rebase(args: argparse.Namespace, c: ScalpelClient) -> int:
    """Rebase a version onto a successor (a progress bar per edit), then its drift report."""
    bar = tqdm(total=1, desc="rebase", unit="edit", disable=args.json or None)

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    rebase = c.rebase_version(args.model, args.version, args.onto, args.description, args.request_id, progress)
    bar.close()
    return _show_rebase(args, rebase)


def _versions_drift(args: argparse.Namespace, c: ScalpelClient) -> int:
    rebase = c.versions.GetRebase(pb.GetRebaseRequest(name=f"models/{args.model}/versions/{args.version}"))
    return _show_rebase(args, rebase)


def _show_rebase(args: argparse.Namespace, rebase: pb.Rebase) -> int:
    """The drift report as JSON or lines, and as an HTML page with ``--html``; exit status 1 when an
    edit was flagged or a fact edit lost efficacy (a person should look before promoting)."""
    if args.html:
        Path(args.html).write_text(render_drift_html(rebase))
    if args.json:
        print(json.dumps(MessageToDict(rebase, preserving_proto_field_name=True)))
    else:
        print(summary_line(rebase))
        for line in drift_lines(rebase):
            print(f"  {line}")
        if args.html:
            print(f"wrote {args.html}")
    lost = any(held(drift) is False for drift in rebase.drift)
    return 1 if rebase.summary.flagged or lost else 0


def _saes_create(args: argparse.Namespace, c: ScalpelClient) -> None:
    if not (Path(args.folder) / "cfg.json").is_file() or not (Path(args.folder) / "sae_weights.safetensors").is_file():
        raise UsageError(f"{args.folder} must hold SAELens's cfg.json and sae_weights.safetensors")
    sae = c.create_sae(args.model, args.name, args.folder, args.description)
    _print(args, sae, ("name", "site", "architecture", "d_sae", "sae_sha256"))


def _saes_list(args: argparse.Namespace, c: ScalpelClient) -> None:
    page = c.features.ListSaes(
        pb.ListSaesRequest(parent=f"models/{args.model}", page_size=args.page_size, page_token=args.page_token)
    )
    _print(args, page, ("name", "site", "architecture", "d_sae"), "saes")


def _features_inspect(args: argparse.Namespace, c: ScalpelClient) -> None:
    reply = c.inspect_features(args.model, args.sae, args.prompt, args.top, args.version)
    if args.json:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True)))
        return
    print(f"under {reply.version}:")
    for token in reply.tokens:
        fired = ", ".join(f"#{f.feature} {f.activation:.2f}" for f in token.features) or "none"
        print(f"  {token.position:>3} {token.token!r:<16} L0 {token.active:<3} error {token.error_norm:6.2f}  {fired}")


def _features_show(args: argparse.Namespace, c: ScalpelClient) -> None:
    card = c.get_feature(args.model, args.sae, args.feature, args.top, args.max_texts)
    if args.json:
        print(json.dumps(MessageToDict(card, preserving_proto_field_name=True)))
        return
    print(f"feature {card.feature} of {card.sae}: fires on {card.density:.2%} of tokens ({card.texts} texts), "
          f"max {card.max_activation:.3f}")  # fmt: skip
    for context in card.contexts:
        print(f"  {context.activation:7.3f}  …{context.text}")
    print("  raises: " + ", ".join(f"{e.token} {e.logit:+.3f}" for e in card.promoted))
    print("  lowers: " + ", ".join(f"{e.token} {e.logit:+.3f}" for e in card.suppressed))


def _features_search(args: argparse.Namespace, c: ScalpelClient) -> None:
    reply = c.search_features(args.model, args.sae, args.query, args.top, args.max_texts)
    if args.json:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True)))
        return
    print(f"{len(reply.features)} features match {args.query!r} ({reply.texts} texts indexed):")
    for m in reply.features:
        print(f"  #{m.feature:<6} score {m.score:.2f}  contexts {m.contexts_matched}/{m.contexts}  "
              f"raises {m.promoted_matched}/{m.promoted}  on {', '.join(m.tokens)}  "
              f"density {m.density:.2%}")  # fmt: skip


def _features_report(args: argparse.Namespace, c: ScalpelClient) -> None:
    features = list(args.features)
    if args.search:
        found = c.search_features(args.model, args.sae, args.search, args.top, args.max_texts)
        features += [m.feature for m in found.features]
    if not features:
        raise UsageError("name features to show (scalpel features report 12 40 …) or --search WORDS that finds some")
    sae = c.features.GetSae(pb.GetSaeRequest(name=f"models/{args.model}/saes/{args.sae}"))
    cards = [c.get_feature(args.model, args.sae, f, args.top, args.max_texts) for f in dict.fromkeys(features)]
    html = feature_dashboard(sae, cards, args.search)
    Path(args.html).write_text(html)
    if args.png:
        browser = find_browser()
        if browser is None:
            raise SystemExit("scalpel: --png needs Chromium (apt-get install chromium); the HTML was written")
        screenshot(html, Path(args.png), browser)
    written = {"html": args.html, "png": args.png, "features": len(cards)}
    print(json.dumps(written) if args.json else f"wrote {args.html}")


def _models_unload(args: argparse.Namespace, c: ScalpelClient) -> None:
    c.unload_model(args.name, args.force)
    print(json.dumps({"unloaded": f"models/{args.name}"}) if args.json else f"unloaded model {args.name!r}")


def _edits_create(args: argparse.Namespace, c: ScalpelClient) -> None:
    edit = c.create_edit(args.model, _edit_from_file(Path(args.file)), args.description, args.request_id)
    _print(args, edit, ("id", "kind", "spec_sha256", "author"))


def _edits_import_steering(args: argparse.Namespace, c: ScalpelClient) -> None:
    """Every vector is checked against the served model's shape before the first edit is made."""
    from editors.steering_files import as_edits, read_steering_file

    path = Path(args.file)
    layers = read_steering_file(path)
    model = c.models.GetModel(pb.GetModelRequest(name=f"models/{args.model}"))
    if not model.served:
        raise UsageError(f"model {args.model!r} is not served by this server: its shape is unknown here")
    edits = as_edits({layer: v * args.scale for layer, v in layers.items()}, (model.n_layers, model.d_model), path.name)
    made = [c.create_edit(args.model, one, args.description or f"imported from {path.name}") for one in edits]
    if args.json:
        print(json.dumps({"edits": [int(e.id) for e in made]}))
        return
    print(f"{len(made)} steering edits from {path.name}: " + ", ".join(str(e.id) for e in made))
    print(f"make a version with: scalpel versions create --append {' '.join(str(e.id) for e in made)}")


def _edits_rome(args: argparse.Namespace, c: ScalpelClient) -> None:
    request = pb.ComputeRomeRequest(
        parent=f"models/{args.model}",
        prompt=args.prompt,
        subject=args.subject,
        target=args.target,
        hparams_json=args.hparams,
        description=args.description,
        on_version=args.on_version,
    )
    final = _follow(c.edits.ComputeRomeStream(request), args.json)
    assert final is not None, "the stream ended without the edit"
    if not final.converged:
        print(
            "warning: the optimisation did not converge: the edit will likely not produce the target", file=sys.stderr
        )
    _print(args, final.edit, ("id", "kind", "spec_sha256", "author"))


def _follow(updates: Any, quiet: bool) -> Any:
    """Show a long call's progress stream as bars (one per stage); return its final message."""
    bar, stage, final = None, "", None
    for update in updates:  # the server's progress, as it goes
        if update.stage == "done":
            final = update
            continue
        if bar is None or stage != update.stage:
            if bar is not None:
                bar.close()
            bar, stage = tqdm(total=update.total, desc=update.stage, disable=quiet or None), update.stage
        bar.n = update.done
        if getattr(update, "target_nll", 0):
            bar.set_postfix_str(f"target NLL {update.target_nll:.3f}")
        bar.refresh()
    if bar is not None:
        bar.close()
    return final


def _edits_memit(args: argparse.Namespace, c: ScalpelClient) -> None:
    facts = read_yaml(Path(args.file), "facts file")
    fields = ("prompt", "subject", "target")
    if not isinstance(facts, list) or not all(isinstance(f, dict) and set(f) == set(fields) for f in facts):
        raise UsageError(f"{args.file} must be a YAML list of {{prompt, subject, target}}; fix the facts file")
    request = pb.ComputeMemitRequest(
        parent=f"models/{args.model}",
        facts=[pb.MemitFact(**{k: str(f[k]) for k in fields}) for f in facts],
        hparams_json=args.hparams,
        description=args.description,
        on_version=args.on_version,
    )
    final = _follow(c.edits.ComputeMemit(request), args.json)
    assert final is not None, "the stream ended without the edits"
    _print(args, final, ("id", "kind", "spec_sha256", "author"), "edits")


def _locate(args: argparse.Namespace, c: ScalpelClient) -> None:
    loaded = read_yaml(Path(args.file), "pairs file")
    fields = {"clean", "corrupted", "answer", "wrong"}
    if not isinstance(loaded, list) or not all(
        isinstance(p, dict) and {"clean", "corrupted"} <= set(p) <= fields for p in loaded
    ):
        raise UsageError(
            f"{args.file} must be a YAML list of {{clean, corrupted, answer, wrong}} (answer and wrong as the metric "
            "needs them); fix the pairs file (`scalpel toyworld pairs induction` writes one)"
        )
    request = pb.DiscoverCircuitRequest(
        parent=f"models/{args.model}",
        pairs=[pb.LocatePair(**{k: str(v) for k, v in p.items()}) for p in loaded],
        metric=args.metric,
        score_from=args.score_from,
        target=args.target,
        kinds=args.kinds,
        steps=args.steps,
        direction=args.direction,
        on_version=args.on_version,
        propose=args.propose or "",
        description=args.description,
        sae=f"models/{args.model}/saes/{args.sae}" if args.sae else "",
    )
    edges = args.kinds == ["edges"]
    if edges and args.png:
        raise UsageError("--png draws the heads' attribution: for edges, use --graph")
    final = _follow(c.edits.DiscoverCircuit(request), args.json)
    assert final is not None, "the stream ended without the circuit"
    circuit = final.circuit
    if edges and args.json:
        _print(args, circuit)
        return
    if edges and args.graph:
        _plot_edges(circuit, args.graph)
    if edges:
        print(f"circuit: {len(circuit.nodes)} edges: {', '.join(circuit.nodes)}")
        print(
            f"held out: faithfulness {circuit.faithfulness:.3f} [{circuit.faithfulness_low:.3f}, "
            f"{circuit.faithfulness_high:.3f}], completeness {circuit.completeness:.3f} "
            f"[{circuit.completeness_low:.3f}, {circuit.completeness_high:.3f}]; {circuit.passes} passes"
        )
        for score in circuit.ranked[: args.top]:
            print(f"  {score.name:<22} {score.estimate:+.4f}")
        return
    from editors.locate import Component
    from editors.locate_plots import plot_circuit, plot_head_attribution

    ranked = {Component.parse(s.name): s.estimate for s in circuit.ranked}
    if args.png:
        plot_head_attribution(ranked, args.png, f"attribution patching: {args.metric} ({args.file})")
    if args.graph:
        n_layers = 1 + max(c.layer for c in ranked)
        title = f"faithfulness {circuit.faithfulness:.2f}, completeness {circuit.completeness:.2f} (held out)"
        nodes = [Component.parse(name) for name in circuit.nodes]
        sign = -1 if args.direction == "noising" else 1  # importance: the metric lost when noised, gained when denoised
        plot_circuit(nodes, {c: sign * e for c, e in ranked.items()}, n_layers, args.graph, title)
    if args.json:
        _print(args, circuit)
        return
    print(f"circuit: {', '.join(circuit.nodes) or '(empty)'}")
    print(
        f"held out: faithfulness {circuit.faithfulness:.3f}, completeness {circuit.completeness:.3f} "
        f"(metric {circuit.metric_full:.3f} whole, {circuit.metric_empty:.3f} with every node ablated); "
        f"{circuit.passes} passes"
    )
    print("top components (estimated change of the metric when patched):")
    for score in circuit.ranked[: args.top]:
        print(f"  {score.name:<10} {score.estimate:+.4f}")
    for edit in circuit.proposed:
        print(f"proposed edit {edit.id} ({edit.kind}): add it to a version and run the checks")


def _plot_edges(circuit: pb.Circuit, path: str) -> None:
    """The circuit's edges drawn with their scores, the model's shape read off the edge names."""
    from editors.locate_plots import plot_edge_circuit

    score = {s.name: s.estimate for s in circuit.ranked}
    units = [unit for name in score for unit in name.replace("->", ".").split(".") if unit[1:].isdigit()]
    n_layers = 1 + max(int(u[1:]) for u in units if u.startswith("L"))
    n_heads = 1 + max((int(u[1:]) for u in units if u.startswith("H")), default=0)
    edges = [(*name.split("->"), score[name]) for name in circuit.nodes]
    title = (f"{len(edges)} edges: held-out faithfulness {circuit.faithfulness:.2f} "
             f"[{circuit.faithfulness_low:.2f}, {circuit.faithfulness_high:.2f}]")  # fmt: skip
    plot_edge_circuit(edges, n_layers, n_heads, path, title)


def _edits_steer(args: argparse.Namespace, c: ScalpelClient) -> None:
    loaded = read_yaml(Path(args.pairs), "pairs file")
    if not isinstance(loaded, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair) for pair in loaded
    ):
        raise UsageError(f"{args.pairs} must be a list of [positive, negative] text pairs; fix the pairs file")
    pairs = [pb.PromptPair(positive=p, negative=n) for p, n in loaded]
    request = pb.DeriveSteeringRequest(
        parent=f"models/{args.model}",
        pairs=pairs,
        layer=args.layer,
        method=args.method,
        scale=args.scale,
        description=args.description,
    )
    _print(args, c.edits.DeriveSteering(request), ("id", "kind", "spec_sha256", "author"))


def _compare(args: argparse.Namespace, c: ScalpelClient) -> None:
    request = pb.CompareVersionsRequest(
        base=f"models/{args.model}/versions/{args.base}",
        candidate=f"models/{args.model}/versions/{args.candidate}",
        prompts=args.prompt or [],
    )
    result = c.versions.CompareVersions(request)
    if not args.json:
        print(
            f"{result.prompts} prompts: KL mean {result.kl_mean:.4f}, max {result.kl_max:.4f}, "
            f"top-1 changed on {result.changed_top1:.1%}"
        )
    _print(args, result, ("prompt", "kl", "base_top1", "candidate_top1"), "worst")


def _suite(args: argparse.Namespace, c: ScalpelClient) -> None:
    if args.sub == "get":
        suite = c.checks.GetSuite(pb.GetSuiteRequest(model=f"models/{args.model}"))
    else:
        spec = inline_item_files(read_yaml(Path(args.file), "suite file"), Path(args.file).parent)
        suite = c.checks.SetSuite(pb.SetSuiteRequest(model=f"models/{args.model}", spec_json=json.dumps(spec)))
    _print(args, suite, ("model", "suite_sha256"))


def _score(args: argparse.Namespace, c: ScalpelClient) -> None:
    selector = (
        pb.VersionSelector(version=args.version) if args.version is not None else pb.VersionSelector(alias=args.alias)
    )
    result = c.inference.Score(
        pb.ScoreRequest(
            model=f"models/{args.model}", selector=selector, prompt=args.prompt, continuations=args.continuations
        )
    )
    if args.json:
        print(json.dumps({"version": result.version, "logprobs": list(result.logprobs)}))
        return
    for continuation, logprob in zip(args.continuations, result.logprobs, strict=True):
        print(f"{logprob:10.4f}  {continuation}")
    print(f"[{result.version}]")


def _versions_list(args: argparse.Namespace, c: ScalpelClient) -> None:
    request = pb.ListVersionsRequest(
        parent=f"models/{args.model}", page_size=args.page_size, page_token=args.page_token
    )
    _print(
        args,
        c.versions.ListVersions(request),
        ("number", "parent", "status", "edit_ids", "author", "description"),
        "versions",
    )


def _versions_create(args: argparse.Namespace, c: ScalpelClient) -> None:
    version = c.create_version(args.model, args.parent, args.append, args.remove, args.description)
    _print(args, version, ("number", "parent", "status", "edit_ids"))


def _versions_export(args: argparse.Namespace, c: ScalpelClient) -> None:
    out = require_empty_directory(Path(args.out))
    print_export(args, c.export_version(args.model, args.version, args.format, out))


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``scalpel export`` (against the database) and ``scalpel versions export`` (over gRPC) share."""
    parser.add_argument("version", type=int, help="the version number")
    parser.add_argument("--model", default="toy", help="the model's name (default: toy)")
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="merged",
        help="merged weights, a PEFT LoRA adapter, a llama.cpp/repeng control vector (gguf) or a safetensors "
        "per-layer dict of its steering vectors (default: merged)",
    )
    parser.add_argument("--out", required=True, help="a new (or empty) directory for the files")


def print_export(args: argparse.Namespace, hashes: dict[str, str]) -> None:
    """What an export wrote: each file and its SHA-256 (as recorded in the audit event)."""
    if args.json:
        print(json.dumps({"version": f"models/{args.model}/versions/{args.version}", "files": hashes}))
    else:
        print(f"exported models/{args.model}/versions/{args.version} as {args.format} to {args.out}:")
        for name, digest in hashes.items():
            print(f"  {name}  sha256 {digest}")


def _checks_run(args: argparse.Namespace, c: ScalpelClient) -> int:
    run = c.checks.StartRun(pb.StartRunRequest(version=f"models/{args.model}/versions/{args.version}"))
    bar = tqdm(total=1, desc=f"checks on version {args.version}", unit="check", disable=args.json or None)
    final = run
    for update in c.checks.WatchRun(pb.GetRunRequest(id=run.id)):
        if update.total:
            bar.total, bar.n = update.total, update.done
            bar.set_postfix_str(update.current)
        if update.HasField("run"):
            final = update.run
    bar.close()
    return _show_run(args, final)


def _show_run(args: argparse.Namespace, run: pb.CheckRun) -> int:
    print(json.dumps(run_dict(run)) if args.json else format_run(run))
    return 0 if run.state == "passed" else 1


def _checks_get(args: argparse.Namespace, c: ScalpelClient) -> int:
    return _show_run(args, c.checks.GetRun(pb.GetRunRequest(id=args.run)))


def _checks_report(args: argparse.Namespace, c: ScalpelClient) -> int:
    """One self-contained HTML page (and, with Chromium installed, a PNG of it) for a run."""
    run = c.checks.GetRun(pb.GetRunRequest(id=args.run))
    model = run.version.split("/")[1]
    version = c.versions.GetVersion(pb.GetVersionRequest(name=run.version))
    edits = [c.edits.GetEdit(pb.GetEditRequest(name=f"models/{model}/edits/{i}")) for i in version.edit_ids]
    html = render_html(run, edits)
    Path(args.html).write_text(html)
    if args.png:
        browser = find_browser()
        if browser is None:
            raise SystemExit("scalpel: --png needs Chromium (apt-get install chromium); the HTML was written")
        screenshot(html, Path(args.png), browser)
    print(json.dumps({"html": args.html, "png": args.png, "state": run.state}) if args.json else f"wrote {args.html}")
    return 0


def _checks_list(args: argparse.Namespace, c: ScalpelClient) -> None:
    parent = f"models/{args.model}" + (f"/versions/{args.version}" if args.version is not None else "")
    page = c.checks.ListRuns(pb.ListRunsRequest(parent=parent, page_size=args.page_size, page_token=args.page_token))
    if args.json:
        print(json.dumps({"runs": [run_dict(run) for run in page.runs], "next_page_token": page.next_page_token}))
        return
    print(f"{'ID':>6}  {'VERSION':<26}  {'STATE':<11}  {'SUITE':<12}  {'FAILED'}")
    for run in page.runs:
        failed = ", ".join(r.name for r in run.results if not r.passed)
        print(f"{run.id:>6}  {run.version:<26}  {run.state:<11}  {run.suite_sha256[:12]:<12}  {failed}")
    if page.next_page_token:
        print(f"(more: --page-token {page.next_page_token})")


def _promote(args: argparse.Namespace, c: ScalpelClient) -> None:
    _print(
        args,
        c.promote(args.model, args.version, args.alias, args.reason, args.force),
        ("name", "version", "etag", "updated_by"),
    )


def _rollback(args: argparse.Namespace, c: ScalpelClient) -> None:
    _print(
        args,
        c.rollback(args.model, args.alias, args.to, args.reason, args.force),
        ("name", "version", "etag", "updated_by"),
    )


def _history(args: argparse.Namespace, c: ScalpelClient) -> None:
    request = pb.ListAliasHistoryRequest(
        name=f"models/{args.model}/aliases/{args.alias}", page_size=args.page_size, page_token=args.page_token
    )
    _print(
        args,
        c.aliases.ListAliasHistory(request),
        ("action", "from_version", "to_version", "actor", "forced", "reason", "create_time"),
        "moves",
    )


def _edits_list(args: argparse.Namespace, c: ScalpelClient) -> None:
    request = pb.ListEditsRequest(parent=f"models/{args.model}", page_size=args.page_size, page_token=args.page_token)
    _print(args, c.edits.ListEdits(request), ("id", "kind", "spec_sha256", "author", "description"), "edits")


def _aliases_list(args: argparse.Namespace, c: ScalpelClient) -> None:
    request = pb.ListAliasesRequest(parent=f"models/{args.model}", page_size=args.page_size, page_token=args.page_token)
    _print(args, c.aliases.ListAliases(request), ("name", "version", "etag", "updated_by", "update_time"), "aliases")


def _aliases_delete(args: argparse.Namespace, c: ScalpelClient) -> None:
    c.delete_alias(args.model, args.alias, args.reason, args.etag)
    if args.json:
        print(json.dumps({"deleted": f"models/{args.model}/aliases/{args.alias}"}))
    else:
        print(f"deleted alias {args.alias!r} of model {args.model!r}")


def _audit_list(args: argparse.Namespace, c: ScalpelClient) -> None:
    request = pb.ListAuditEventsRequest(
        page_size=args.page_size, page_token=args.page_token, action=args.action, subject=args.subject, actor=args.actor
    )
    _print(args, c.audit.ListAuditEvents(request), ("seq", "time", "actor", "action", "subject"), "events")


def _audit_verify(args: argparse.Namespace, c: ScalpelClient) -> int:
    expect_head = args.expect_head or ""
    if args.checkpoint:
        head = read_checkpoint(Path(args.checkpoint))
        problem = head.problem()
        if problem:
            print(f"scalpel: the checkpoint {args.checkpoint} does not verify: {problem}", file=sys.stderr)
            return 1
        expect_head = f"{head.seq}:{head.hash}"
    result = c.audit.VerifyAudit(pb.VerifyAuditRequest(expect_head=expect_head))
    _print(
        args, result, ("ok", "events_checked", "first_broken_seq", "problem", "head_seq", "head_hash", "head_key_id")
    )
    return 0 if result.ok else 1


def _audit_checkpoint(args: argparse.Namespace, c: ScalpelClient) -> int:
    from service.registry.audit_keys import SignedHead

    result = c.audit.VerifyAudit(pb.VerifyAuditRequest())
    if not result.ok:
        print(f"scalpel: the audit log does not verify, no checkpoint written: {result.problem}", file=sys.stderr)
        return 1
    head = SignedHead(
        result.head_seq, result.head_hash, result.head_key_id, result.head_signature, result.head_public_key
    )
    problem = head.problem()
    if problem:
        print(f"scalpel: the server's signed head does not verify, no checkpoint written: {problem}", file=sys.stderr)
        return 1
    write_checkpoint(head, Path(args.out))
    shown = {"seq": head.seq, "hash": head.hash, "key_id": head.key_id, "file": args.out}
    print(json.dumps(shown) if args.json else f"checkpoint {head.seq}:{head.hash} (key {head.key_id}) → {args.out}")
    return 0


def _token_bias(text: str) -> tuple[int, float]:
    """``TOKEN=BIAS`` (``--logit-bias``) as a pair."""
    token, _, bias = text.partition("=")
    try:
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN=BIAS (a token id and a number), got {text!r}") from None


def _generate(args: argparse.Namespace, c: ScalpelClient) -> None:
    done = None
    pieces = []
    options: dict[str, object] = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
    for name in ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.stop:
        options["stop"] = args.stop
    if args.logit_bias:
        options["logit_bias"] = dict(args.logit_bias)
    for event in c.stream(args.model, args.prompt, args.alias, args.version, **options):
        if event.HasField("token"):
            pieces.append(event.token.text)
            if not args.json:
                print(event.token.text, end="", flush=True)
        else:
            done = event.done
    if args.json:
        print(json.dumps({"text": "".join(pieces), "version": done.version, "finish_reason": done.finish_reason}))
    else:
        print(f"\n[{done.version}, {done.finish_reason}]")


def _remote_keys(args: argparse.Namespace, c: ScalpelClient) -> None:
    if args.keys_remote == "list":
        _print(args, c.keys.ListKeys(pb.ListKeysRequest()), ("name", "prefix", "role", "revoke_time"), "keys")
    elif args.keys_remote == "create":
        created = c.keys.CreateKey(pb.CreateKeyRequest(name=args.name, role=args.role))
        if args.json:
            print(json.dumps({"name": created.key.name, "role": created.key.role, "secret": created.secret}))
        else:
            print(f"{created.key.name} ({created.key.role}): {created.secret}\n(the secret is shown only this once)")
    else:
        _print(args, c.keys.RevokeKey(pb.RevokeKeyRequest(name=args.name)), ("name", "role", "revoke_time"))


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    def command(parser: argparse.ArgumentParser, handler: Callable[..., Any], paged: bool = False) -> None:
        parser.add_argument("--address", default=None, help="host:port (default: $SCALPEL_ADDRESS or 127.0.0.1:50051)")
        parser.add_argument("--api-key", default=None, help="the API key's secret (default: $SCALPEL_API_KEY)")
        parser.add_argument("--tls", action="store_true", help="TLS, verifying the server with the system's roots")
        parser.add_argument("--tls-ca", default=os.environ.get("SCALPEL_TLS_CA"), help="CA file (implies --tls)")
        parser.add_argument("--tls-cert", default=os.environ.get("SCALPEL_TLS_CERT"), help="client certificate")
        parser.add_argument("--tls-key", default=os.environ.get("SCALPEL_TLS_KEY"), help="client private key")
        parser.add_argument("--json", action="store_true")
        if paged:
            parser.add_argument("--page-size", type=int, default=50)
            parser.add_argument("--page-token", default="")
        parser.set_defaults(func=lambda args: _run(handler, args))

    models = commands.add_parser("models", help="hosted models").add_subparsers(dest="sub", required=True)
    command(
        models.add_parser("list", help="every registered model and whether this server serves it"),
        _models_list,
        paged=True,
    )
    load = models.add_parser("load", help="load a model and serve it now (admin); the others keep serving")
    load.add_argument("name", help="the model's short name")
    load.add_argument("source", help="a local model directory or a hub id")
    load.add_argument("--device", help="cpu, cuda, cuda:1, … (default: the server's)")
    load.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the server's")
    command(load, _models_load)
    unload = models.add_parser("unload", help="stop serving a model and free its weights (admin)")
    unload.add_argument("name", help="the model's short name")
    unload.add_argument("--force", action="store_true", help="cancel its requests in flight instead of refusing")
    command(unload, _models_unload)

    successor = models.add_parser(
        "successor",
        help="record a model as a newer checkpoint of another (admin; both served by this server, same "
        "family, shapes and vocabulary): its predecessor's versions can then be rebased onto it",
    )
    successor.add_argument("name", help="the successor's short name")
    successor.add_argument("--of", required=True, help="the model it succeeds")
    command(successor, _models_successor)

    rebase = commands.add_parser(
        "rebase",
        help="make a version again on a successor of its model, edit by edit, and report each edit's drift "
        "(exit status 1 when an edit was flagged or a fact edit lost efficacy)",
    )
    rebase.add_argument("version", type=int, help="the version number to rebase")
    rebase.add_argument("--onto", required=True, help="the successor model (see `scalpel models successor`)")
    rebase.add_argument("--model", default="toy", help="the version's model (default: toy)")
    rebase.add_argument("--description", default="")
    rebase.add_argument("--request-id", default="", help="retry-safe key: a repeat returns the first result")
    rebase.add_argument("--html", help="also write the drift report as one HTML page here")
    command(rebase, _rebase)

    saes = commands.add_parser("saes", help="a model's sparse autoencoders").add_subparsers(dest="sub", required=True)
    sae_create = saes.add_parser("create", help="register an SAE in SAELens's folder format (editor)")
    sae_create.add_argument("name", help="its name among the model's SAEs")
    sae_create.add_argument("folder", help="a folder with cfg.json and sae_weights.safetensors")
    sae_create.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    sae_create.add_argument("--description", default="")
    command(sae_create, _saes_create)
    sae_list = saes.add_parser("list", help="the model's SAEs, newest first")
    sae_list.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(sae_list, _saes_list, paged=True)
    features = commands.add_parser("features", help="SAE features").add_subparsers(dest="sub", required=True)
    inspect = features.add_parser("inspect", help="which features fire on each token of a prompt")
    inspect.add_argument("prompt")
    inspect.add_argument("--sae", required=True, help="the SAE's name (see `scalpel saes list`)")
    inspect.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    inspect.add_argument("--top", type=int, default=5, help="features per token (default 5)")
    inspect.add_argument("--version", type=int, default=None, help="under this version's edits (default: the base)")
    command(inspect, _features_inspect)
    show = features.add_parser("show", help="a feature's card: density, strongest contexts, logit effects")
    show.add_argument("feature", type=int)
    show.add_argument("--sae", required=True, help="the SAE's name (see `scalpel saes list`)")
    show.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    show.add_argument("--top", type=int, default=10, help="contexts and tokens listed (default 10)")
    show.add_argument("--max-texts", type=int, default=0, help="read only the corpus's first texts (0: all)")
    command(show, _features_show)
    search = features.add_parser("search", help="features whose strongest contexts or logit effects match words")
    search.add_argument("query", help="the words to look for")
    search.add_argument("--sae", required=True, help="the SAE's name (see `scalpel saes list`)")
    search.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    search.add_argument("--top", type=int, default=10, help="features listed (default 10)")
    search.add_argument("--max-texts", type=int, default=0, help="index only the corpus's first texts (0: all)")
    command(search, _features_search)
    report = features.add_parser("report", help="features' dashboards as one self-contained HTML page (and --png)")
    report.add_argument("features", type=int, nargs="*", help="the features to show")
    report.add_argument("--search", default="", help="also the features matching these words")
    report.add_argument("--sae", required=True, help="the SAE's name (see `scalpel saes list`)")
    report.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    report.add_argument("--top", type=int, default=10, help="contexts, tokens and searched features (default 10)")
    report.add_argument("--max-texts", type=int, default=0, help="read only the corpus's first texts (0: all)")
    report.add_argument("--html", required=True, help="write the page here")
    report.add_argument("--png", help="also a screenshot of it (needs Chromium)")
    command(report, _features_report)

    edits = commands.add_parser("edits", help="edits").add_subparsers(dest="sub", required=True)
    edit_list = edits.add_parser("list", help="the model's edits, newest first")
    edit_list.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(edit_list, _edits_list, paged=True)
    create = edits.add_parser("create", help="create from a file (save_edit .safetensors, or YAML)")
    create.add_argument("-f", "--file", required=True)
    create.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    create.add_argument("--description", default="")
    create.add_argument("--request-id", default="")
    command(create, _edits_create)
    imported = edits.add_parser(
        "import-steering",
        help="steering vectors from a llama.cpp/repeng control vector (.gguf) or a safetensors per-layer dict, "
        "one edit per layer at blocks.L.hook_resid_post",
    )
    imported.add_argument("file", help="a .gguf control vector, or a .safetensors file keyed by layer number")
    imported.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    imported.add_argument("--scale", type=float, default=1.0, help="multiply every vector (default 1)")
    imported.add_argument("--description", default="")
    command(imported, _edits_import_steering)

    rome = edits.add_parser("rome", help="compute a ROME fact edit on the server")
    rome.add_argument("--prompt", required=True, help="template with {} or the prompt containing the subject")
    rome.add_argument("--subject", required=True)
    rome.add_argument("--target", required=True)
    rome.add_argument("--hparams", default="", help="JSON object of hyper-parameter overrides")
    rome.add_argument("--on-version", type=int, default=None, help="compute on this version (sequential editing)")
    rome.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    rome.add_argument("--description", default="")
    command(rome, _edits_rome)
    memit = edits.add_parser("memit", help="compute MEMIT edits for a batch of facts on the server (one per layer)")
    memit.add_argument("-f", "--file", required=True, help="YAML list of {prompt, subject, target}")
    memit.add_argument("--hparams", default="", help="JSON object of MemitHyperParams overrides (e.g. layers)")
    memit.add_argument("--on-version", type=int, default=None, help="compute on this version")
    memit.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    memit.add_argument("--description", default="")
    command(memit, _edits_memit)
    steer = edits.add_parser("steer", help="derive a steering vector from prompt pairs on the server")
    steer.add_argument("--pairs", required=True, help="YAML list of [positive, negative] prompts")
    steer.add_argument("--layer", type=int, required=True)
    steer.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca"])
    steer.add_argument("--scale", type=float, default=1.0)
    steer.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    steer.add_argument("--description", default="")
    command(steer, _edits_steer)

    locate = commands.add_parser(
        "locate",
        help="find the heads and MLPs that carry a behaviour (attribution, then verified by ablation) on the server",
    )
    locate.add_argument("-f", "--file", required=True, help="YAML list of {clean, corrupted, answer, wrong}")
    locate.add_argument("--metric", default="logit_diff", choices=METRICS)
    locate.add_argument("--score-from", type=int, default=1, help="tokens_logprob: the first token scored")
    locate.add_argument("--target", type=float, default=0.9, help="share of the behaviour the circuit must keep")
    locate.add_argument(
        "--kinds", nargs="+", default=list(DEFAULT_NODE_KINDS), choices=CIRCUIT_KINDS, help="node kinds, or edges"
    )
    locate.add_argument("--sae", help="with --kinds features: the SAE whose features are nodes (`scalpel saes list`)")
    locate.add_argument(
        "--steps", type=int, default=0, help="attribution's interpolation steps (default: 1 for nodes, 4 for edges)"
    )
    locate.add_argument("--direction", default="denoising", choices=DIRECTIONS, help="which run is patched")
    locate.add_argument("--on-version", type=int, default=None, help="locate in this version")
    locate.add_argument("--propose", choices=PROPOSALS, help="also create the edit that cuts the circuit")
    locate.add_argument("--description", default="", help="of the proposed edit")
    locate.add_argument("--png", help="write the heads' attribution heatmap here")
    locate.add_argument("--graph", help="write the circuit graph here (nodes, or the edges with their scores)")
    locate.add_argument("--top", type=int, default=10, help="components listed")
    locate.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(locate, _locate)

    compare = commands.add_parser("compare", help="compare two versions on prompts (KL, changed top-1)")
    compare.add_argument("base", type=int)
    compare.add_argument("candidate", type=int)
    compare.add_argument("--prompt", action="append", help="repeatable (default: the suite's reference texts)")
    compare.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(compare, _compare)

    suite = commands.add_parser("suite", help="the model's check suite").add_subparsers(dest="sub", required=True)
    get = suite.add_parser("get")
    get.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(get, _suite)
    put = suite.add_parser("set")
    put.add_argument("-f", "--file", required=True, help="YAML or JSON suite")
    put.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(put, _suite)

    score = commands.add_parser("score", help="log-probabilities of continuations")
    score.add_argument("prompt")
    score.add_argument("continuations", nargs="+")
    score.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    score.add_argument("--alias", default="production", help="the alias (default: production)")
    score.add_argument("--version", type=int, default=None)
    command(score, _score)

    versions = commands.add_parser("versions", help="versions").add_subparsers(dest="sub", required=True)
    listing = versions.add_parser("list")
    listing.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(listing, _versions_list, paged=True)
    new = versions.add_parser("create")
    new.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    new.add_argument("--parent", type=int, required=True, help="the version number the new one starts from")
    new.add_argument("--append", type=int, nargs="*", default=[], help="edit ids to add, in order")
    new.add_argument("--remove", type=int, default=None)
    new.add_argument("--description", default="")
    command(new, _versions_create)
    exported = versions.add_parser(
        "export",
        help="the version as files other engines serve, over gRPC (editor): merged weights, a PEFT LoRA "
        "adapter, a llama.cpp control vector (gguf) or per-layer steering safetensors",
    )
    add_export_arguments(exported)
    command(exported, _versions_export)

    drift = versions.add_parser("drift", help="the drift report of a version made by `scalpel rebase`")
    drift.add_argument("version", type=int)
    drift.add_argument("--model", default="toy", help="the successor model (default: toy)")
    drift.add_argument("--html", help="also write it as one HTML page here")
    command(drift, _versions_drift)

    checks = commands.add_parser("checks", help="regression checks").add_subparsers(dest="sub", required=True)
    run = checks.add_parser("run", help="run the suite on a version (progress bar; exit status 1 unless it passed)")
    run.add_argument("version", type=int)
    run.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(run, _checks_run)
    got = checks.add_parser("get", help="a run's results (exit status 1 unless it passed)")
    got.add_argument("run", type=int)
    command(got, _checks_get)
    report = checks.add_parser("report", help="a run as one self-contained HTML page (and --png)")
    report.add_argument("run", type=int)
    report.add_argument("--html", required=True, help="where to write the page")
    report.add_argument("--png", help="also a screenshot of it (needs Chromium)")
    command(report, _checks_report)
    listed = checks.add_parser("list", help="a model's runs, newest first (of one version, if given)")
    listed.add_argument("version", type=int, nargs="?", default=None)
    listed.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(listed, _checks_list, paged=True)

    for name, handler in (("promote", _promote), ("rollback", _rollback)):
        parser = commands.add_parser(name, help=f"{name} an alias")
        parser.add_argument(
            "--force",
            action="store_true",
            help="admin only, with --reason: past the checks gate",
        )
        if name == "promote":
            parser.add_argument("version", type=int)
        else:
            parser.add_argument("--to", type=int, default=None, help="a named version (default: undo the last move)")
        parser.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
        parser.add_argument("--alias", default="production", help="the alias (default: production)")
        parser.add_argument("--reason", default="")
        command(parser, handler)
    aliases = commands.add_parser("aliases", help="a model's aliases").add_subparsers(dest="sub", required=True)
    alias_list = aliases.add_parser("list", help="every alias of the model and its version")
    alias_list.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    command(alias_list, _aliases_list, paged=True)
    alias_delete = aliases.add_parser(
        "delete", help="delete an alias: requests naming it fail from then on; its history stays audited"
    )
    alias_delete.add_argument("alias", help="the alias to delete (not production)")
    alias_delete.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    alias_delete.add_argument("--reason", default="", help="recorded in the audit event")
    alias_delete.add_argument("--etag", help="refuse unless the alias still has this etag (default: no check)")
    command(alias_delete, _aliases_delete)
    history = commands.add_parser("history", help="an alias's moves, newest first")
    history.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    history.add_argument("--alias", default="production", help="the alias (default: production)")
    command(history, _history, paged=True)

    audit = commands.add_parser("audit", help="the audit log").add_subparsers(dest="sub", required=True)
    events = audit.add_parser("list")
    events.add_argument("--action", default="")
    events.add_argument("--subject", default="")
    events.add_argument("--actor", default="")
    command(events, _audit_list, paged=True)
    verify = audit.add_parser(
        "verify", help="recompute the hash chain and check the head's signature; prints the head to pin elsewhere"
    )
    pinned = verify.add_mutually_exclusive_group()
    pinned.add_argument("--expect-head", help="SEQ:HASH printed by an earlier verify: it must still be in the log")
    pinned.add_argument("--checkpoint", help="a file `audit checkpoint` wrote: valid, and its head still in the log")
    command(verify, _audit_verify)
    checkpoint = audit.add_parser(
        "checkpoint", help="verify the log and write its signed head to a file to keep outside the database"
    )
    checkpoint.add_argument("--out", required=True, help="the checkpoint file to write")
    command(checkpoint, _audit_checkpoint)
    pubkey = audit.add_parser("pubkey", help="this host's audit signing key: its id and public key (no server)")
    pubkey.add_argument("--json", action="store_true")
    pubkey.set_defaults(func=audit_pubkey)
    rotate = audit.add_parser(
        "rotate-key", help="retire this host's signing key (it still verifies old heads) and make a new one"
    )
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(func=audit_rotate_key)

    generate = commands.add_parser("generate", help="stream a generation")
    generate.add_argument("prompt")
    generate.add_argument("--model", default="toy", help="the hosted model's name (default: toy)")
    generate.add_argument("--alias", default=None, help="serve through this alias (default: production)")
    generate.add_argument("--version", type=int, default=None)
    generate.add_argument("--max-tokens", type=int, default=16, help="new tokens at most (default 16)")
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--top-k", type=int, help="sample from the k likeliest tokens only")
    generate.add_argument("--min-p", type=float, help="drop tokens below this × the likeliest's probability")
    generate.add_argument("--repetition-penalty", type=float, help="divide the logits of tokens already seen")
    generate.add_argument("--presence-penalty", type=float, help="OpenAI's, in [-2, 2]: once per token in the output")
    generate.add_argument("--frequency-penalty", type=float, help="OpenAI's, in [-2, 2]: per appearance in the output")
    generate.add_argument("--stop", action="append", help="a stop string (repeatable)")
    generate.add_argument(
        "--logit-bias",
        action="append",
        type=_token_bias,
        metavar="TOKEN=BIAS",
        help="add BIAS (in [-100, 100]) to token id TOKEN's logit (repeatable)",
    )
    command(generate, _generate)

    remote = commands.add_parser("remote-keys", help="API keys over gRPC (admin)").add_subparsers(
        dest="keys_remote", required=True
    )
    command(remote.add_parser("list"), _remote_keys)
    remote_create = remote.add_parser("create", help="a new key; its secret is printed once")
    remote_create.add_argument("name")
    remote_create.add_argument(
        "--role", required=True, choices=["reader", "editor", "approver", "admin"], help="what the key may do"
    )
    command(remote_create, _remote_keys)
    revoke = remote.add_parser("revoke")
    revoke.add_argument("name")
    command(revoke, _remote_keys)


def _run(handler: Callable[..., Any], args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            return handler(args, client) or 0
        except grpc.RpcError as error:
            hint = ""
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                hint = " (pass --api-key SECRET or set $SCALPEL_API_KEY; `scalpel keys create` makes one)"
            print(f"error: {error.code().name}: {error.details()}{hint}", file=sys.stderr)
            return 2
