"""RebaseVersion's work: a version of a hosted model made again on a hosted successor, edit by edit
(editors.rebase), then written with its drift report in one registry transaction."""

from __future__ import annotations

from collections.abc import Callable

from editors.covariance import CovarianceCache, KeyCovariance
from editors.errors import Cancelled
from editors.rebase import ReplayError, rebase_edits
from service.db.engine import data_dir
from service.hosting import ModelHost
from service.registry import FailedPrecondition, InvalidArgument, Registry
from service.registry.infos import RebaseInfo


def rebase_version(
    registry: Registry,
    origin: ModelHost,
    successor: ModelHost,
    number: int,
    actor: str,
    description: str = "",
    request_id: str | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> RebaseInfo:
    """``models/{origin}/versions/{number}`` rebased onto ``successor`` (see RebaseVersion in the
    proto). A retry with ``request_id`` returns the first result before any work; ``should_stop``
    is asked between edits (and while key covariances are computed): a stop writes nothing."""
    replayed = registry.replayed_rebase(origin.name, number, successor.name, description, actor, request_id)
    if replayed is not None:
        return replayed
    if number == 0:
        raise InvalidArgument(
            f"models/{origin.name}/versions/0 is the base: the successor's own version 0 is its equivalent"
        )
    if registry.predecessor(successor.name) != origin.name:
        raise FailedPrecondition(
            f"model {successor.name!r} is not registered as a successor of {origin.name!r}: "
            f"RegisterSuccessor (scalpel models successor {successor.name} --of {origin.name}) first"
        )
    version = registry.verified_version(origin.name, number)
    edits = [origin.edit(edit_id) for edit_id in version.edit_ids]
    texts = successor.reference_texts()
    cache = CovarianceCache(data_dir() / "cache" / "covariance")

    def stop_here(done: int, total: int) -> None:
        if should_stop():
            raise Cancelled(f"the rebase stopped after {done} of {total}; nothing was written")

    def covariance(layer: int) -> KeyCovariance:
        return cache.get_or_compute(successor.surgeon, successor.tokenizer, texts, layer, stop_here)

    def rebased_so_far(done: int, total: int) -> None:
        stop_here(done, total)
        progress(done, total)

    try:
        rebased = rebase_edits(
            origin.surgeon,
            successor.surgeon,
            origin.tokenizer,
            edits,
            texts,
            covariance,
            rebased_so_far,
            successor.tokenizer,
        )
    except ReplayError as error:
        names = ", ".join(f"models/{origin.name}/edits/{version.edit_ids[i]}" for i in error.indices)
        raise FailedPrecondition(f"{names} could not be rebased: {error.problem}; nothing was written") from error
    report = rebased.as_dict()
    for entry in report["drift"]:
        entry["origin_edit_ids"] = [version.edit_ids[i] for i in entry["originals"]]
    return registry.record_rebase(
        origin.name, number, successor.name, rebased.edits, report, actor, description, request_id
    )
