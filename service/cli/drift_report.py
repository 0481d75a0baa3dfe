"""A rebase's drift report as text lines and as one self-contained HTML page: which of the origin
version's edits were made again on the successor, carried, or carried and flagged, why, and what
moved (steering cosine, circuit overlap, a fact edit's efficacy before, carried unrebased, and
after). No scripts, no external files, as the check report."""

from __future__ import annotations

from html import escape

from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.cli.check_report import STYLE

#: How each metric is named for a reader, in the order shown.
METRIC_LABELS = {
    "efficacy_before": "efficacy on the old base",
    "efficacy_carried": "old edit on the successor",
    "efficacy_after": "rebased edit on the successor",
    "steering_cosine": "cosine old · new vector",
    "norm_ratio": "norm new / old",
    "circuit_jaccard": "circuit overlap (Jaccard)",
}
ACTION_CLASS = {"recomputed": "ok", "carried": "ok", "flagged": "fail"}
DRIFT_STYLE = ".bar { display: inline-block; height: .7em; background: #1f7a3a; vertical-align: middle; }"


def held(drift: pb.EditDrift) -> bool | None:
    """Whether a fact edit does at least as well on the successor as on the old base (None: no
    efficacy to compare, not a fact edit)."""
    if "efficacy_after" not in drift.metrics:
        return None
    return drift.metrics["efficacy_after"] >= drift.metrics["efficacy_before"]


def summary_line(rebase: pb.Rebase) -> str:
    s = rebase.summary
    parts = [f"{s.recomputed} recomputed", f"{s.carried} carried", f"{s.flagged} flagged"]
    if s.fact_edits:
        parts.append(f"fact edits held {s.fact_edits_held}/{s.fact_edits}")
    if s.HasField("steering_cosine_min"):
        parts.append(f"steering cosine ≥ {s.steering_cosine_min:.3f}")
    if s.HasField("circuit_jaccard_min"):
        parts.append(f"circuit overlap ≥ {s.circuit_jaccard_min:.3f}")
    return f"{rebase.origin} → {rebase.version.name} ({rebase.version.status}): " + ", ".join(parts)


def drift_lines(rebase: pb.Rebase) -> list[str]:
    """One line per edit (or batch made together): ids, kind, action, metrics, reason."""
    lines = []
    for drift in rebase.drift:
        metrics = ", ".join(f"{name} {drift.metrics[name]:.3f}" for name in METRIC_LABELS if name in drift.metrics)
        ids = f"{list(drift.origin_edit_ids)} → {list(drift.edit_ids)}"
        lines.append(f"{ids:<18} {drift.kind:<16} {drift.action:<10} {metrics}  ({drift.reason})")
    return lines


def _metric_cell(drift: pb.EditDrift) -> str:
    rows = []
    for name, label in METRIC_LABELS.items():
        if name not in drift.metrics:
            continue
        value = drift.metrics[name]
        bar = (
            f'<span class="bar" style="width:{max(0.0, min(value, 1.0)) * 80:.0f}px"></span> '
            if name != "norm_ratio"
            else ""
        )
        rows.append(f'{bar}<span class="num" data-metric="{name}">{value:.3f}</span> {escape(label)}')
    return "<br>".join(rows) or "–"


def render_drift_html(rebase: pb.Rebase) -> str:
    rows = []
    for drift in rebase.drift:
        verdict = held(drift)
        held_cell = (
            "–"
            if verdict is None
            else ('<span class="ok">held</span>' if verdict else '<span class="fail">lost</span>')
        )
        rows.append(
            f'<tr data-action="{escape(drift.action)}"><td>{", ".join(map(str, drift.origin_edit_ids))}</td>'
            f"<td>{', '.join(map(str, drift.edit_ids))}</td><td><code>{escape(drift.kind)}</code></td>"
            f'<td><span class="{ACTION_CLASS.get(drift.action, "na")}">{escape(drift.action)}</span></td>'
            f"<td>{_metric_cell(drift)}</td><td>{held_cell}</td>"
            f'<td class="reason">{escape(drift.reason)}</td></tr>'
        )
    created = rebase.version.create_time.ToDatetime().isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Rebase of {escape(rebase.origin)}</title><style>{STYLE}{DRIFT_STYLE}</style></head><body>"
        f"<h1>Rebase of <code>{escape(rebase.origin)}</code> onto <code>{escape(rebase.version.name)}</code></h1>"
        f'<p id="summary">{escape(summary_line(rebase))} · made {escape(created)} by '
        f"{escape(rebase.version.author)}</p>"
        "<p class='reason'>Recomputed: made again on the successor from the edit's stored provenance. Carried: "
        "kept as it is, meaning the same on the successor. Flagged: kept as it is although its numbers were "
        "read off the old base: look at it before promoting. The version is unchecked until its checks run.</p>"
        "<h2>Edits</h2><table><tr><th>origin edits</th><th>successor edits</th><th>kind</th><th>action</th>"
        f"<th>drift</th><th>fact edit</th><th>why</th></tr>{''.join(rows)}</table></body></html>"
    )
