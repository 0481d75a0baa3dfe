"""A typed Python client for production callers.

client = ScalpelClient("127.0.0.1:50051", api_key="sk_…")
for chunk in client.generate("toy", "The capital of Riia is"):
    ...
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc

if TYPE_CHECKING:
    from editors import Edit  # a caller with an edit has torch loaded; the client itself needs none

#: Bytes per UploadChunk (an SAE larger than this travels in chunks; the server takes up to 16 MiB).
UPLOAD_CHUNK_BYTES = 8 << 20
#: Tries per chunk when the server is UNAVAILABLE.
UPLOAD_RETRIES = 4


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    version: str
    finish_reason: str
    cached_prompt_tokens: int = 0  # prompt tokens the server's prefix cache gave


class ExportDamaged(Exception):
    """An exported file arrived out of order, under a name that is not a plain file name, or with
    bytes that do not hash to the SHA-256 the server sent: nothing was written."""


class _BearerAuth(grpc.AuthMetadataPlugin):
    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("authorization", f"Bearer {self.key}"),), None)


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the API key on plaintext channels (call credentials need TLS)."""

    def __init__(self, key: str) -> None:
        self.metadata = (("authorization", f"Bearer {key}"),)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=tuple(details.metadata or ()) + self.metadata)  # type: ignore[attr-defined]

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)


class _RequestIds(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Gives every request that has a ``request_id`` field and leaves it empty a fresh one, before
    gRPC's retries see it: a retried create (StartRun, DeriveSteering, ComputeRome, …) returns what
    the first attempt made instead of making a second, however the caller built the request."""

    @staticmethod
    def _with_id(request):  # type: ignore[no-untyped-def]
        if "request_id" not in type(request).DESCRIPTOR.fields_by_name or request.request_id:
            return request
        stamped = type(request)()
        stamped.CopyFrom(request)
        stamped.request_id = uuid.uuid4().hex
        return stamped

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(details, self._with_id(request))

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(details, self._with_id(request))


#: gRPC's own retries, for UNAVAILABLE only (the server restarting, a replica going away). A retry
#: resends the same message, so it is safe: creates carry a request_id (set on every request that
#: has one, by _RequestIds) and alias moves an etag (a repeated move after a lost reply is ABORTED, never a
#: second move).
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": f"scalpel.v1.{service}"} for service in pb.DESCRIPTOR.services_by_name],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class ScalpelClient:
    """Stubs for every service, authenticated with an API key."""

    def __init__(
        self,
        address: str,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
        tls: bool = False,
    ) -> None:
        """Plaintext unless ``tls`` or any TLS material is given. ``root_certificates``: the CA that
        signed the server's certificate (default: the system's roots); ``client_certificate`` and
        ``client_key``: this client's identity, for servers that require client certificates."""
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ]
        if tls or root_certificates is not None or client_certificate is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
            if api_key:
                credentials = grpc.composite_channel_credentials(
                    credentials, grpc.metadata_call_credentials(_BearerAuth(api_key))
                )
            self.channel = grpc.secure_channel(address, credentials, options)
        else:
            self.channel = grpc.insecure_channel(address, options)
            if api_key:
                self.channel = grpc.intercept_channel(self.channel, _BearerInterceptor(api_key))
        self.channel = grpc.intercept_channel(self.channel, _RequestIds())
        self.models = rpc.ModelServiceStub(self.channel)
        self.edits = rpc.EditServiceStub(self.channel)
        self.features = rpc.FeatureServiceStub(self.channel)
        self.versions = rpc.VersionServiceStub(self.channel)
        self.aliases = rpc.AliasServiceStub(self.channel)
        self.inference = rpc.InferenceServiceStub(self.channel)
        self.audit = rpc.AuditServiceStub(self.channel)
        self.keys = rpc.KeyServiceStub(self.channel)
        self.checks = rpc.CheckServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ScalpelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conveniences -------------------------------------------------------------------------
    def create_edit(self, model: str, edit: Edit, description: str = "", request_id: str = "") -> pb.Edit:
        """``request_id`` defaults to a fresh one (every request's, see _RequestIds), so gRPC's
        retries of this call never create twice."""
        from editors import artifact_blobs_by_hash

        return self.edits.CreateEdit(
            pb.CreateEditRequest(
                parent=f"models/{model}",
                spec_json=edit.to_json(),
                artifacts=list(artifact_blobs_by_hash(edit).values()),
                description=description,
                request_id=request_id,
            )
        )

    def create_version(
        self,
        model: str,
        parent: int,
        append: list[int] | None = None,
        remove: int | None = None,
        description: str = "",
        request_id: str = "",
    ) -> pb.Version:
        """``request_id`` defaults to a fresh one, as for :meth:`create_edit`."""
        return self.versions.CreateVersion(
            pb.CreateVersionRequest(
                parent=f"models/{model}/versions/{parent}",
                append_edit_ids=append or [],
                remove_edit_id=remove,
                description=description,
                request_id=request_id,
            )
        )

    def rebase_version(
        self,
        model: str,
        version: int,
        onto: str,
        description: str = "",
        request_id: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.Rebase:
        """Rebase ``models/{model}/versions/{version}`` onto ``onto`` (a registered successor of
        ``model``); ``progress(done, total)`` after each edit. ``request_id`` defaults to a fresh
        one, as for :meth:`create_edit`: a retried call returns the first result."""
        updates = self.versions.RebaseVersion(
            pb.RebaseVersionRequest(
                name=f"models/{model}/versions/{version}",
                onto=f"models/{onto}",
                description=description,
                request_id=request_id,
            )
        )
        for update in updates:
            if update.HasField("rebase"):
                return update.rebase
            if progress is not None:
                progress(update.done, update.total)
        raise RuntimeError("the rebase stream ended without its result")

    def create_sae(
        self,
        model: str,
        name: str,
        folder: Path | str,
        description: str = "",
        request_id: str = "",
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> pb.Sae:
        """Register the SAE in ``folder`` (SAELens's format: cfg.json, sae_weights.safetensors) as
        ``models/{model}/saes/{name}``; ``request_id`` defaults to a fresh one. Weights larger
        than ``chunk_bytes`` travel in chunks (:meth:`upload`), not in one message."""
        folder = Path(folder)
        weights = (folder / "sae_weights.safetensors").read_bytes()
        chunked = len(weights) > chunk_bytes
        return self.features.CreateSae(
            pb.CreateSaeRequest(
                parent=f"models/{model}",
                name=name,
                config_json=(folder / "cfg.json").read_text(),
                weights=b"" if chunked else weights,
                upload_id=self.upload(weights, chunk_bytes) if chunked else "",
                description=description,
                request_id=request_id,
            )
        )

    def upload(self, blob: bytes, chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> str:
        """Send ``blob`` in chunks (UploadChunk) and return its upload id; a chunk that fails with
        UNAVAILABLE is sent again (a retry of a chunk the server holds is harmless)."""
        upload_id = uuid.uuid4().hex
        for offset in range(0, len(blob), chunk_bytes):
            request = pb.UploadChunkRequest(
                upload_id=upload_id, offset=offset, data=blob[offset : offset + chunk_bytes]
            )
            for attempt in range(UPLOAD_RETRIES):
                try:
                    self.features.UploadChunk(request)
                    break
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == UPLOAD_RETRIES - 1:
                        raise
                    time.sleep(0.2 * 2**attempt)
        return upload_id

    def inspect_features(
        self, model: str, sae: str, prompt: str, top: int = 5, version: int | None = None
    ) -> pb.InspectFeaturesResponse:
        """Which of SAE ``sae``'s features fire on each token of ``prompt`` (under ``version``)."""
        return self.features.InspectFeatures(
            pb.InspectFeaturesRequest(sae=f"models/{model}/saes/{sae}", prompt=prompt, top=top, version=version)
        )

    def get_feature(self, model: str, sae: str, feature: int, top: int = 10, max_texts: int = 0) -> pb.Feature:
        """A feature's dashboard card over the model's reference corpus (its first ``max_texts``)."""
        return self.features.GetFeature(
            pb.GetFeatureRequest(sae=f"models/{model}/saes/{sae}", feature=feature, top=top, max_texts=max_texts)
        )

    def search_features(
        self, model: str, sae: str, query: str, top: int = 10, max_texts: int = 0
    ) -> pb.SearchFeaturesResponse:
        """The features of SAE ``sae`` whose strongest contexts or logit effects match ``query``."""
        return self.features.SearchFeatures(
            pb.SearchFeaturesRequest(sae=f"models/{model}/saes/{sae}", query=query, top=top, max_texts=max_texts)
        )

    def register_successor(self, model: str, predecessor: str) -> pb.Model:
        """Record ``model`` as a newer checkpoint of ``predecessor`` (admin; both served here)."""
        return self.models.RegisterSuccessor(
            pb.RegisterSuccessorRequest(name=f"models/{model}", predecessor=f"models/{predecessor}")
        )

    def load_model(self, name: str, source: str, device: str = "", dtype: str = "") -> pb.Model:
        """Load ``source`` as ``name`` on the server and serve it (admin)."""
        return self.models.LoadModel(pb.LoadModelRequest(name=name, source=source, device=device, dtype=dtype))

    def unload_model(self, name: str, force: bool = False) -> None:
        """Stop serving ``name`` on the server (admin; ``force`` cancels requests in flight)."""
        self.models.UnloadModel(pb.UnloadModelRequest(name=f"models/{name}", force=force))

    def export_version(self, model: str, version: int, fmt: str, directory: Path | str) -> dict[str, str]:
        """Export ``version`` as ``fmt`` (merged | lora | gguf | steering) into ``directory`` (new
        or empty); return {file name: SHA-256}. The files land only once every one has arrived
        whole and matches its SHA-256; otherwise :class:`ExportDamaged` and the directory is as it was."""
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise FileExistsError(f"{directory} is not an empty directory; export into a new one")
        chunks = self.versions.ExportVersion(
            pb.ExportVersionRequest(name=f"models/{model}/versions/{version}", format=fmt)
        )
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            hashes = _receive(chunks, staging)
            directory.mkdir(exist_ok=True)
            for name in hashes:
                (staging / name).replace(directory / name)
            return hashes
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def alias(self, model: str, alias: str = "production") -> pb.Alias:
        return self.aliases.GetAlias(pb.GetAliasRequest(name=f"models/{model}/aliases/{alias}"))

    def promote(
        self,
        model: str,
        version: int,
        alias: str = "production",
        reason: str = "",
        force: bool = False,
        etag: str | None = None,
    ) -> pb.Alias:
        """Move ``alias`` to ``version``. Without ``etag`` the alias's current one is read first (a
        new alias needs none); gRPC's retries resend that same etag, so a move is never made twice."""
        if etag is None:
            etag = self._current_etag(model, alias)
        return self.aliases.Promote(
            pb.PromoteRequest(
                name=f"models/{model}/aliases/{alias}", version=version, etag=etag, reason=reason, force=force
            )
        )

    def rollback(
        self,
        model: str,
        alias: str = "production",
        version: int | None = None,
        reason: str = "",
        force: bool = False,
        etag: str | None = None,
    ) -> pb.Alias:
        """Undo the alias's last move, or move it to ``version``; ``etag`` as for :meth:`promote`."""
        if etag is None:
            etag = self.alias(model, alias).etag
        return self.aliases.Rollback(
            pb.RollbackRequest(
                name=f"models/{model}/aliases/{alias}", etag=etag, reason=reason, version=version, force=force
            )
        )

    def delete_alias(self, model: str, alias: str, reason: str = "", etag: str | None = None) -> None:
        """Delete ``alias`` (``etag``, if given, must be its current one)."""
        self.aliases.DeleteAlias(
            pb.DeleteAliasRequest(name=f"models/{model}/aliases/{alias}", etag=etag or "", reason=reason)
        )

    def _current_etag(self, model: str, alias: str) -> str:
        try:
            return self.alias(model, alias).etag
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # a new alias: created by this move
                return ""
            raise

    def stream(
        self,
        model: str,
        prompt: str | Sequence[int],
        alias: str | None = None,
        version: int | None = None,
        **options: object,
    ) -> Iterator[pb.GenerateResponse]:
        """``prompt``: text, or the model's token ids."""
        selector = (
            pb.VersionSelector(version=version)
            if version is not None
            else pb.VersionSelector(alias=alias or "production")
        )
        given = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}
        return self.inference.Generate(
            pb.GenerateRequest(model=f"models/{model}", selector=selector, **given, **options)
        )

    def generate(
        self,
        model: str,
        prompt: str | Sequence[int],
        alias: str | None = None,
        version: int | None = None,
        **options: object,
    ) -> Generation:
        text, ids, done = "", [], None
        for event in self.stream(model, prompt, alias, version, **options):
            if event.HasField("token"):
                text += event.token.text
                ids.extend(event.token.token_ids or [event.token.token_id])
            else:
                done = event.done
        assert done is not None, "the stream ended without its final message"
        return Generation(text, ids, done.version, done.finish_reason, done.cached_prompt_tokens)


def _receive(chunks: Iterator[pb.ExportChunk], directory: Path) -> dict[str, str]:
    """Write an ExportVersion stream's files into ``directory``, checking names, order and hashes."""
    hashes: dict[str, str] = {}
    current, digest, written, stream = None, hashlib.sha256(), 0, None
    try:
        for chunk in chunks:
            if chunk.file != current:
                if current is not None:
                    raise ExportDamaged(f"{current} ended without its SHA-256")
                if Path(chunk.file).name != chunk.file or chunk.file in ("", ".", "..") or chunk.file in hashes:
                    raise ExportDamaged(f"the server sent a file named {chunk.file!r}; refusing to write it")
                current, digest, written = chunk.file, hashlib.sha256(), 0
                stream = (directory / current).open("wb")
            if chunk.offset != written:
                raise ExportDamaged(f"{current}: a chunk at offset {chunk.offset}, expected {written}")
            stream.write(chunk.data)
            digest.update(chunk.data)
            written += len(chunk.data)
            if chunk.sha256:
                stream.close()
                if digest.hexdigest() != chunk.sha256:
                    raise ExportDamaged(f"{current} does not match its SHA-256 {chunk.sha256}")
                hashes[current], current = chunk.sha256, None
        if current is not None:
            raise ExportDamaged(f"the stream ended inside {current}")
        return hashes
    finally:
        if stream is not None:
            stream.close()
