"""Uploads too large for one message, in chunks: each chunk stored at its byte offset as it
arrives (any replica may take any chunk), and consumed whole by the request that creates the
resource, in that request's transaction. A chunk sent again at an offset already held is
accepted only if its bytes are the same (a retry); a chunk past the end is refused, naming the
offset expected, so a client resumes where the upload stands. An upload left unused for
``UPLOAD_TTL`` is deleted when the next upload begins."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import UploadChunkRow
from service.registry.edit_store import EditStore
from service.registry.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from service.registry.unit_of_work import utc_now

#: An upload id: what the client names its upload by (a UUID's hex, or any 8-64 such characters).
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: How long an unused upload is kept after its last chunk.
UPLOAD_TTL = timedelta(hours=24)


class UploadStore(EditStore):
    """Chunked uploads, held in the database until used."""

    @staticmethod
    def _check_upload_id(upload_id: str) -> None:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise InvalidArgument(f"upload_id must be 8-64 letters, digits, '_' or '-', got {upload_id!r}")

    @staticmethod
    def _chunks(session: Session, upload_id: str, actor: str) -> list[UploadChunkRow]:
        """The upload's chunks in order, bytes and all (none: no upload of ``actor``'s)."""
        rows = list(
            session.execute(
                select(UploadChunkRow).where(UploadChunkRow.upload_id == upload_id).order_by(UploadChunkRow.offset)
            ).scalars()
        )
        if any(row.created_by != actor for row in rows):  # another principal's upload: not there for this one
            return []
        return rows

    @staticmethod
    def _held(session: Session, upload_id: str) -> tuple[int, set[str]]:
        """(bytes the upload holds, who sent its chunks), read without reading the chunks."""
        where = UploadChunkRow.upload_id == upload_id
        size = session.execute(select(func.coalesce(func.sum(func.length(UploadChunkRow.data)), 0)).where(where))
        senders = session.execute(select(UploadChunkRow.created_by).where(where).distinct()).scalars()
        return int(size.scalar_one()), set(senders)

    def append_upload_chunk(self, upload_id: str, offset: int, data: bytes, actor: str) -> int:
        """Store ``data`` at ``offset`` of upload ``upload_id`` (started by its first chunk, at 0)
        and return the bytes the upload now holds."""
        self._check_upload_id(upload_id)
        if not data:
            raise InvalidArgument("data is empty: send the chunk's bytes")

        try:
            with self._sessions.begin() as session:  # not the audit head's lock: chunks are not audited
                return self._append(session, upload_id, offset, data, actor)
        except IntegrityError:  # the same chunk arriving twice at once, through two replicas
            raise FailedPrecondition(f"a chunk of upload {upload_id!r} at offset {offset} arrived twice at once; "
                                     "send it again") from None  # fmt: skip

    def _append(self, session: Session, upload_id: str, offset: int, data: bytes, actor: str) -> int:
        held, senders = self._held(session, upload_id)  # the held chunks' bytes stay in the database
        if senders - {actor}:
            raise FailedPrecondition(f"upload {upload_id!r} was started by another principal")
        same = session.get(UploadChunkRow, (upload_id, offset)) if offset < held else None
        if same is not None:
            if bytes(same.data) != data:
                raise FailedPrecondition(
                    f"upload {upload_id!r} already holds other bytes at offset {offset}; send the same chunk "
                    f"again or resume at offset {held}"
                )
            return held
        if offset == 0:  # a new upload: the abandoned ones go (any whose newest chunk is past the TTL)
            stale = (
                select(UploadChunkRow.upload_id)
                .group_by(UploadChunkRow.upload_id)
                .having(func.max(UploadChunkRow.created_at) < utc_now() - UPLOAD_TTL)
            )
            session.execute(delete(UploadChunkRow).where(UploadChunkRow.upload_id.in_(stale)))
        if offset != held:
            raise FailedPrecondition(f"upload {upload_id!r} holds {held} bytes: the next chunk goes at offset {held}")
        if held + len(data) > self.max_artifact_bytes:
            raise ResourceExhausted(
                f"upload {upload_id!r} would pass the artifact limit of {self.max_artifact_bytes} bytes"
            )
        session.add(UploadChunkRow(upload_id=upload_id, offset=offset, data=data, created_by=actor,
                                   created_at=utc_now()))  # fmt: skip
        session.flush()
        return held + len(data)

    def upload_bytes(self, upload_id: str, actor: str) -> bytes:
        """The whole upload, its chunks in order (NOT_FOUND: no such upload of ``actor``'s)."""
        self._check_upload_id(upload_id)
        with self._read() as session:
            rows = self._chunks(session, upload_id, actor)
            if not rows:
                raise NotFound(f"upload {upload_id!r} does not exist (send its chunks with UploadChunk first)")
            return b"".join(bytes(row.data) for row in rows)

    @staticmethod
    def _consume_upload(session: Session, upload_id: str, size: int) -> None:
        """Delete the upload's chunks (in the transaction that used them), checking it still holds
        the ``size`` bytes that were read."""
        if UploadStore._held(session, upload_id)[0] != size:
            raise FailedPrecondition(f"upload {upload_id!r} changed while it was being used; create again")
        session.execute(delete(UploadChunkRow).where(UploadChunkRow.upload_id == upload_id))
