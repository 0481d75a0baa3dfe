"""What every alias points at, as this replica knows it.

The tables are the truth. On PostgreSQL a listener thread wakes on ``NOTIFY scalpel_alias`` and
re-reads the alias it names, re-reads everything on every (re)connect and every
``refresh_seconds`` as a safety net; on SQLite the thread polls every ``poll_seconds``. Requests
resolve aliases from memory, so a replica that loses the database keeps serving what it last
knew; :attr:`AliasCache.healthy` turns false only after ``unhealthy_after`` seconds without it.

Every target read from the database is checked against the audit log's latest move of that alias:
a row changed outside Scalpel is refused (DATA_LOSS) by every replica that reads it, as versions,
edits and check runs are. A move made through this replica is its own write and needs no check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from service.registry import ArtifactIntegrityError, NotFound, Registry
from service.registry.registry import ALIAS_CHANNEL


class AliasCache:
    def __init__(
        self,
        registry: Registry,
        poll_seconds: float = 0.5,
        refresh_seconds: float = 5.0,
        unhealthy_after: float = 30.0,
        observe: Callable[[str, str, int], None] = lambda model, alias, version: None,
        forgotten: Callable[[str, str], None] = lambda model, alias: None,
    ) -> None:
        self.registry = registry
        #: Told every (model, alias, version) this cache learns: the ``scalpel_active_version`` gauge.
        self.observe = observe
        #: Told every alias this replica deleted (the gauge drops it).
        self.forgotten = forgotten
        self.poll_seconds = poll_seconds
        self.refresh_seconds = refresh_seconds
        self.unhealthy_after = unhealthy_after
        self._versions: dict[tuple[str, str], int | None] = {}  # None: deleted here, ask the database
        #: Aliases whose row disagrees with the audit log, and why: requests through them are refused.
        self._refused: dict[tuple[str, str], str] = {}
        #: When each alias was last set from a fresher source than a full re-read (a move made
        #: through this replica, a NOTIFY), on a counter that every such write advances.
        self._written_at: dict[tuple[str, str], int] = {}
        self._writes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.last_contact = time.monotonic()
        self.refresh()
        target = self._listen if registry.engine.dialect.name == "postgresql" else self._poll
        self._thread = threading.Thread(target=target, name="alias-cache", daemon=True)
        self._thread.start()

    # -- reading --------------------------------------------------------------------------------
    def known(self, model: str, alias: str) -> int | None:
        """The version this cache knows for the alias, or None (unknown, or forgotten)."""
        with self._lock:
            return self._versions.get((model, alias))

    def version(self, model: str, alias: str) -> int:
        """The alias's version; DATA_LOSS when its row disagrees with the audit log."""
        with self._lock:
            known, refused = self._versions.get((model, alias)), self._refused.get((model, alias))
        if refused:
            raise ArtifactIntegrityError(refused)
        if known is not None:
            return known
        version = self.registry.get_alias(model, alias).version  # NotFound propagates
        self._set_read(model, alias, version)
        return self.version(model, alias)

    def _set_read(self, model: str, alias: str, version: int) -> None:
        """Record a version read from the database, refused if the audit log disagrees with it."""
        problem = self.registry.alias_problem(model, alias, version)
        with self._lock:
            if problem:
                self._refused[(model, alias)] = problem
            else:
                self._refused.pop((model, alias), None)
        self.set(model, alias, version)

    def set(self, model: str, alias: str, version: int) -> None:
        """Record a version read or written after everything this cache knew (a caller reads its
        own write at once; a re-read that started earlier never undoes it)."""
        with self._lock:
            self._writes += 1
            self._versions[(model, alias)] = version
            self._written_at[(model, alias)] = self._writes
        self.observe(model, alias, version)

    def wrote(self, model: str, alias: str, version: int) -> None:
        """This replica moved the alias (row and audit event in one transaction): serve it."""
        with self._lock:
            self._refused.pop((model, alias), None)
        self.set(model, alias, version)

    def forget(self, model: str, alias: str) -> None:
        """The alias was deleted through this replica: resolve it from the database from now on
        (a re-read that started earlier cannot bring it back: it is marked as written now)."""
        with self._lock:
            self._writes += 1
            self._versions[(model, alias)] = None
            self._written_at[(model, alias)] = self._writes
        self.forgotten(model, alias)

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self.last_contact < self.unhealthy_after

    # -- keeping up -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read every alias. An alias set while the read was under way keeps that newer value:
        the snapshot is older than it, and replacing the map wholesale would move it backwards."""
        with self._lock:
            started = self._writes
        versions: dict[tuple[str, str], int | None] = dict(self.registry.all_aliases())
        refused = {
            key: problem
            for key, version in versions.items()
            if version is not None and (problem := self.registry.alias_problem(*key, version))
        }
        with self._lock:
            for key, written in self._written_at.items():
                if written > started:
                    versions[key] = self._versions[key]
                    if key in self._refused:
                        refused[key] = self._refused[key]
                    else:
                        refused.pop(key, None)
            self._refused = refused
            gone = [key for key in self._versions if versions.get(key) is None]
            self._versions = versions
            self._written_at = {key: at for key, at in self._written_at.items() if at > started}
        for (model, alias), version in versions.items():
            if version is not None:
                self.observe(model, alias, version)
        for model, alias in gone:  # deleted through another replica
            self.forgotten(model, alias)
        self.last_contact = time.monotonic()

    def _refresh_one(self, payload: str) -> None:
        model, _, alias = payload.partition("/")
        try:
            version = self.registry.get_alias(model, alias).version
        except NotFound:
            with self._lock:
                self._versions.pop((model, alias), None)
                self._written_at.pop((model, alias), None)
                self._refused.pop((model, alias), None)
            self.forgotten(model, alias)
            return
        self._set_read(model, alias, version)
        self.last_contact = time.monotonic()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # database away: keep serving what we know; health decides
                continue

    def _listen(self) -> None:
        url = make_url(str(self.registry.engine.url.render_as_string(hide_password=False)))
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {ALIAS_CHANNEL}")
                    self.refresh()  # catch up on everything missed while disconnected
                    next_refresh = time.monotonic() + self.refresh_seconds
                    while not self._stop.is_set():
                        for notify in connection.notifies(timeout=self.poll_seconds, stop_after=1):
                            self._refresh_one(notify.payload)
                        self.last_contact = time.monotonic()  # the listening connection is alive
                        if time.monotonic() >= next_refresh:
                            self.refresh()
                            next_refresh = time.monotonic() + self.refresh_seconds
            except Exception:  # connection lost: retry; requests keep the last known versions
                self._stop.wait(min(self.poll_seconds * 2, 2.0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_seconds + 5)
