"""Fact edits (ROME, MEMIT) of a version, read from their provenance, and the relation group of
templates each one's prompt belongs to (the suite's ``relations``)."""

from __future__ import annotations

from dataclasses import dataclass

from editors import Edit

FACT_METHODS = ("rome", "memit")


@dataclass(frozen=True)
class FactEdit:
    template: str  # with "{}" for the subject
    subject: str
    target: str

    @property
    def prompt(self) -> str:
        return self.template.format(self.subject)


def fact_edits(edits: list[Edit]) -> list[FactEdit]:
    found = []
    for edit in edits:
        provenance = getattr(edit, "provenance", None) or {}
        request = provenance.get("request") or {}
        if provenance.get("method") in FACT_METHODS and all(
            isinstance(request.get(k), str) for k in ("prompt", "subject", "target")
        ):
            template = (
                request["prompt"]
                if "{}" in request["prompt"]
                else request["prompt"].replace(request["subject"], "{}", 1)
            )
            found.append(FactEdit(template, request["subject"], request["target"]))
    return found


def relation_of(template: str, relations: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The group of templates saying the same relation as ``template`` (itself alone if none)."""
    return next((group for group in relations if template in group), (template,))
