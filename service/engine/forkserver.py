"""The fork server the engine processes start from, and starting it before the serving process's
own imports.

Engine processes fork from a clean server process that imported torch, transformers and
``service.engine.process`` once (``forkserver``): a model's engine starts in well under a second
after the first, and never inherits the serving process's threads (gRPC's, the schedulers').
Those imports take seconds; started first (:func:`start_early`), the fork server makes them on
one core while the serving process makes its own on another, instead of after them. This module
imports neither torch nor transformers, so that the start comes before theirs.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver

PRELOAD = ["torch", "transformers.modeling_utils", "service.engine.process"]


def forkserver_context() -> multiprocessing.context.ForkServerContext:
    """The context engine processes start in, its fork server preloading :data:`PRELOAD`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_early() -> None:
    """Start the fork server now (its imports run in the background); a later engine start uses it."""
    forkserver_context()
    multiprocessing.forkserver.ensure_running()
