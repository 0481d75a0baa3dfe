"""Check suites and check runs (claims, heartbeats, progress, interruption)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import (
    CheckRun,
    CheckSuite,
    CurrentSuite,
    ModelRow,
    VersionRow,
)
from service.registry import audit
from service.registry.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from service.registry.infos import (
    RunInfo,
)
from service.registry.unit_of_work import (
    RUN_STATES,
    Page,
    UnitOfWork,
    utc_now,
)


class CheckStore(UnitOfWork):
    """Check suites and check runs (claims, heartbeats, progress, interruption)."""

    def set_suite(self, model: str, spec: dict[str, Any], actor: str) -> str:
        """Make ``spec`` the model's current check suite; returns its SHA-256."""
        try:
            spec_json = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"suite is not JSON: {exc}") from exc
        digest = hashlib.sha256(spec_json.encode()).hexdigest()
        with self._write() as session:
            model_row = self._model(session, model)
            suite = session.execute(
                select(CheckSuite).where(CheckSuite.model_id == model_row.id, CheckSuite.suite_sha256 == digest)
            ).scalar_one_or_none()
            if suite is None:
                suite = CheckSuite(
                    model_id=model_row.id, suite_sha256=digest, spec_json=spec_json, author=actor, created_at=utc_now()
                )
                session.add(suite)
                session.flush()
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                session.add(CurrentSuite(model_id=model_row.id, suite_id=suite.id))
            else:
                current.suite_id = suite.id
            audit.append(session, actor, "suite.set", f"models/{model}", {"suite_sha256": digest})
        return digest

    def record_check_run(
        self,
        model: str,
        version: int,
        state: str,
        results: list[dict[str, Any]],
        actor: str,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> RunInfo:
        """Record a run of the current suite on ``version`` (its status then follows this run)."""
        if state not in RUN_STATES:
            raise InvalidArgument(f"state must be one of {', '.join(RUN_STATES)}")
        with self._write() as session:
            model_row = self._model(session, model)
            version_row = self._version_row(session, model_row.id, version)
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                raise FailedPrecondition(f"model {model!r} has no check suite")
            run = CheckRun(
                version_id=version_row.id,
                suite_id=current.suite_id,
                state=state,
                results_json=json.dumps(results, sort_keys=True),
                started_at=started_at or utc_now(),
                finished_at=finished_at or (None if state == "running" else utc_now()),
            )
            session.add(run)
            session.flush()
            suite = session.get(CheckSuite, current.suite_id)
            audit.append(
                session,
                actor,
                "checks.run",
                f"models/{model}/versions/{version}",
                {"run": run.id, "state": state, "suite_sha256": suite.suite_sha256},
            )
            return RunInfo(run.id, model, version, suite.suite_sha256, state, results, run.started_at, run.finished_at)

    def get_suite(self, model: str) -> tuple[str, dict[str, Any]]:
        """The model's current suite: (SHA-256, spec)."""
        with self._read() as session:
            model_row = self._model(session, model)
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                raise NotFound(f"model {model!r} has no check suite")
            suite = session.get(CheckSuite, current.suite_id)
            return suite.suite_sha256, json.loads(suite.spec_json)

    def _run_info(self, session: Session, run: CheckRun) -> RunInfo:
        version = session.get(VersionRow, run.version_id)
        model = session.get(ModelRow, version.model_id)
        suite = session.get(CheckSuite, run.suite_id)
        return RunInfo(
            run.id,
            model.name,
            version.number,
            suite.suite_sha256,
            run.state,
            json.loads(run.results_json),
            run.started_at,
            run.finished_at,
            run.claimed_by,
        )

    def start_check_run(
        self,
        model: str,
        version: int,
        actor: str,
        claimed_by: str | None = None,
        request_id: str | None = None,
    ) -> RunInfo:
        """A ``running`` run of the current suite on ``version``, claimed by replica ``claimed_by``;
        finish it with :meth:`finish_check_run` and keep it alive with :meth:`heartbeat`. A repeated
        ``request_id`` returns the run it started (in whatever state it is now)."""

        def create(session: Session) -> int:
            model_row = self._model(session, model)
            version_row = self._version_row(session, model_row.id, version)
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                raise FailedPrecondition(f"model {model!r} has no check suite")
            now = utc_now()
            run = CheckRun(
                version_id=version_row.id,
                suite_id=current.suite_id,
                state="running",
                results_json="[]",
                started_at=now,
                finished_at=None,
                claimed_by=claimed_by,
                heartbeat_at=now,
            )
            session.add(run)
            session.flush()
            audit.append(session, actor, "checks.started", f"models/{model}/versions/{version}", {"run": run.id})
            return run.id

        return self._idempotent(
            request_id,
            "start_check_run",
            create,
            lambda s, i: self._run_info(s, s.get(CheckRun, i)),
            actor,
            [model, version],
        )

    def finish_check_run(self, run_id: int, state: str, results: list[dict[str, Any]], actor: str) -> RunInfo:
        if state not in ("passed", "failed", "interrupted"):
            raise InvalidArgument("a run finishes as passed, failed or interrupted")
        with self._write() as session:
            run = session.get(CheckRun, run_id)
            if run is None:
                raise NotFound(f"check run {run_id} does not exist")
            if run.state != "running":
                raise FailedPrecondition(f"check run {run_id} already finished as {run.state!r}")
            run.state, run.results_json, run.finished_at = state, json.dumps(results, sort_keys=True), utc_now()
            info = self._run_info(session, run)
            audit.append(
                session,
                actor,
                "checks.finished",
                f"models/{info.model}/versions/{info.version}",
                {"run": run_id, "state": state},
            )
            return info

    def get_check_run(self, run_id: int) -> RunInfo:
        with self._read() as session:
            run = session.get(CheckRun, run_id)
            if run is None:
                raise NotFound(f"check run {run_id} does not exist")
            return self._run_info(session, run)

    def list_check_runs(
        self, model: str, version: int | None = None, page_size: int = 50, page_token: str = ""
    ) -> Page:
        """A model's check runs (of one version, if given), newest first."""
        with self._read() as session:
            model_id = self._model(session, model).id
            query = select(CheckRun).join(VersionRow, CheckRun.version_id == VersionRow.id)
            query = query.where(VersionRow.model_id == model_id)
            if version is not None:
                query = query.where(CheckRun.version_id == self._version_row(session, model_id, version).id)
        return self._page(query, CheckRun.id, page_size, page_token, self._run_info)

    def ever_passed(self, model: str, version: int) -> bool:
        """Whether any run, under any suite, passed ``version`` (the base always counts as passed)."""
        if version == 0:
            return True
        with self._read() as session:
            row = self._version_row(session, self._model(session, model).id, version)
            passed = select(CheckRun.id).where(CheckRun.version_id == row.id, CheckRun.state == "passed")
            return session.execute(passed.limit(1)).first() is not None

    def heartbeat(self, run_id: int, progress: tuple[int, int, str] | None = None) -> None:
        """The executing replica is alive, and (optionally) how far the run is: (done, total, current
        check). Operational metadata, so no audit event."""
        values: dict[str, Any] = {"heartbeat_at": utc_now()}
        if progress is not None:
            values.update(progress_done=progress[0], progress_total=progress[1], progress_current=progress[2][:100])
        with self._sessions.begin() as session:
            session.execute(update(CheckRun).where(CheckRun.id == run_id, CheckRun.state == "running").values(**values))

    def heartbeat_runs(self, run_ids: list[int]) -> None:
        """The replica holding these runs (queued or running) is alive: one write for all of them."""
        with self._sessions.begin() as session:
            session.execute(
                update(CheckRun)
                .where(CheckRun.id.in_(run_ids), CheckRun.state == "running")
                .values(heartbeat_at=utc_now())
            )

    def run_progress(self, run_id: int) -> tuple[str, int, int, str]:
        """(state, done, total, current) of a run, as its executing replica last reported."""
        with self._read() as session:
            row = session.execute(
                select(
                    CheckRun.state, CheckRun.progress_done, CheckRun.progress_total, CheckRun.progress_current
                ).where(CheckRun.id == run_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"check run {run_id} does not exist")
        return row[0], row[1], row[2], row[3]

    def interrupt_stale_runs(self, actor: str, stale_after_seconds: float) -> list[int]:
        """Mark interrupted every running run whose executor has not sent a heartbeat for
        ``stale_after_seconds`` (it died); runs other replicas are executing are left alone."""
        cutoff = utc_now() - timedelta(seconds=stale_after_seconds)
        with self._write() as session:
            runs = (
                session.execute(
                    select(CheckRun)
                    .where(
                        CheckRun.state == "running",
                        (CheckRun.heartbeat_at.is_(None)) | (CheckRun.heartbeat_at <= cutoff),
                    )
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for run in runs:
                run.state, run.finished_at = "interrupted", utc_now()
                audit.append(
                    session,
                    actor,
                    "checks.interrupted",
                    f"runs/{run.id}",
                    {"run": run.id, "claimed_by": run.claimed_by},
                )
            return [run.id for run in runs]
