"""Property-based fuzzing of every RPC through the real socket: never INTERNAL, UNKNOWN or a hang.

Requests are built from each method's protobuf descriptor: strings mix resource names that exist
with arbitrary text, numbers include the extremes, doubles NaN and infinities. Whatever the
request, the answer is a deliberate status code; a refused request appends no audit event (every
write does), and the chain verifies at the end.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient
from service.server import ScalpelServer, ServerConfig

#: Methods left out: StartRun and WatchRun start and follow background check runs (covered by
#: their own tests); everything else is fuzzed.
SKIPPED = {"StartRun", "WatchRun"}
DEADLINE_SECONDS = 30  # a call still running then counts as a hang
NAMES = [
    "models/toy",
    "models/toy/versions/0",
    "models/toy/versions/1",
    "models/toy/aliases/production",
    "models/toy/edits/1",
    "toy",
    "production",
    "blocks.1.hook_resid_pre",
]
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
_SCALARS = {
    FieldDescriptor.TYPE_STRING: st.one_of(st.sampled_from(NAMES), st.text(max_size=40)),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 5)),
    FieldDescriptor.TYPE_INT64: st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-2, 5)),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
}


def messages(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Arbitrary messages of ``descriptor``'s type (nested messages to depth 2)."""
    fields = {}
    maps = set()
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key, value = (_SCALARS[field.message_type.fields_by_name[n].type] for n in ("key", "value"))
            fields[field.name] = st.dictionaries(key, value, max_size=3)
            maps.add(field.name)
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or field.message_type.full_name.startswith("google.protobuf."):
                continue
            value = messages(field.message_type, depth + 1)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            value = st.sampled_from([v.number for v in field.enum_type.values])
        else:
            value = _SCALARS[field.type]
        repeated = field.is_repeated
        fields[field.name] = st.lists(value, max_size=3) if repeated else value
    cls = pb.__dict__.get(descriptor.name)

    @st.composite
    def build(draw: st.DrawFn) -> object:
        chosen = draw(st.sets(st.sampled_from(sorted(fields)), max_size=len(fields))) if fields else set()
        message = cls() if cls is not None else None
        for name in sorted(chosen):
            value = draw(fields[name])
            field = descriptor.fields_by_name[name]
            if name in maps:
                getattr(message, name).update(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.is_repeated:
                    getattr(message, name).extend(value)
                else:
                    getattr(message, name).CopyFrom(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
        return message

    return build()


METHODS = [
    (service, method)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if method.name not in SKIPPED
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'registry.db'}"
    from service.db.migrate import upgrade

    upgrade("head", url)
    config = ServerConfig(address="127.0.0.1:0", database_url=url, metrics_address=None, hub_downloads=False)
    server = ScalpelServer(config)  # (no hub downloads: a fuzzed LoadModel source fails at once)
    server.load_models()
    _, secret = server.registry.create_key("fuzzer", "admin", "test")
    client = ScalpelClient(f"127.0.0.1:{server.port}", secret)
    yield server, client
    client.close()
    server.stop(grace=0)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_no_request_ends_internal_unknown_or_hangs(fuzzed, service, method) -> None:
    server, client = fuzzed
    call_kind = client.channel.unary_stream if method.server_streaming else client.channel.unary_unary
    request_class = pb.__dict__[method.input_type.name]
    response_class = GetMessageClass(method.output_type)  # (google.protobuf.Empty is not in pb)
    call = call_kind(
        f"/{service.full_name}/{method.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(messages(method.input_type))
    def check(request: object) -> None:
        head = server.registry.verify_audit().head_seq
        try:
            reply = call(request, timeout=DEADLINE_SECONDS)
            if method.server_streaming:
                for _ in reply:
                    pass
        except grpc.RpcError as error:
            assert error.code() in ALLOWED, f"{method.name}({request!r:.300}) → {error.code()}: {error.details()}"
            assert server.registry.verify_audit().head_seq == head, f"refused {method.name} wrote an event"

    check()
    assert server.registry.verify_audit().ok
