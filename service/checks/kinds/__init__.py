"""Check kinds, registered by name: each module has ``KIND``, ``parse(params, suite)`` (validate a
suite's instance, naming the bad field) and ``run(context, name, config)`` (one result)."""

from __future__ import annotations

from types import ModuleType

from service.checks.kinds import (
    behaviour,
    choice_task,
    edit_intent,
    edit_locality,
    generation_task,
    kl,
    perplexity_ratio,
    top1_agreement,
)

KINDS: dict[str, ModuleType] = {
    module.KIND: module
    for module in (
        kl,
        top1_agreement,
        perplexity_ratio,
        choice_task,
        generation_task,
        behaviour,
        edit_intent,
        edit_locality,
    )
}
