"""What a handler gets: the parsed request and the services it may call."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.api.params import Params
from broker.catalog import Catalog
from broker.engines.registry import EngineRegistry
from broker.leases import LeaseManager
from broker.metrics import Metrics
from broker.nodes import NodeRegistry
from broker.reconcile import Reconciler
from broker.scheduler import SweepScheduler
from broker.settings import Settings
from broker.storage import Storage


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    storage: Storage
    catalog: Catalog
    leases: LeaseManager
    scheduler: SweepScheduler
    nodes: NodeRegistry
    reconciler: Reconciler
    engines: EngineRegistry
    metrics: Metrics


SERVICES = web.AppKey("services", Services)


@dataclass(frozen=True, slots=True)
class RequestContext:
    request: web.Request
    services: Services
    params: Params
    path_args: dict[str, str]
    mount: str
    #: The caller's token, already checked.
    token: str
    #: Goes into generated user names (Vault's token display name).
    display_name: str

    def arg(self, name: str) -> str:
        return self.path_args[name]
