"""CheckService: suites, starting runs, reading and watching them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc

from editors.validation import parse_json
from service.api.auth import current_principal
from service.api.errors import abort_on_errors, abort_on_errors_stream
from service.api.resources import parse, run_pb
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.checks import Suite


class CheckService(rpc.CheckServiceServicer, ServicerBase):
    """CheckService: suites, starting runs, reading and watching them."""

    @abort_on_errors
    def GetSuite(self, request: pb.GetSuiteRequest, context: grpc.ServicerContext) -> pb.Suite:
        (model,) = parse("model", request.model)
        digest, spec = self.registry.get_suite(model)
        return pb.Suite(model=request.model, suite_sha256=digest, spec_json=json.dumps(spec, sort_keys=True))

    @abort_on_errors
    def SetSuite(self, request: pb.SetSuiteRequest, context: grpc.ServicerContext) -> pb.Suite:
        (model,) = parse("model", request.model)
        host = self._host(model)
        spec = parse_json("spec_json", request.spec_json, "a JSON object describing the suite")
        Suite.from_spec(spec, host.model_dir)
        digest = self.registry.set_suite(model, spec, current_principal().name)
        return pb.Suite(model=request.model, suite_sha256=digest, spec_json=json.dumps(spec, sort_keys=True))

    @abort_on_errors
    def StartRun(self, request: pb.StartRunRequest, context: grpc.ServicerContext) -> pb.CheckRun:
        model, number = parse("version", request.version)
        self._host(model)
        return run_pb(self.checks.start(model, int(number), current_principal().name, request.request_id or None))

    @abort_on_errors
    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.CheckRun:
        return run_pb(self.registry.get_check_run(request.id))

    @abort_on_errors
    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> pb.ListRunsResponse:
        if "/versions/" in request.parent:
            model, number = parse("version", request.parent)
            version: int | None = int(number)
        else:
            (model,), version = parse("model", request.parent), None
        page = self.registry.list_check_runs(model, version, request.page_size or 50, request.page_token)
        return pb.ListRunsResponse(runs=[run_pb(run) for run in page.items], next_page_token=page.next_page_token)

    @abort_on_errors_stream
    def WatchRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> Iterator[pb.RunProgress]:
        info = self.registry.get_check_run(request.id)
        last = None
        while info.state == "running" and context.is_active():
            progress = self.checks.wait_for_change(request.id, last)
            if progress is not None and progress != last:
                last = progress
                yield pb.RunProgress(
                    run_id=request.id,
                    done=progress.done,
                    total=progress.total,
                    current=progress.current,
                    state=progress.state,
                )
            info = self.registry.get_check_run(request.id)
        yield pb.RunProgress(run_id=request.id, done=1, total=1, current="done", state=info.state, run=run_pb(info))
