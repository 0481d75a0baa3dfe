"""Check runs in the background while traffic is served, with progress that callers can watch.

A run is alive from the moment it is started, waiting in the queue or running: one heartbeat
thread keeps every run this replica holds fresh, so the stale-run sweep interrupts only the runs of
a replica that died. A run cut by the infrastructure (the server stopping, the model unloaded, the
database gone) ends ``interrupted``, never ``failed``: a verdict on a version comes only from
checks that ran, and an interrupted run can be rerun."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from sqlalchemy.exc import DBAPIError

from service.checks import CheckResult, CheckRunner, Suite
from service.engine.scheduler import SchedulerClosed
from service.hosting import ModelHost
from service.metrics import Metrics
from service.registry import Registry
from service.registry.registry import RunInfo

_LOG = logging.getLogger(__name__)

#: How often the runs a replica holds refresh their claim (at most; well under ServerConfig.stale_run_seconds).
HEARTBEAT_SECONDS = 3.0

#: Failures of the infrastructure rather than verdicts on the version: the run ends interrupted.
INFRASTRUCTURE = (SchedulerClosed, DBAPIError)


@dataclass(frozen=True)
class Progress:
    run_id: int
    done: int
    total: int
    current: str
    state: str


class CheckScheduler:
    """Starts runs on a small worker pool; keeps each run's latest progress for watchers."""

    def __init__(
        self,
        registry: Registry,
        hosts: dict[str, ModelHost],
        metrics: Metrics,
        workers: int = 1,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.hosts = hosts
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="checks")
        self.changed = threading.Condition()
        self.progress: dict[int, Progress] = {}
        self.replica = uuid.uuid4().hex[:12]  # this process's name on the runs it claims
        #: Runs this replica holds (queued or running): (model, the actor it finishes as).
        self._held: dict[int, tuple[str, str]] = {}
        self._started: set[int] = set()  # the held runs a worker has begun
        self._stopped = threading.Event()
        self.heartbeat_seconds = heartbeat_seconds
        threading.Thread(target=self._heartbeats, name="check-heartbeats", daemon=True).start()

    def start(self, model: str, version: int, actor: str, request_id: str | None = None) -> RunInfo:
        host = self.hosts[model]
        _, spec = self.registry.get_suite(model)
        suite = Suite.from_spec(spec, host.model_dir)
        host.stack(version)  # fails now (NOT_FOUND / integrity) rather than in the background
        run = self.registry.start_check_run(model, version, actor, claimed_by=self.replica, request_id=request_id)
        with self.changed:
            repeated = run.id in self.progress or run.state != "running" or run.claimed_by != self.replica
        if repeated:  # a retried request_id: the first call started (or finished) this run already
            return run
        self._publish(Progress(run.id, 0, 0, "queued", "running"))
        with self.changed:
            self._held[run.id] = (model, actor)
        self.pool.submit(self._execute, host, suite, run, actor)
        return run

    def _execute(self, host: ModelHost, suite: Suite, run: RunInfo, actor: str) -> None:
        with self.changed:
            if run.id not in self._held:  # the server stopped while it waited: already interrupted
                return
            self._started.add(run.id)

        def report(done: int, total: int, name: str) -> None:
            self._publish(Progress(run.id, done, total, name, "running"))
            with contextlib.suppress(Exception):  # progress is best effort; the result is not
                self.registry.heartbeat(run.id, (done, total, name))

        try:
            results = CheckRunner(host, self.registry).run(suite, run.version, report)
            state = "passed" if all(r.passed for r in results) else "failed"
            payload = [asdict(r) for r in results]
        except INFRASTRUCTURE as exc:  # no verdict: the run can be rerun
            state, payload = "interrupted", [asdict(_error(exc))]
        except Exception as exc:  # the run fails, with the reason, instead of vanishing
            state, payload = "failed", [asdict(_error(exc))]
        self._finish(run.id, host.name, state, payload, actor)

    def _finish(self, run_id: int, model: str, state: str, payload: list[dict], actor: str) -> None:
        """Record the run's end. With the database away it stays ``running`` without heartbeats,
        and the stale-run sweep (this replica's next start, or any other replica) interrupts it."""
        with self.changed:
            self._held.pop(run_id, None)
            self._started.discard(run_id)
        try:
            finished = self.registry.finish_check_run(run_id, state, payload, actor)
        except DBAPIError:
            _LOG.warning("check run %d ended %s, but the database could not record it", run_id, state, exc_info=True)
            self._publish(Progress(run_id, 1, 1, "database unreachable", "running"))
            return
        self.metrics.check_runs.labels(model, finished.state).inc()
        self._publish(Progress(run_id, 1, 1, "done", finished.state))

    def _heartbeats(self) -> None:
        """Keep every held run's claim fresh, however long it waits or one check takes."""
        while not self._stopped.wait(self.heartbeat_seconds):
            with self.changed:
                held = list(self._held)
            if held:
                with contextlib.suppress(Exception):  # the database is away: the sweep decides later
                    self.registry.heartbeat_runs(held)

    def _publish(self, progress: Progress) -> None:
        with self.changed:
            self.progress[progress.run_id] = progress
            self.changed.notify_all()

    def wait_for_change(self, run_id: int, last: Progress | None, timeout: float = 0.25) -> Progress | None:
        """The run's progress once it differs from ``last`` (or after ``timeout``): from memory when
        this replica executes the run, else as the executing replica last wrote it to the database."""
        with self.changed:
            if run_id in self.progress:
                self.changed.wait_for(lambda: self.progress.get(run_id) != last, timeout=timeout)
                return self.progress.get(run_id)
        time.sleep(timeout)
        state, done, total, current = self.registry.run_progress(run_id)
        return Progress(run_id, done, total, current, state)

    def shutdown(self) -> None:
        """Stop taking runs. Runs still queued end interrupted now; the one executing ends
        interrupted when the model's scheduler closes under it."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        with self.changed:
            queued = {run_id: held for run_id, held in self._held.items() if run_id not in self._started}
            for run_id in queued:  # taken now, so no worker begins one of them later
                del self._held[run_id]
        reason = [asdict(_error(SchedulerClosed("the server stopped before the run began")))]
        for run_id, (model, actor) in queued.items():
            try:
                self._finish(run_id, model, "interrupted", reason, actor)
            except Exception:  # the database is away: the sweep decides later
                _LOG.warning("queued check run %d not marked interrupted at shutdown", run_id, exc_info=True)


def _error(exc: BaseException) -> CheckResult:
    """The one result a run that ended in an error records: the reason, and no verdict."""
    return CheckResult("error", "error", 0.0, 0.0, 0.0, 0, 0.0, "", "error", False, f"{type(exc).__name__}: {exc}")
