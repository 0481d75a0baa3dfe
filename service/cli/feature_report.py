"""SAE features as one self-contained HTML dashboard (Neuronpedia's card, per feature): how often
it fires, its strongest contexts with the token it fires on marked by strength, and the tokens its
decoder direction raises and lowers through the unembedding. No scripts, no external files, as the
check report."""

from __future__ import annotations

from html import escape

from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.cli.check_report import STYLE

FEATURE_STYLE = """
.card { border: 1px solid #e3e3e6; border-radius: 6px; padding: .2em 1em 1em; margin: 1.2em 0; }
.card h2 { margin: .5em 0 .2em; } .meta { color: #555; }
mark { border-radius: 3px; padding: 0 .15em; color: #1d1d1f; }
.bar { display: inline-block; height: .7em; vertical-align: middle; border-radius: 2px; }
.up { background: #1f7a3a; } .down { background: #b3261e; } .act { background: #e8710a; }
.effects { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }
"""
BAR_WIDTH = 120  # pixels of the longest bar


def _bar(value: float, longest: float, kind: str) -> str:
    width = 0 if longest <= 0 else round(BAR_WIDTH * abs(value) / longest)
    return f'<span class="bar {kind}" style="width:{width}px"></span>'


def _context(context: pb.FeatureContext, strongest: float) -> str:
    """The context with its last token (the one the feature fires on) marked, deeper for stronger."""
    alpha = 0.15 + 0.85 * (context.activation / strongest if strongest > 0 else 0.0)
    before, token = context.text, ""
    if context.text.endswith(context.token):
        before, token = context.text[: len(context.text) - len(context.token)], context.token
    mark = f'<mark style="background: rgba(232,113,10,{alpha:.2f})">{escape(token)}</mark>' if token else ""
    return (
        f'<tr><td class="num" data-activation="{context.activation!r}">{context.activation:.3f} '
        f"{_bar(context.activation, strongest, 'act')}</td><td>…{escape(before)}{mark}</td>"
        f"<td><code>{escape(context.token)}</code></td></tr>"
    )


def _effects(title: str, effects: list[pb.TokenEffect], kind: str) -> str:
    longest = max((abs(e.logit) for e in effects), default=0.0)
    rows = "".join(
        f'<tr><td><code>{escape(e.token)}</code></td><td class="num" data-logit="{e.logit!r}">{e.logit:+.3f} '
        f"{_bar(e.logit, longest, kind)}</td></tr>"
        for e in effects
    )
    return f"<div><h3>{title}</h3><table><tr><th>token</th><th>direct logit</th></tr>{rows}</table></div>"


def _card(card: pb.Feature) -> str:
    contexts = "".join(_context(c, card.max_activation) for c in card.contexts)
    return (
        f'<section class="card" id="feature-{card.feature}" data-feature="{card.feature}">'
        f"<h2>Feature {card.feature}</h2>"
        f'<p class="meta">fires on <b data-density="{card.density!r}">{card.density:.3%}</b> of the corpus\'s '
        f"tokens ({card.texts} texts) · strongest activation "
        f'<b data-max="{card.max_activation!r}">{card.max_activation:.3f}</b></p>'
        "<h3>Strongest contexts</h3>"
        + (
            f"<table><tr><th>activation</th><th>context</th><th>token</th></tr>{contexts}</table>"
            if contexts
            else "<p>It never fires on this corpus.</p>"
        )
        + '<div class="effects">'
        + _effects("Raises", list(card.promoted), "up")
        + _effects("Lowers", list(card.suppressed), "down")
        + "</div></section>"
    )


def feature_dashboard(sae: pb.Sae, cards: list[pb.Feature], search: str = "") -> str:
    """One page of ``cards``, features of ``sae`` (found by ``search``, when given)."""
    found = f" · features matching <q>{escape(search)}</q>" if search else ""
    index = " · ".join(f'<a href="#feature-{c.feature}">{c.feature}</a>' for c in cards)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Features of {escape(sae.name)}</title><style>{STYLE}{FEATURE_STYLE}</style></head><body>"
        f"<h1>Features of <code>{escape(sae.name)}</code></h1>"
        f"<p>{escape(sae.architecture)} SAE, {sae.d_sae} features at <code>{escape(sae.site)}</code> · "
        f"<code>{escape(sae.sae_sha256[:16])}</code>{found}</p>"
        f"<p>{index}</p>{''.join(_card(c) for c in cards)}</body></html>"
    )
