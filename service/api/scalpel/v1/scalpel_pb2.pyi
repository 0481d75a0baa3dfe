import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Model(_message.Message):
    __slots__ = ("name", "source", "weights_sha256", "created_by", "create_time", "served", "device", "dtype", "n_layers", "d_model", "predecessor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDECESSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    weights_sha256: str
    created_by: str
    create_time: _timestamp_pb2.Timestamp
    served: bool
    device: str
    dtype: str
    n_layers: int
    d_model: int
    predecessor: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., created_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., served: _Optional[bool] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., n_layers: _Optional[int] = ..., d_model: _Optional[int] = ..., predecessor: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "source", "device", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    device: str
    dtype: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RegisterSuccessorRequest(_message.Message):
    __slots__ = ("name", "predecessor", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREDECESSOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    predecessor: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., predecessor: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class Edit(_message.Message):
    __slots__ = ("name", "id", "kind", "spec_json", "spec_sha256", "artifacts", "author", "description", "create_time")
    class ArtifactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: int
    kind: str
    spec_json: str
    spec_sha256: str
    artifacts: _containers.ScalarMap[str, str]
    author: str
    description: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., id: _Optional[int] = ..., kind: _Optional[str] = ..., spec_json: _Optional[str] = ..., spec_sha256: _Optional[str] = ..., artifacts: _Optional[_Mapping[str, str]] = ..., author: _Optional[str] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateEditRequest(_message.Message):
    __slots__ = ("parent", "spec_json", "artifacts", "description", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    spec_json: str
    artifacts: _containers.RepeatedScalarFieldContainer[bytes]
    description: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., spec_json: _Optional[str] = ..., artifacts: _Optional[_Iterable[bytes]] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetEditRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListEditsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEditsResponse(_message.Message):
    __slots__ = ("edits", "next_page_token")
    EDITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    edits: _containers.RepeatedCompositeFieldContainer[Edit]
    next_page_token: str
    def __init__(self, edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PromptPair(_message.Message):
    __slots__ = ("positive", "negative")
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    positive: str
    negative: str
    def __init__(self, positive: _Optional[str] = ..., negative: _Optional[str] = ...) -> None: ...

class DeriveSteeringRequest(_message.Message):
    __slots__ = ("parent", "pairs", "layer", "point", "method", "scale", "description", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    pairs: _containers.RepeatedCompositeFieldContainer[PromptPair]
    layer: int
    point: str
    method: str
    scale: float
    description: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., pairs: _Optional[_Iterable[_Union[PromptPair, _Mapping]]] = ..., layer: _Optional[int] = ..., point: _Optional[str] = ..., method: _Optional[str] = ..., scale: _Optional[float] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ComputeRomeRequest(_message.Message):
    __slots__ = ("parent", "prompt", "subject", "target", "hparams_json", "on_version", "description", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    ON_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    prompt: str
    subject: str
    target: str
    hparams_json: str
    on_version: int
    description: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., prompt: _Optional[str] = ..., subject: _Optional[str] = ..., target: _Optional[str] = ..., hparams_json: _Optional[str] = ..., on_version: _Optional[int] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RomeProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "target_nll", "edit", "converged")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_NLL_FIELD_NUMBER: _ClassVar[int]
    EDIT_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    target_nll: float
    edit: Edit
    converged: bool
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., target_nll: _Optional[float] = ..., edit: _Optional[_Union[Edit, _Mapping]] = ..., converged: _Optional[bool] = ...) -> None: ...

class MemitFact(_message.Message):
    __slots__ = ("prompt", "subject", "target")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    subject: str
    target: str
    def __init__(self, prompt: _Optional[str] = ..., subject: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ComputeMemitRequest(_message.Message):
    __slots__ = ("parent", "facts", "hparams_json", "on_version", "description", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    ON_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    facts: _containers.RepeatedCompositeFieldContainer[MemitFact]
    hparams_json: str
    on_version: int
    description: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., facts: _Optional[_Iterable[_Union[MemitFact, _Mapping]]] = ..., hparams_json: _Optional[str] = ..., on_version: _Optional[int] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class MemitProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "edits")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    edits: _containers.RepeatedCompositeFieldContainer[Edit]
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ...) -> None: ...

class LocatePair(_message.Message):
    __slots__ = ("clean", "corrupted", "answer", "wrong")
    CLEAN_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    WRONG_FIELD_NUMBER: _ClassVar[int]
    clean: str
    corrupted: str
    answer: str
    wrong: str
    def __init__(self, clean: _Optional[str] = ..., corrupted: _Optional[str] = ..., answer: _Optional[str] = ..., wrong: _Optional[str] = ...) -> None: ...

class DiscoverCircuitRequest(_message.Message):
    __slots__ = ("parent", "pairs", "metric", "score_from", "target", "kinds", "steps", "held_out", "on_version", "propose", "description", "request_id", "direction", "sae")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SCORE_FROM_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    ON_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    pairs: _containers.RepeatedCompositeFieldContainer[LocatePair]
    metric: str
    score_from: int
    target: float
    kinds: _containers.RepeatedScalarFieldContainer[str]
    steps: int
    held_out: int
    on_version: int
    propose: str
    description: str
    request_id: str
    direction: str
    sae: str
    def __init__(self, parent: _Optional[str] = ..., pairs: _Optional[_Iterable[_Union[LocatePair, _Mapping]]] = ..., metric: _Optional[str] = ..., score_from: _Optional[int] = ..., target: _Optional[float] = ..., kinds: _Optional[_Iterable[str]] = ..., steps: _Optional[int] = ..., held_out: _Optional[int] = ..., on_version: _Optional[int] = ..., propose: _Optional[str] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ..., direction: _Optional[str] = ..., sae: _Optional[str] = ...) -> None: ...

class ComponentScore(_message.Message):
    __slots__ = ("name", "estimate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    estimate: float
    def __init__(self, name: _Optional[str] = ..., estimate: _Optional[float] = ...) -> None: ...

class Circuit(_message.Message):
    __slots__ = ("nodes", "faithfulness", "completeness", "discovery_faithfulness", "metric_full", "metric_empty", "clean_metric", "corrupted_metric", "passes", "ranked", "proposed", "faithfulness_low", "faithfulness_high", "completeness_low", "completeness_high")
    NODES_FIELD_NUMBER: _ClassVar[int]
    FAITHFULNESS_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FAITHFULNESS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FULL_FIELD_NUMBER: _ClassVar[int]
    METRIC_EMPTY_FIELD_NUMBER: _ClassVar[int]
    CLEAN_METRIC_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_METRIC_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    RANKED_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_FIELD_NUMBER: _ClassVar[int]
    FAITHFULNESS_LOW_FIELD_NUMBER: _ClassVar[int]
    FAITHFULNESS_HIGH_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_LOW_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_HIGH_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    faithfulness: float
    completeness: float
    discovery_faithfulness: float
    metric_full: float
    metric_empty: float
    clean_metric: float
    corrupted_metric: float
    passes: int
    ranked: _containers.RepeatedCompositeFieldContainer[ComponentScore]
    proposed: _containers.RepeatedCompositeFieldContainer[Edit]
    faithfulness_low: float
    faithfulness_high: float
    completeness_low: float
    completeness_high: float
    def __init__(self, nodes: _Optional[_Iterable[str]] = ..., faithfulness: _Optional[float] = ..., completeness: _Optional[float] = ..., discovery_faithfulness: _Optional[float] = ..., metric_full: _Optional[float] = ..., metric_empty: _Optional[float] = ..., clean_metric: _Optional[float] = ..., corrupted_metric: _Optional[float] = ..., passes: _Optional[int] = ..., ranked: _Optional[_Iterable[_Union[ComponentScore, _Mapping]]] = ..., proposed: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., faithfulness_low: _Optional[float] = ..., faithfulness_high: _Optional[float] = ..., completeness_low: _Optional[float] = ..., completeness_high: _Optional[float] = ...) -> None: ...

class CircuitProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "circuit")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    circuit: Circuit
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., circuit: _Optional[_Union[Circuit, _Mapping]] = ...) -> None: ...

class Sae(_message.Message):
    __slots__ = ("name", "site", "architecture", "d_sae", "sae_sha256", "weights_sha256", "config_json", "description", "created_by", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    D_SAE_FIELD_NUMBER: _ClassVar[int]
    SAE_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    site: str
    architecture: str
    d_sae: int
    sae_sha256: str
    weights_sha256: str
    config_json: str
    description: str
    created_by: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., site: _Optional[str] = ..., architecture: _Optional[str] = ..., d_sae: _Optional[int] = ..., sae_sha256: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., config_json: _Optional[str] = ..., description: _Optional[str] = ..., created_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSaeRequest(_message.Message):
    __slots__ = ("parent", "name", "config_json", "weights", "description", "request_id", "upload_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    name: str
    config_json: str
    weights: bytes
    description: str
    request_id: str
    upload_id: str
    def __init__(self, parent: _Optional[str] = ..., name: _Optional[str] = ..., config_json: _Optional[str] = ..., weights: _Optional[bytes] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ..., upload_id: _Optional[str] = ...) -> None: ...

class UploadChunkRequest(_message.Message):
    __slots__ = ("upload_id", "offset", "data")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    offset: int
    data: bytes
    def __init__(self, upload_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadStatus(_message.Message):
    __slots__ = ("upload_id", "received_bytes")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    received_bytes: int
    def __init__(self, upload_id: _Optional[str] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class GetSaeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListSaesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSaesResponse(_message.Message):
    __slots__ = ("saes", "next_page_token")
    SAES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    saes: _containers.RepeatedCompositeFieldContainer[Sae]
    next_page_token: str
    def __init__(self, saes: _Optional[_Iterable[_Union[Sae, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InspectFeaturesRequest(_message.Message):
    __slots__ = ("sae", "prompt", "top", "version")
    SAE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    sae: str
    prompt: str
    top: int
    version: int
    def __init__(self, sae: _Optional[str] = ..., prompt: _Optional[str] = ..., top: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class FeatureActivation(_message.Message):
    __slots__ = ("feature", "activation")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    feature: int
    activation: float
    def __init__(self, feature: _Optional[int] = ..., activation: _Optional[float] = ...) -> None: ...

class TokenFeatures(_message.Message):
    __slots__ = ("position", "token", "features", "active", "error_norm")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ERROR_NORM_FIELD_NUMBER: _ClassVar[int]
    position: int
    token: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureActivation]
    active: int
    error_norm: float
    def __init__(self, position: _Optional[int] = ..., token: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureActivation, _Mapping]]] = ..., active: _Optional[int] = ..., error_norm: _Optional[float] = ...) -> None: ...

class InspectFeaturesResponse(_message.Message):
    __slots__ = ("tokens", "version")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenFeatures]
    version: str
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenFeatures, _Mapping]]] = ..., version: _Optional[str] = ...) -> None: ...

class GetFeatureRequest(_message.Message):
    __slots__ = ("sae", "feature", "top", "max_texts")
    SAE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_FIELD_NUMBER: _ClassVar[int]
    sae: str
    feature: int
    top: int
    max_texts: int
    def __init__(self, sae: _Optional[str] = ..., feature: _Optional[int] = ..., top: _Optional[int] = ..., max_texts: _Optional[int] = ...) -> None: ...

class FeatureContext(_message.Message):
    __slots__ = ("text", "token", "activation")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    text: str
    token: str
    activation: float
    def __init__(self, text: _Optional[str] = ..., token: _Optional[str] = ..., activation: _Optional[float] = ...) -> None: ...

class TokenEffect(_message.Message):
    __slots__ = ("token", "logit")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    token: str
    logit: float
    def __init__(self, token: _Optional[str] = ..., logit: _Optional[float] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("sae", "feature", "density", "max_activation", "contexts", "promoted", "suppressed", "texts")
    SAE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    sae: str
    feature: int
    density: float
    max_activation: float
    contexts: _containers.RepeatedCompositeFieldContainer[FeatureContext]
    promoted: _containers.RepeatedCompositeFieldContainer[TokenEffect]
    suppressed: _containers.RepeatedCompositeFieldContainer[TokenEffect]
    texts: int
    def __init__(self, sae: _Optional[str] = ..., feature: _Optional[int] = ..., density: _Optional[float] = ..., max_activation: _Optional[float] = ..., contexts: _Optional[_Iterable[_Union[FeatureContext, _Mapping]]] = ..., promoted: _Optional[_Iterable[_Union[TokenEffect, _Mapping]]] = ..., suppressed: _Optional[_Iterable[_Union[TokenEffect, _Mapping]]] = ..., texts: _Optional[int] = ...) -> None: ...

class SearchFeaturesRequest(_message.Message):
    __slots__ = ("sae", "query", "top", "max_texts")
    SAE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_FIELD_NUMBER: _ClassVar[int]
    sae: str
    query: str
    top: int
    max_texts: int
    def __init__(self, sae: _Optional[str] = ..., query: _Optional[str] = ..., top: _Optional[int] = ..., max_texts: _Optional[int] = ...) -> None: ...

class FeatureMatch(_message.Message):
    __slots__ = ("feature", "score", "contexts_matched", "contexts", "promoted_matched", "promoted", "tokens", "density", "max_activation")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_MATCHED_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_MATCHED_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    feature: int
    score: float
    contexts_matched: int
    contexts: int
    promoted_matched: int
    promoted: int
    tokens: _containers.RepeatedScalarFieldContainer[str]
    density: float
    max_activation: float
    def __init__(self, feature: _Optional[int] = ..., score: _Optional[float] = ..., contexts_matched: _Optional[int] = ..., contexts: _Optional[int] = ..., promoted_matched: _Optional[int] = ..., promoted: _Optional[int] = ..., tokens: _Optional[_Iterable[str]] = ..., density: _Optional[float] = ..., max_activation: _Optional[float] = ...) -> None: ...

class SearchFeaturesResponse(_message.Message):
    __slots__ = ("features", "texts")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureMatch]
    texts: int
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureMatch, _Mapping]]] = ..., texts: _Optional[int] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("name", "number", "parent", "edit_ids", "status", "author", "description", "create_time", "origin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    EDIT_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: int
    parent: int
    edit_ids: _containers.RepeatedScalarFieldContainer[int]
    status: str
    author: str
    description: str
    create_time: _timestamp_pb2.Timestamp
    origin: str
    def __init__(self, name: _Optional[str] = ..., number: _Optional[int] = ..., parent: _Optional[int] = ..., edit_ids: _Optional[_Iterable[int]] = ..., status: _Optional[str] = ..., author: _Optional[str] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., origin: _Optional[str] = ...) -> None: ...

class CreateVersionRequest(_message.Message):
    __slots__ = ("parent", "append_edit_ids", "remove_edit_id", "description", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    APPEND_EDIT_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_EDIT_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    append_edit_ids: _containers.RepeatedScalarFieldContainer[int]
    remove_edit_id: int
    description: str
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., append_edit_ids: _Optional[_Iterable[int]] = ..., remove_edit_id: _Optional[int] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Version]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[Version, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CompareVersionsRequest(_message.Message):
    __slots__ = ("base", "candidate", "prompts", "worst")
    BASE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    WORST_FIELD_NUMBER: _ClassVar[int]
    base: str
    candidate: str
    prompts: _containers.RepeatedScalarFieldContainer[str]
    worst: int
    def __init__(self, base: _Optional[str] = ..., candidate: _Optional[str] = ..., prompts: _Optional[_Iterable[str]] = ..., worst: _Optional[int] = ...) -> None: ...

class PromptComparison(_message.Message):
    __slots__ = ("prompt", "kl", "base_top1", "candidate_top1")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    BASE_TOP1_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_TOP1_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    kl: float
    base_top1: str
    candidate_top1: str
    def __init__(self, prompt: _Optional[str] = ..., kl: _Optional[float] = ..., base_top1: _Optional[str] = ..., candidate_top1: _Optional[str] = ...) -> None: ...

class CompareVersionsResponse(_message.Message):
    __slots__ = ("kl_mean", "kl_max", "changed_top1", "prompts", "worst")
    KL_MEAN_FIELD_NUMBER: _ClassVar[int]
    KL_MAX_FIELD_NUMBER: _ClassVar[int]
    CHANGED_TOP1_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    WORST_FIELD_NUMBER: _ClassVar[int]
    kl_mean: float
    kl_max: float
    changed_top1: float
    prompts: int
    worst: _containers.RepeatedCompositeFieldContainer[PromptComparison]
    def __init__(self, kl_mean: _Optional[float] = ..., kl_max: _Optional[float] = ..., changed_top1: _Optional[float] = ..., prompts: _Optional[int] = ..., worst: _Optional[_Iterable[_Union[PromptComparison, _Mapping]]] = ...) -> None: ...

class RebaseVersionRequest(_message.Message):
    __slots__ = ("name", "onto", "description", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONTO_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    onto: str
    description: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., onto: _Optional[str] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class EditDrift(_message.Message):
    __slots__ = ("originals", "origin_edit_ids", "kind", "action", "reason", "edit_ids", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ORIGINALS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_EDIT_IDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EDIT_IDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    originals: _containers.RepeatedScalarFieldContainer[int]
    origin_edit_ids: _containers.RepeatedScalarFieldContainer[int]
    kind: str
    action: str
    reason: str
    edit_ids: _containers.RepeatedScalarFieldContainer[int]
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, originals: _Optional[_Iterable[int]] = ..., origin_edit_ids: _Optional[_Iterable[int]] = ..., kind: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., edit_ids: _Optional[_Iterable[int]] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RebaseSummary(_message.Message):
    __slots__ = ("recomputed", "carried", "flagged", "steering_cosine_min", "circuit_jaccard_min", "fact_edits", "fact_edits_held")
    RECOMPUTED_FIELD_NUMBER: _ClassVar[int]
    CARRIED_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    STEERING_COSINE_MIN_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_JACCARD_MIN_FIELD_NUMBER: _ClassVar[int]
    FACT_EDITS_FIELD_NUMBER: _ClassVar[int]
    FACT_EDITS_HELD_FIELD_NUMBER: _ClassVar[int]
    recomputed: int
    carried: int
    flagged: int
    steering_cosine_min: float
    circuit_jaccard_min: float
    fact_edits: int
    fact_edits_held: int
    def __init__(self, recomputed: _Optional[int] = ..., carried: _Optional[int] = ..., flagged: _Optional[int] = ..., steering_cosine_min: _Optional[float] = ..., circuit_jaccard_min: _Optional[float] = ..., fact_edits: _Optional[int] = ..., fact_edits_held: _Optional[int] = ...) -> None: ...

class Rebase(_message.Message):
    __slots__ = ("version", "origin", "summary", "drift")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    version: Version
    origin: str
    summary: RebaseSummary
    drift: _containers.RepeatedCompositeFieldContainer[EditDrift]
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ..., origin: _Optional[str] = ..., summary: _Optional[_Union[RebaseSummary, _Mapping]] = ..., drift: _Optional[_Iterable[_Union[EditDrift, _Mapping]]] = ...) -> None: ...

class RebaseProgress(_message.Message):
    __slots__ = ("done", "total", "rebase")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    REBASE_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    rebase: Rebase
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., rebase: _Optional[_Union[Rebase, _Mapping]] = ...) -> None: ...

class GetRebaseRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ExportVersionRequest(_message.Message):
    __slots__ = ("name", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: str
    def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("file", "offset", "data", "sha256")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    file: str
    offset: int
    data: bytes
    sha256: str
    def __init__(self, file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("name", "version", "etag", "updated_by", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    etag: str
    updated_by: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., etag: _Optional[str] = ..., updated_by: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AliasMove(_message.Message):
    __slots__ = ("action", "from_version", "to_version", "actor", "reason", "forced", "create_time")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    action: str
    from_version: int
    to_version: int
    actor: str
    reason: str
    forced: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, action: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., forced: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAliasRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ("aliases", "next_page_token")
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    next_page_token: str
    def __init__(self, aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("name", "version", "etag", "reason", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    etag: str
    reason: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., etag: _Optional[str] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "etag", "reason", "version", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    reason: str
    version: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ..., reason: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("name", "etag", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListAliasHistoryRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAliasHistoryResponse(_message.Message):
    __slots__ = ("moves", "next_page_token")
    MOVES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[AliasMove]
    next_page_token: str
    def __init__(self, moves: _Optional[_Iterable[_Union[AliasMove, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VersionSelector(_message.Message):
    __slots__ = ("alias", "version")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    version: int
    def __init__(self, alias: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "selector", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "top_k", "min_p", "repetition_penalty", "logprobs", "ignore_eos", "prompt_token_ids", "presence_penalty", "frequency_penalty", "logit_bias")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    selector: VersionSelector
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    min_p: float
    repetition_penalty: float
    logprobs: int
    ignore_eos: bool
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    presence_penalty: float
    frequency_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    def __init__(self, model: _Optional[str] = ..., selector: _Optional[_Union[VersionSelector, _Mapping]] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., logprobs: _Optional[int] = ..., ignore_eos: _Optional[bool] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("logprob", "top_token_ids", "top_logprobs")
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    logprob: float
    top_token_ids: _containers.RepeatedScalarFieldContainer[int]
    top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, logprob: _Optional[float] = ..., top_token_ids: _Optional[_Iterable[int]] = ..., top_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_id", "text", "token_ids", "logprobs")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, token_id: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class GenerateDone(_message.Message):
    __slots__ = ("version", "finish_reason", "tokens", "cached_prompt_tokens")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    version: str
    finish_reason: str
    tokens: int
    cached_prompt_tokens: int
    def __init__(self, version: _Optional[str] = ..., finish_reason: _Optional[str] = ..., tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token", "done")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    token: TokenChunk
    done: GenerateDone
    def __init__(self, token: _Optional[_Union[TokenChunk, _Mapping]] = ..., done: _Optional[_Union[GenerateDone, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "selector", "prompt", "continuations")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONTINUATIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    selector: VersionSelector
    prompt: str
    continuations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., selector: _Optional[_Union[VersionSelector, _Mapping]] = ..., prompt: _Optional[str] = ..., continuations: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("logprobs", "version")
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    version: str
    def __init__(self, logprobs: _Optional[_Iterable[float]] = ..., version: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "time", "actor", "action", "subject", "payload_json", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: str
    actor: str
    action: str
    subject: str
    payload_json: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., subject: _Optional[str] = ..., payload_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "action", "subject", "actor")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    action: str
    subject: str
    actor: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., action: _Optional[str] = ..., subject: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ("expect_head",)
    EXPECT_HEAD_FIELD_NUMBER: _ClassVar[int]
    expect_head: str
    def __init__(self, expect_head: _Optional[str] = ...) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "events_checked", "first_broken_seq", "problem", "head_seq", "head_hash", "mismatches", "head_key_id", "head_signature", "head_public_key")
    OK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BROKEN_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    HEAD_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HEAD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    events_checked: int
    first_broken_seq: int
    problem: str
    head_seq: int
    head_hash: str
    mismatches: _containers.RepeatedScalarFieldContainer[str]
    head_key_id: str
    head_signature: str
    head_public_key: str
    def __init__(self, ok: _Optional[bool] = ..., events_checked: _Optional[int] = ..., first_broken_seq: _Optional[int] = ..., problem: _Optional[str] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ..., mismatches: _Optional[_Iterable[str]] = ..., head_key_id: _Optional[str] = ..., head_signature: _Optional[str] = ..., head_public_key: _Optional[str] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("name", "prefix", "role", "created_by", "create_time", "revoke_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefix: str
    role: str
    created_by: str
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., prefix: _Optional[str] = ..., role: _Optional[str] = ..., created_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Suite(_message.Message):
    __slots__ = ("model", "suite_sha256", "spec_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SUITE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    suite_sha256: str
    spec_json: str
    def __init__(self, model: _Optional[str] = ..., suite_sha256: _Optional[str] = ..., spec_json: _Optional[str] = ...) -> None: ...

class GetSuiteRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetSuiteRequest(_message.Message):
    __slots__ = ("model", "spec_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    spec_json: str
    def __init__(self, model: _Optional[str] = ..., spec_json: _Optional[str] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("name", "metric", "threshold", "comparison", "passed", "worst_json", "kind", "ci_low", "ci_high", "n", "rule", "reason", "reference", "not_applicable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    WORST_JSON_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    NOT_APPLICABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    metric: float
    threshold: float
    comparison: str
    passed: bool
    worst_json: str
    kind: str
    ci_low: float
    ci_high: float
    n: int
    rule: str
    reason: str
    reference: str
    not_applicable: bool
    def __init__(self, name: _Optional[str] = ..., metric: _Optional[float] = ..., threshold: _Optional[float] = ..., comparison: _Optional[str] = ..., passed: _Optional[bool] = ..., worst_json: _Optional[str] = ..., kind: _Optional[str] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., n: _Optional[int] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ..., not_applicable: _Optional[bool] = ...) -> None: ...

class CheckRun(_message.Message):
    __slots__ = ("id", "version", "suite_sha256", "state", "results", "start_time", "finish_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUITE_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    version: str
    suite_sha256: str
    state: str
    results: _containers.RepeatedCompositeFieldContainer[CheckResult]
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., version: _Optional[str] = ..., suite_sha256: _Optional[str] = ..., state: _Optional[str] = ..., results: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("version", "request_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    version: str
    request_id: str
    def __init__(self, version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[CheckRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[CheckRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RunProgress(_message.Message):
    __slots__ = ("run_id", "done", "total", "current", "state", "run")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    done: int
    total: int
    current: str
    state: str
    run: CheckRun
    def __init__(self, run_id: _Optional[int] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., current: _Optional[str] = ..., state: _Optional[str] = ..., run: _Optional[_Union[CheckRun, _Mapping]] = ...) -> None: ...
