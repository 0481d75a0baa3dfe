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
        #: How fresh each alias's entry is, on a clock that every move through this replica and the
        #: start of every read advance: a read that started before a newer entry was made (a slow
        #: NOTIFY re-read, a full re-read) never replaces it, so a caller always reads its own move.
        self._as_of: dict[tuple[str, str], int] = {}
        self._clock = 0
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
        self._read_one(model, alias, missing_raises=True)
        return self.version(model, alias)

    def wrote(self, model: str, alias: str, version: int) -> None:
        """This replica moved the alias (row and audit event in one transaction): serve it now."""
        with self._lock:
            self._record((model, alias), version, "", self._tick())
        self.observe(model, alias, version)

    def forget(self, model: str, alias: str) -> None:
        """The alias was deleted through this replica: resolve it from the database from now on
        (a re-read that started earlier cannot bring it back)."""
        with self._lock:
            self._record((model, alias), None, "", self._tick())
        self.forgotten(model, alias)

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _record(self, key: tuple[str, str], version: int | None, refused: str, as_of: int) -> bool:
        """Take ``version`` for ``key`` unless the entry is fresher than ``as_of`` (caller holds the lock)."""
        if self._as_of.get(key, 0) > as_of:
            return False
        self._versions[key], self._as_of[key] = version, as_of
        if refused:
            self._refused[key] = refused
        else:
            self._refused.pop(key, None)
        return True

    def _drop(self, key: tuple[str, str], as_of: int) -> bool:
        """Forget ``key``, deleted in the database, unless the entry is fresher than ``as_of``
        (caller holds the lock); True if it had a version (its gauge goes)."""
        if self._as_of.get(key, 0) > as_of:
            return False
        self._as_of.pop(key, None)
        self._refused.pop(key, None)
        return self._versions.pop(key, None) is not None

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self.last_contact < self.unhealthy_after

    # -- keeping up -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read every alias. An entry made while the read was under way (a move through this
        replica, a NOTIFY re-read that started later) keeps its newer value."""
        with self._lock:
            as_of = self._tick()
        versions = dict(self.registry.all_aliases())
        refused = {key: self.registry.alias_problem(*key, version) for key, version in versions.items()}
        learned, gone = [], []
        with self._lock:
            for key in self._versions.keys() | versions.keys():
                if key in versions:
                    if self._record(key, versions[key], refused[key], as_of):
                        learned.append((key, versions[key]))
                elif self._drop(key, as_of):  # deleted through another replica
                    gone.append(key)
        for (model, alias), version in learned:
            self.observe(model, alias, version)
        for model, alias in gone:
            self.forgotten(model, alias)
        self.last_contact = time.monotonic()

    def _read_one(self, model: str, alias: str, missing_raises: bool = False) -> None:
        """Re-read one alias (a NOTIFY named it, or a request asked for one this cache lacks)."""
        key = (model, alias)
        with self._lock:
            as_of = self._tick()
        try:
            version = self.registry.get_alias(model, alias).version
        except NotFound:
            with self._lock:
                dropped = self._drop(key, as_of)
            if dropped:
                self.forgotten(model, alias)
            if missing_raises:
                raise
            return
        problem = self.registry.alias_problem(model, alias, version)
        with self._lock:
            taken = self._record(key, version, problem, as_of)
        if taken:
            self.observe(model, alias, version)
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
                            model, _, alias = notify.payload.partition("/")
                            self._read_one(model, alias)
                        self.last_contact = time.monotonic()  # the listening connection is alive
                        if time.monotonic() >= next_refresh:
                            self.refresh()
                            next_refresh = time.monotonic() + self.refresh_seconds
            except Exception:  # connection lost: retry; requests keep the last known versions
                self._stop.wait(min(self.poll_seconds * 2, 2.0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_seconds + 5)
