"""Models loaded and unloaded while the server runs, over the socket: the others keep serving, an
unload refuses while requests are in flight unless forced, and every change is audited."""

from __future__ import annotations

import json
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import service.hosting as serving
from service.api.scalpel.v1 import scalpel_pb2 as pb
from tests.conftest import save_tiny_llama
from tests.scheduler_hold import scheduler_held
from tests.test_registry import snapshot
from tests.test_service import _code, served  # noqa: F401  (the gRPC server fixture)


def _health(address: str, name: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=name)).status


def test_a_model_loads_while_the_others_keep_serving(served, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    from service.cli.main import main

    server, admin, reader, address = served
    path = str(save_tiny_llama(tmp_path / "llama"))
    assert _code(lambda: reader.load_model("llama", path)) == grpc.StatusCode.PERMISSION_DENIED
    real = serving.AutoModelForCausalLM.from_pretrained
    loading, finish = threading.Event(), threading.Event()

    def held(*args, **kwargs):  # the weights load waits until the toy model has served meanwhile
        loading.set()
        finish.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(serving.AutoModelForCausalLM, "from_pretrained", held)
    loaded: dict[str, pb.Model] = {}
    loader = threading.Thread(target=lambda: loaded.setdefault("model", admin.load_model("llama", path)))
    loader.start()
    assert loading.wait(60)
    assert admin.generate("toy", "The capital of Riia is", max_tokens=3).text  # served during the load
    assert _code(lambda: admin.load_model("llama", path)) == grpc.StatusCode.ALREADY_EXISTS  # it is loading
    finish.set()
    loader.join()
    monkeypatch.setattr(serving.AutoModelForCausalLM, "from_pretrained", real)

    model = loaded["model"]
    assert (model.name, model.served, model.device, model.dtype) == ("models/llama", True, "cpu", "float32")
    assert admin.generate("llama", "w1 w2 w3", max_tokens=3).version == "models/llama/versions/0"
    assert _health(address, "scalpel.v1.models/llama") == health_pb2.HealthCheckResponse.SERVING
    listed = {m.name: m.served for m in reader.models.ListModels(pb.ListModelsRequest()).models}
    assert listed == {"models/toy": True, "models/llama": True}
    event = admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(action="model.loaded")).events[0]
    assert (event.actor, event.subject) == ("admin", "models/llama")

    _, secret = server.registry.create_key("ops", "admin", "test")
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", secret)
    assert main(["models", "unload", "llama"]) == 0 and "unloaded model 'llama'" in capsys.readouterr().out
    assert _code(lambda: admin.generate("llama", "w1 w2")) == grpc.StatusCode.NOT_FOUND
    # a registered name must bring the weights it was registered with (bfloat16 ones are other weights)
    assert main(["models", "load", "llama", path, "--dtype", "bfloat16"]) == 2
    assert "refusing to serve it" in capsys.readouterr().err
    assert main(["models", "load", "llama", path]) == 0
    assert "float32" in capsys.readouterr().out
    assert admin.generate("llama", "w1 w2 w3", max_tokens=2).version == "models/llama/versions/0"


def test_an_unload_refuses_while_requests_are_in_flight_unless_forced(served, tmp_path) -> None:  # noqa: F811
    server, admin, _, address = served
    admin.load_model("llama", str(save_tiny_llama(tmp_path / "llama")))
    host = server.hosts["llama"]
    stream = admin.stream("llama", "w1 w2", version=0, max_tokens=40, ignore_eos=True)
    assert next(stream).HasField("token")
    with scheduler_held(host):  # the stream stays in flight
        assert _code(lambda: admin.unload_model("llama")) == grpc.StatusCode.FAILED_PRECONDITION
        assert "llama" in server.hosts
        forced = threading.Thread(target=admin.unload_model, args=("llama", True))
        forced.start()  # it closes the scheduler, which stops once the held job returns
        while "llama" in server.hosts:
            threading.Event().wait(0.01)
    forced.join()
    with pytest.raises(grpc.RpcError) as ended:
        list(stream)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _health(address, "scalpel.v1.models/llama") == health_pb2.HealthCheckResponse.NOT_SERVING
    event = admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(action="model.unloaded")).events[0]
    assert event.actor == "admin" and json.loads(event.payload_json) == {"forced": True, "cancelled": 1}
    assert not admin.models.GetModel(pb.GetModelRequest(name="models/llama")).served  # its rows stay


def test_bad_loads_and_unloads_are_refused_and_change_nothing(served, tmp_path) -> None:  # noqa: F811
    server, admin, _, _ = served
    before = snapshot(server.registry)
    missing = str(tmp_path / "nowhere")
    assert _code(lambda: admin.load_model("llama", missing)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.load_model("toy", missing)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.load_model("toy", str(save_tiny_llama(tmp_path / "l")))) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    assert _code(lambda: admin.load_model("bad/name", str(tmp_path / "l"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.load_model("llama", str(tmp_path / "l"), dtype="int3")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _code(lambda: admin.load_model("llama", "")) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: admin.unload_model("nosuch")) == grpc.StatusCode.NOT_FOUND
    llama = str(save_tiny_llama(tmp_path / "l2"))
    assert _code(lambda: admin.load_model("llama", llama, device="gpu7")) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as absent:  # a device this replica lacks: not the caller's typo, not a bug
        admin.load_model("llama", llama, device="cuda:99")
    assert absent.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "'cuda:99'" in absent.value.details()
    assert snapshot(server.registry) == before
    assert set(server.hosts) == {"toy"}
