"""A model's sparse autoencoders: named, insert-only, their weights an artifact verified on every
read and their identity checked against the audit log before a replica uses them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import ModelRow, SaeRow
from service.registry import audit
from service.registry.errors import AlreadyExists, ArtifactIntegrityError, NotFound
from service.registry.infos import SaeInfo
from service.registry.unit_of_work import Page, check_name, check_text, utc_now
from service.registry.upload_store import UploadStore

if TYPE_CHECKING:
    from editors.sae import SparseAutoencoder


class SaeStore(UploadStore):
    """A model's sparse autoencoders, by name."""

    @staticmethod
    def _sae_info(session: Session, row: SaeRow) -> SaeInfo:
        model = session.get(ModelRow, row.model_id).name
        return SaeInfo(
            model,
            row.name,
            row.site,
            row.architecture,
            row.d_sae,
            row.sae_sha256,
            row.weights_sha256,
            json.loads(row.config_json),
            row.description,
            row.created_by,
            row.created_at,
        )

    def _sae_row(self, session: Session, model: str, name: str) -> SaeRow:
        row = session.execute(
            select(SaeRow).where(SaeRow.model_id == self._model(session, model).id, SaeRow.name == name)
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"SAE {name!r} of model {model!r} does not exist")
        return row

    def create_sae(
        self,
        model: str,
        name: str,
        sae: SparseAutoencoder,
        weights: bytes,
        config: dict[str, object],
        actor: str,
        description: str = "",
        request_id: str | None = None,
        upload_id: str | None = None,
    ) -> SaeInfo:
        """Store ``sae`` (parsed from ``config`` and the safetensors bytes ``weights``) as
        ``models/{model}/saes/{name}``; a name is taken for good. ``upload_id``: ``weights`` came
        from that upload, consumed in the same transaction."""
        check_name("SAE", name)
        check_text("description", description)
        config_json = json.dumps(config, sort_keys=True)

        def create(session: Session) -> int:
            model_row = self._model(session, model)
            taken = session.execute(
                select(SaeRow.id).where(SaeRow.model_id == model_row.id, SaeRow.name == name)
            ).scalar_one_or_none()
            if taken is not None:
                raise AlreadyExists(f"SAE {name!r} of model {model!r} already exists; SAEs are never replaced")
            digest = self._store_artifact(session, weights)
            if upload_id is not None:
                self._consume_upload(session, upload_id, len(weights))
            row = SaeRow(
                model_id=model_row.id,
                name=name,
                site=sae.site,
                architecture=sae.architecture,
                d_sae=sae.d_sae,
                sae_sha256=sae.sha256,
                weights_sha256=digest,
                config_json=config_json,
                description=description,
                created_by=actor,
                created_at=utc_now(),
            )
            session.add(row)
            session.flush()
            audit.append(
                session,
                actor,
                "sae.created",
                f"models/{model}/saes/{name}",
                {
                    "site": sae.site,
                    "architecture": sae.architecture,
                    "d_sae": sae.d_sae,
                    "sae_sha256": sae.sha256,
                    "weights_sha256": digest,
                },
            )
            return row.id

        request = [model, name, sae.sha256, description]
        return self._idempotent(
            request_id, "create_sae", create, lambda s, i: self._sae_info(s, s.get(SaeRow, i)), actor, request
        )

    def get_sae(self, model: str, name: str) -> SaeInfo:
        with self._read() as session:
            return self._sae_info(session, self._sae_row(session, model, name))

    def list_saes(self, model: str, page_size: int = 50, page_token: str = "") -> Page:
        with self._read() as session:
            model_id = self._model(session, model).id
        return self._page(
            select(SaeRow).where(SaeRow.model_id == model_id), SaeRow.id, page_size, page_token, self._sae_info
        )

    def load_sae(self, model: str, name: str) -> SparseAutoencoder:
        """The stored SAE, its weights verified against their SHA-256 and its identity against the
        audit log (DATA_LOSS where a row or its bytes were changed outside Scalpel)."""
        from safetensors.torch import load as load_safetensors

        from editors.sae import sae_from_saelens

        info = self.get_sae(model, name)
        logged = self._logged_payload("sae.created", f"models/{model}/saes/{name}") or {}
        sae = sae_from_saelens(info.config, load_safetensors(self.read_artifact(info.weights_sha256)), info.site)
        if not logged or logged.get("sae_sha256") != sae.sha256 or info.sae_sha256 != sae.sha256:
            raise ArtifactIntegrityError(
                f"models/{model}/saes/{name} is not the SAE the audit log recorded: it was changed outside "
                "Scalpel; refusing to use it"
            )
        return sae
