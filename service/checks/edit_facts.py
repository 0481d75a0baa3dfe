"""Fact edits (ROME, MEMIT) of a version, read from their provenance, and the relation group of
templates each one's prompt belongs to (the suite's ``relations``).

A ROME edit carries its one ``request``; a MEMIT batch carries its ``requests`` on each of the
layers it spans, so the same request read from several layers counts once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from editors import Edit
from editors.rome import RomeRequest

FACT_METHODS = ("rome", "memit")


@dataclass(frozen=True)
class FactEdit:
    template: str  # with "{}" for the subject
    subject: str
    target: str


def _requests(provenance: Mapping[str, Any]) -> Iterable[Any]:
    if provenance.get("method") not in FACT_METHODS:
        return ()
    if "request" in provenance:
        return (provenance["request"],)
    requests = provenance.get("requests")
    return requests if isinstance(requests, list | tuple) else ()


def fact_edits(edits: list[Edit]) -> list[FactEdit]:
    """Every fact request of ``edits``, once each, in the order the edits hold them."""
    found: dict[FactEdit, None] = {}
    for edit in edits:
        for request in _requests(getattr(edit, "provenance", None) or {}):
            fields = ("prompt", "subject", "target")
            if isinstance(request, Mapping) and all(isinstance(request.get(k), str) for k in fields):
                parsed = RomeRequest(request["prompt"], request["subject"], request["target"])
                found.setdefault(FactEdit(parsed.template, parsed.subject, parsed.target))
    return list(found)


def relation_of(template: str, relations: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The group of templates saying the same relation as ``template`` (itself alone if none)."""
    return next((group for group in relations if template in group), (template,))


def edited_answer(prompt: str, facts: list[FactEdit], relations: tuple[tuple[str, ...], ...]) -> str | None:
    """What ``prompt`` is meant to answer now, where the version's fact edits decide it.

    - Not about an edited subject: ``None`` (judge the prompt as it stands).
    - Asks an edited fact (its prompt, or a phrasing of its relation for its subject): its target.
    - Asks another relation of an edited subject (a template of the suite's ``relations``): ``None``,
      since editing a capital must not change a language.
    - About an edited subject in words no relation places: ``""`` (cannot tell; leave it out).
    """
    about = [fact for fact in facts if fact.subject in prompt]
    if not about:
        return None
    for fact in about:
        if prompt in {template.format(fact.subject) for template in relation_of(fact.template, relations)}:
            return fact.target
    placed = any(prompt == template.format(fact.subject) for fact in about for group in relations for template in group)
    return None if placed else ""


def edit_aware_items(
    edits: list[Edit],
    items: Iterable[dict[str, Any]],
    relations: tuple[tuple[str, ...], ...],
    new_answers: bool,
    expecting: Callable[[dict[str, Any], str], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """A task's items as ``edits`` mean them to be answered (see :func:`edited_answer`): an item
    asking an edited fact becomes ``expecting(item, target)`` marked ``edited_fact`` (left out where
    that is ``None`` or ``new_answers`` is false, e.g. against a reference that cannot know it), one
    asking another relation stays as written, one no relation places is left out."""
    facts, judged = fact_edits(edits), []
    for item in items:
        answer = edited_answer(item["prompt"], facts, relations)
        if answer is None:
            judged.append(item)
        elif answer and new_answers and (expected := expecting(item, answer)) is not None:
            judged.append({**expected, "edited_fact": True})
    return judged


def without_subjects(items: Iterable[dict[str, Any]], subjects: set[str]) -> list[dict[str, Any]]:
    """The items whose prompts name none of ``subjects`` (``skip_edited_subjects: true``)."""
    return [item for item in items if not any(subject in item["prompt"] for subject in subjects)]
