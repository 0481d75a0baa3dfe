"""Check runs in the background while traffic is served, with progress that callers can watch."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from service.checks import CheckResult, CheckRunner, Suite
from service.hosting import ModelHost
from service.metrics import Metrics
from service.registry import Registry
from service.registry.registry import RunInfo

#: How often a running check refreshes its claim (keep well under ServerConfig.stale_run_seconds).
HEARTBEAT_SECONDS = 3.0


@dataclass(frozen=True)
class Progress:
    run_id: int
    done: int
    total: int
    current: str
    state: str


class CheckScheduler:
    """Starts runs on a small worker pool; keeps each run's latest progress for watchers."""

    def __init__(self, registry: Registry, hosts: dict[str, ModelHost], metrics: Metrics, workers: int = 1) -> None:
        self.registry = registry
        self.metrics = metrics
        self.hosts = hosts
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="checks")
        self.changed = threading.Condition()
        self.progress: dict[int, Progress] = {}
        self.replica = uuid.uuid4().hex[:12]  # this process's name on the runs it claims

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
        self.pool.submit(self._execute, host, suite, run, actor)
        return run

    def _execute(self, host: ModelHost, suite: Suite, run: RunInfo, actor: str) -> None:
        def report(done: int, total: int, name: str) -> None:
            self._publish(Progress(run.id, done, total, name, "running"))
            with contextlib.suppress(Exception):  # progress is best effort; the result is not
                self.registry.heartbeat(run.id, (done, total, name))

        beating = threading.Event()

        def heartbeat() -> None:  # however long one check takes, the claim stays fresh
            while not beating.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(Exception):
                    self.registry.heartbeat(run.id)

        threading.Thread(target=heartbeat, name=f"heartbeat-{run.id}", daemon=True).start()

        try:
            results = CheckRunner(host, self.registry).run(suite, run.version, report)
            state = "passed" if all(r.passed for r in results) else "failed"
            payload = [asdict(r) for r in results]
        except Exception as exc:  # the run fails, with the reason, instead of vanishing
            error = CheckResult(
                "error", "error", 0.0, 0.0, 0.0, 0, 0.0, "", "error", False, f"{type(exc).__name__}: {exc}"
            )
            state, payload = "failed", [asdict(error)]
        beating.set()
        finished = self.registry.finish_check_run(run.id, state, payload, actor)
        self.metrics.check_runs.labels(host.name, state).inc()
        self._publish(Progress(run.id, 1, 1, "done", finished.state))

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
        self.pool.shutdown(wait=False, cancel_futures=True)
