"""A check run as one self-contained HTML page a person reads: the verdict, each check's estimate
and 95% interval drawn against its threshold, the reason in words, the worst examples side by side
(reference and candidate columns where the check compared two versions), and the version's edits.
No scripts, no external files: it opens anywhere and prints as it shows.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path
from typing import Any

from service.api.scalpel.v1 import scalpel_pb2 as pb

PLOT_WIDTH, PLOT_HEIGHT, MARGIN = 320, 34, 12
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1d1d1f; }
h1 { font-size: 1.5em; margin-bottom: .2em; } .verdict { font-weight: 600; padding: .1em .5em; border-radius: 4px; }
.passed { background: #d7f5dd; color: #14522a; } .failed, .interrupted { background: #fde2e1; color: #7a1712; }
table { border-collapse: collapse; width: 100%; margin: .8em 0 1.4em; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e3e3e6; vertical-align: top; }
th { background: #f5f5f7; font-weight: 600; } td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #14522a; font-weight: 600; } .na { color: #666; font-weight: 600; }
.fail { color: #a1150d; font-weight: 600; }
.reason { color: #444; font-size: .92em; } .examples td { font-size: .9em; }
code { font-size: .9em; } svg text { font: 10px system-ui, sans-serif; fill: #555; }
"""


#: The check kinds that judge a version's own edits; when none had anything to judge, reports say so.
EDIT_AWARE_KINDS = ("edit_intent", "edit_locality")


def verdict_word(result: pb.CheckResult) -> str:
    """``ok``, ``FAIL`` or ``n/a`` (the version gave the check nothing to measure)."""
    if result.not_applicable:
        return "n/a"
    return "ok" if result.passed else "FAIL"


def edit_aware_note(run: pb.CheckRun) -> str | None:
    """A sentence when every edit-aware check of the run was not applicable: the verdict then rests
    on the generic checks alone, and a reader must not take it for evidence about the edits."""
    aware = [r for r in run.results if r.kind in EDIT_AWARE_KINDS]
    if aware and all(r.not_applicable for r in aware):
        return (
            "no edit-aware check had anything to judge (the version's edits carry no fact request, located cut, "
            "stated intent or steering pairs): the verdict rests on the generic checks alone"
        )
    return None


def _number(value: float) -> str:
    return f"{value:.4g}"


def interval_plot(result: pb.CheckResult) -> str:
    """The estimate (dot), its 95% interval (bar) and the threshold (red line) on one axis."""
    values = [result.ci_low, result.ci_high, result.metric, result.threshold]
    low, high = min(values), max(values)
    span = (high - low) or max(abs(high), 1.0)
    low, high = low - 0.1 * span, high + 0.1 * span

    def x(value: float) -> float:
        return MARGIN + (value - low) / (high - low) * (PLOT_WIDTH - 2 * MARGIN)

    colour = "#1f7a3a" if result.passed else "#b3261e"
    middle = PLOT_HEIGHT / 2 - 4
    return (
        f'<svg width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" role="img" '
        f'aria-label="estimate {_number(result.metric)}, interval {_number(result.ci_low)} to '
        f'{_number(result.ci_high)}, threshold {_number(result.threshold)}">'
        f'<line x1="{MARGIN}" x2="{PLOT_WIDTH - MARGIN}" y1="{middle}" y2="{middle}" stroke="#ccc"/>'
        f'<line x1="{x(result.ci_low):.1f}" x2="{x(result.ci_high):.1f}" y1="{middle}" y2="{middle}" '
        f'stroke="{colour}" stroke-width="5" stroke-linecap="round"/>'
        f'<circle cx="{x(result.metric):.1f}" cy="{middle}" r="5" fill="{colour}"/>'
        f'<line x1="{x(result.threshold):.1f}" x2="{x(result.threshold):.1f}" y1="2" y2="{middle + 9}" '
        f'stroke="#b3261e" stroke-width="2" stroke-dasharray="3 2"/>'
        f'<text x="{x(result.threshold):.1f}" y="{PLOT_HEIGHT - 1}" text-anchor="middle">'
        f"{escape(result.comparison)} {_number(result.threshold)}</text></svg>"
    )


def _examples(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f'<table class="examples"><tr>{head}</tr>{body}</table>'


def render_html(run: pb.CheckRun, edits: list[pb.Edit]) -> str:
    rows, details = [], []
    for result in run.results:
        word = verdict_word(result)
        mark = f'<span class="{"fail" if word == "FAIL" else "ok" if word == "ok" else "na"}">{word}</span>'
        measured = result.rule != "error" and not result.not_applicable and math.isfinite(result.metric)
        rows.append(
            f'<tr data-check="{escape(result.name)}"><td>{mark}</td><td><b>{escape(result.name)}</b><br>'
            f"<code>{escape(result.kind)}</code></td>"
            f'<td class="num" data-estimate="{result.metric!r}">{_number(result.metric) if measured else "–"}</td>'
            f'<td class="num">{f"[{_number(result.ci_low)}, {_number(result.ci_high)}]" if measured else "–"}</td>'
            f'<td class="num">{result.n}</td>'
            f'<td class="num">{escape(result.comparison)} {_number(result.threshold)}<br>{escape(result.rule)}</td>'
            f"<td>{interval_plot(result) if measured and result.n else ''}</td>"
            f'<td class="reason">{escape(result.reason)}'
            f"{'<br>against ' + escape(result.reference) if result.reference else ''}</td></tr>"
        )
        worst = json.loads(result.worst_json or "[]")
        if worst:
            details.append(f"<h3>{escape(result.name)}: worst examples</h3>{_examples(worst)}")
    edit_rows = "".join(
        f"<tr><td>{edit.id}</td><td><code>{escape(edit.kind)}</code></td><td>{escape(edit.description)}</td>"
        f"<td><code>{escape(edit.spec_sha256[:16])}</code></td></tr>"
        for edit in edits
    )
    edits_table = (
        f"<table><tr><th>edit</th><th>kind</th><th>description</th><th>spec sha256</th></tr>{edit_rows}</table>"
        if edits
        else "<p>No edits: this is the base.</p>"
    )
    note = edit_aware_note(run)
    note_html = f'<p class="reason" id="edit-aware">{escape(note)}</p>' if note else ""
    started = run.start_time.ToDatetime().isoformat(timespec="seconds") if run.HasField("start_time") else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Check run {run.id}: {escape(run.state)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Check run {run.id} of <code>{escape(run.version)}</code></h1>"
        f'<p><span class="verdict {escape(run.state)}" id="verdict">{escape(run.state.upper())}</span> '
        f"· suite <code>{escape(run.suite_sha256[:16])}</code> · started {escape(started)} · "
        f"{sum(not r.passed for r in run.results)} of {len(run.results)} checks failed, "
        f"{sum(r.not_applicable for r in run.results)} not applicable</p>"
        f"{note_html}"
        "<h2>Checks</h2><table><tr><th></th><th>check</th><th>estimate</th><th>95% interval</th><th>n</th>"
        f"<th>threshold, rule</th><th>interval vs threshold</th><th>why</th></tr>{''.join(rows)}</table>"
        f"{''.join(details)}<h2>Edits of the version</h2>{edits_table}</body></html>"
    )


def find_browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def screenshot(html: str, png: Path, browser: str) -> None:
    """A PNG of the page through a headless browser (Chromium)."""
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html)
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png.resolve()}",
             "--window-size=1200,1600", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
