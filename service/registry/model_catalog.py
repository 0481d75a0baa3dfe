"""Registering and reading hosted base models."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import (
    AliasRow,
    ModelLineage,
    ModelRow,
    VersionRow,
)
from service.registry import audit
from service.registry.errors import (
    AlreadyExists,
    ArtifactIntegrityError,
    FailedPrecondition,
    InvalidArgument,
)
from service.registry.infos import (
    ModelInfo,
)
from service.registry.unit_of_work import (
    Page,
    UnitOfWork,
    new_etag,
    utc_now,
)


class ModelCatalog(UnitOfWork):
    """Registering and reading hosted base models."""

    @staticmethod
    def _model_info(session: Session, row: ModelRow) -> ModelInfo:
        lineage = session.get(ModelLineage, row.id)
        predecessor = session.get(ModelRow, lineage.predecessor_id).name if lineage else None
        return ModelInfo(row.name, row.source, row.weights_sha256, row.created_by, row.created_at, predecessor)

    def record_serving(self, model: str, action: str, actor: str, payload: dict[str, object]) -> None:
        """An audit event for a model this replica started or stopped serving (``model.loaded`` /
        ``model.unloaded``): who, from where, on which device; the tables do not change."""
        with self._write() as session:
            self._model(session, model)
            audit.append(session, actor, action, f"models/{model}", payload)

    def register_model(
        self, name: str, source: str, weights_sha256: str, actor: str, request_id: str | None = None
    ) -> ModelInfo:
        """Register a base model; creates its version 0 (the base) and the ``production`` alias on it."""
        if not isinstance(name, str) or not name or len(name) > 200 or "/" in name:
            raise InvalidArgument("model name must be 1-200 characters without '/'")
        if not isinstance(weights_sha256, str) or len(weights_sha256) != 64:
            raise InvalidArgument("weights_sha256 must be a 64-character hex SHA-256")

        def create(session: Session) -> int:
            if session.execute(select(ModelRow.id).where(ModelRow.name == name)).first():
                raise AlreadyExists(f"model {name!r} is already registered")
            now = utc_now()
            model = ModelRow(name=name, source=source, weights_sha256=weights_sha256, created_by=actor, created_at=now)
            session.add(model)
            session.flush()
            base = VersionRow(
                model_id=model.id, number=0, parent_id=None, author=actor, description="base model", created_at=now
            )
            session.add(base)
            session.flush()
            session.add(
                AliasRow(
                    model_id=model.id,
                    name="production",
                    version_id=base.id,
                    etag=new_etag(),
                    updated_by=actor,
                    updated_at=now,
                )
            )
            audit.append(
                session,
                actor,
                "model.registered",
                f"models/{name}",
                {"source": source, "weights_sha256": weights_sha256},
            )
            return model.id

        return self._idempotent(
            request_id,
            "register_model",
            create,
            lambda s, i: self._model_info(s, s.get(ModelRow, i)),
            actor,
            [name, source, weights_sha256],
        )

    def get_model(self, name: str) -> ModelInfo:
        with self._read() as session:
            return self._model_info(session, self._model(session, name))

    def list_models(self, page_size: int = 50, page_token: str = "") -> Page:
        return self._page(select(ModelRow), ModelRow.id, page_size, page_token, self._model_info)

    def register_successor(self, model: str, predecessor: str, actor: str, request_id: str | None = None) -> ModelInfo:
        """Record ``model`` as a newer checkpoint of ``predecessor`` (the caller has checked that
        they share family, shapes and vocabulary): versions of ``predecessor`` may then be rebased
        onto it. A model has one predecessor for good; naming the same one again changes nothing."""
        if model == predecessor:
            raise InvalidArgument(f"model {model!r} cannot succeed itself")

        def create(session: Session) -> int:
            successor_row, predecessor_row = self._model(session, model), self._model(session, predecessor)
            known = session.get(ModelLineage, successor_row.id)
            if known is not None:
                if known.predecessor_id == predecessor_row.id:
                    return successor_row.id
                named = session.get(ModelRow, known.predecessor_id).name
                raise FailedPrecondition(f"model {model!r} already succeeds {named!r}; a model has one predecessor")
            ancestor = session.get(ModelLineage, predecessor_row.id)
            while ancestor is not None:  # a cycle would make every rebase ambiguous
                if ancestor.predecessor_id == successor_row.id:
                    raise InvalidArgument(
                        f"model {predecessor!r} already descends from {model!r}: lineage has no cycles"
                    )
                ancestor = session.get(ModelLineage, ancestor.predecessor_id)
            session.add(
                ModelLineage(
                    model_id=successor_row.id, predecessor_id=predecessor_row.id, created_by=actor, created_at=utc_now()
                )
            )
            audit.append(
                session,
                actor,
                "model.successor_registered",
                f"models/{model}",
                {
                    "predecessor": predecessor,
                    "weights_sha256": successor_row.weights_sha256,
                    "predecessor_weights_sha256": predecessor_row.weights_sha256,
                },
            )
            return successor_row.id

        return self._idempotent(
            request_id,
            "register_successor",
            create,
            lambda s, i: self._model_info(s, s.get(ModelRow, i)),
            actor,
            [model, predecessor],
        )

    def predecessor(self, model: str) -> str | None:
        """The model ``model`` succeeds, checked against the audit log (DATA_LOSS where the lineage
        row was written or changed outside Scalpel)."""
        recorded = self.get_model(model).predecessor
        logged = self._logged_payload("model.successor_registered", f"models/{model}")
        if recorded != (logged or {}).get("predecessor"):
            raise ArtifactIntegrityError(
                f"models/{model}'s lineage names {recorded!r} but the audit log recorded "
                f"{(logged or {}).get('predecessor')!r}: the row was changed outside Scalpel; refusing to use it"
            )
        return recorded
