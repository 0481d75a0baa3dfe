"""FeatureService: a model's sparse autoencoders (registered, listed, read) and which of their
features fire on a prompt."""

from __future__ import annotations

import grpc
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from editors.sae import SparseAutoencoder, sae_from_saelens
from editors.validation import parse_json
from service.api.auth import current_principal
from service.api.errors import abort_on_errors
from service.api.resources import parse, sae_pb
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.hosting import ModelHost
from service.registry import InvalidArgument

#: Most features per token an InspectFeatures reply lists.
MAX_TOP = 64
#: Most contexts and tokens a GetFeature reply lists, and features a SearchFeatures reply lists.
MAX_CARD = 100
#: Largest chunk of an upload.
MAX_CHUNK_BYTES = 16 << 20
#: Longest SearchFeatures query.
MAX_QUERY_CHARS = 1000


def _bounded_top(requested: int, default: int, most: int) -> int:
    """A request's ``top`` (0: ``default``), refused outside 1..``most``."""
    top = requested or default
    if not 1 <= top <= most:
        raise InvalidArgument(f"top must be 1..{most} (0: the default, {default}), got {requested}")
    return top


class FeatureService(rpc.FeatureServiceServicer, ServicerBase):
    """FeatureService: SAEs as resources of a model, and feature inspection."""

    @staticmethod
    def _fits(host: ModelHost, sae: SparseAutoencoder) -> None:
        host.surgeon.site(sae.site, "config_json.hook_name")
        if sae.d_in != host.surgeon.dims.d_model:
            raise InvalidArgument(f"the SAE reads {sae.d_in} dimensions; model {host.name!r} has d_model = "
                                  f"{host.surgeon.dims.d_model}: an SAE for another model")  # fmt: skip

    @abort_on_errors
    def CreateSae(self, request: pb.CreateSaeRequest, context: grpc.ServicerContext) -> pb.Sae:
        (model,) = parse("model", request.parent)
        host = self._host(model)
        config = parse_json("config_json", request.config_json)
        if not isinstance(config, dict):
            raise InvalidArgument("config_json must be a JSON object: SAELens's cfg.json")
        actor = current_principal().name
        if request.upload_id and request.weights:
            raise InvalidArgument("give weights or upload_id, not both")
        blob = self.registry.upload_bytes(request.upload_id, actor) if request.upload_id else request.weights
        try:
            weights = load_safetensors(blob)
        except (SafetensorError, ValueError) as error:
            source = f"upload {request.upload_id!r}" if request.upload_id else "weights"
            raise InvalidArgument(f"{source} is not a safetensors file ({error})") from None
        sae = sae_from_saelens(config, weights, None, "the request")
        self._fits(host, sae)
        info = self.registry.create_sae(
            model,
            request.name,
            sae,
            blob,
            config,
            actor,
            request.description,
            request.request_id or None,
            request.upload_id or None,
        )
        return sae_pb(info)

    @abort_on_errors
    def UploadChunk(self, request: pb.UploadChunkRequest, context: grpc.ServicerContext) -> pb.UploadStatus:
        if len(request.data) > MAX_CHUNK_BYTES:
            raise InvalidArgument(f"data is {len(request.data)} bytes; a chunk holds at most {MAX_CHUNK_BYTES}")
        if request.offset < 0:
            raise InvalidArgument(f"offset must be 0 or more, got {request.offset}")
        received = self.registry.append_upload_chunk(
            request.upload_id, request.offset, request.data, current_principal().name
        )
        return pb.UploadStatus(upload_id=request.upload_id, received_bytes=received)

    @abort_on_errors
    def GetSae(self, request: pb.GetSaeRequest, context: grpc.ServicerContext) -> pb.Sae:
        model, name = parse("sae", request.name)
        return sae_pb(self.registry.get_sae(model, name))

    @abort_on_errors
    def ListSaes(self, request: pb.ListSaesRequest, context: grpc.ServicerContext) -> pb.ListSaesResponse:
        (model,) = parse("model", request.parent)
        page = self.registry.list_saes(model, request.page_size or 50, request.page_token)
        return pb.ListSaesResponse(saes=[sae_pb(s) for s in page.items], next_page_token=page.next_page_token)

    @abort_on_errors
    def InspectFeatures(
        self, request: pb.InspectFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.InspectFeaturesResponse:
        model, name = parse("sae", request.sae)
        host = self._host(model)
        top = _bounded_top(request.top, 5, MAX_TOP)
        sae = host.sae(name)
        ids = host.prompt_ids(request.prompt)
        version = request.version if request.HasField("version") else 0
        stack = host.stack(version)

        def run() -> torch.Tensor:
            with torch.inference_mode(), host.surgeon.trace([sae.site], stack.edits) as cache:
                host.model(input_ids=ids.unsqueeze(0).to(host.device))
            x = cache[sae.site][0].float()
            acts = sae.encode(x)  # once: the features and the error term both come from it
            return torch.cat([acts, (x - sae.decode(acts)).norm(dim=-1, keepdim=True)], -1)

        out = host.forward(run).cpu()
        features, errors = out[:, :-1], out[:, -1]
        tokens = host.tokenizer.convert_ids_to_tokens(ids.tolist())
        replies = []
        for position, (row, token) in enumerate(zip(features, tokens, strict=True)):
            firing = int((row > 0).sum())
            values, indices = row.topk(min(top, firing)) if firing else (row[:0], row[:0].long())
            replies.append(
                pb.TokenFeatures(
                    position=position,
                    token=token,
                    features=[
                        pb.FeatureActivation(feature=int(i), activation=float(v))
                        for v, i in zip(values, indices, strict=True)
                    ],
                    active=firing,
                    error_norm=float(errors[position]),
                )
            )
        return pb.InspectFeaturesResponse(tokens=replies, version=f"models/{model}/versions/{version}")

    @staticmethod
    def _index_span(max_texts: int) -> int:
        if max_texts < 0:
            raise InvalidArgument(f"max_texts must be 0 (the whole corpus) or more, got {max_texts}")
        return max_texts

    @abort_on_errors
    def GetFeature(self, request: pb.GetFeatureRequest, context: grpc.ServicerContext) -> pb.Feature:
        model, name = parse("sae", request.sae)
        host = self._host(model)
        top = _bounded_top(request.top, 10, MAX_CARD)
        sae = host.sae(name)
        if not 0 <= request.feature < sae.d_sae:
            raise InvalidArgument(f"feature must be 0..{sae.d_sae - 1}: the SAE's features, got {request.feature}")
        index = host.feature_index(name, self._index_span(request.max_texts))
        card = index.card(request.feature, top)
        return pb.Feature(
            sae=request.sae,
            feature=card.feature,
            density=card.density,
            max_activation=card.max_activation,
            contexts=[pb.FeatureContext(text=c.text, token=c.token, activation=c.activation) for c in card.contexts],
            promoted=[pb.TokenEffect(token=t, logit=v) for t, v in card.promoted],
            suppressed=[pb.TokenEffect(token=t, logit=v) for t, v in card.suppressed],
            texts=len(index.texts),
        )

    @abort_on_errors
    def SearchFeatures(
        self, request: pb.SearchFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.SearchFeaturesResponse:
        model, name = parse("sae", request.sae)
        host = self._host(model)
        top = _bounded_top(request.top, 10, MAX_CARD)
        if not request.query.split():
            raise InvalidArgument("query has no words: give the words to look for (e.g. 'Paris capital')")
        if len(request.query) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"query is {len(request.query)} characters; at most {MAX_QUERY_CHARS}")
        index = host.feature_index(name, self._index_span(request.max_texts))
        matches = index.search(request.query, top)
        return pb.SearchFeaturesResponse(
            features=[
                pb.FeatureMatch(
                    feature=m.feature,
                    score=m.score,
                    contexts_matched=m.contexts_matched,
                    contexts=m.contexts,
                    promoted_matched=m.promoted_matched,
                    promoted=m.promoted,
                    tokens=m.tokens,
                    density=index.density(m.feature),
                    max_activation=index.max_activation(m.feature),
                )
                for m in matches
            ],
            texts=len(index.texts),
        )
