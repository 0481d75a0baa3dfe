"""What every service shares: the registry, the hosted models, the check scheduler, metrics and the
replica's alias cache."""

from __future__ import annotations

from typing import Protocol

from service.aliases import AliasCache
from service.checks.runs import CheckScheduler
from service.defaults import DEFAULT_LOCATE_MAX_PASSES
from service.hosting import ModelHost
from service.metrics import Metrics
from service.registry import NotFound, Registry
from service.server_config import ModelSpec


class ModelLoader(Protocol):
    """Loading and unloading models while the server runs (the server itself)."""

    def load_model(self, name: str, spec: ModelSpec, actor: str) -> ModelHost: ...

    def unload_model(self, name: str, actor: str, force: bool = False) -> None: ...


class ServicerBase:
    """State shared by the services of one server."""

    def __init__(
        self,
        registry: Registry,
        hosts: dict[str, ModelHost],
        checks: CheckScheduler,
        metrics: Metrics,
    ) -> None:
        self.registry = registry
        self.hosts = hosts
        self.checks = checks
        self.metrics = metrics
        self.aliases: AliasCache | None = None
        self.loader: ModelLoader | None = None
        self.locate_max_passes = DEFAULT_LOCATE_MAX_PASSES

    def _host(self, model: str) -> ModelHost:
        host = self.hosts.get(model)
        if host is None:
            raise NotFound(f"model {model!r} is not hosted by this server")
        return host
