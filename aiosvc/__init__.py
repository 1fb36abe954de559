"""aiosvc: Nova-style Services, Managers and Drivers for asyncio.

Layers (imports point down this list only; docs/architecture.md draws them)::

    leaves   exceptions, settings, context, loading, log, loops, clock, tasks, backends, tracing
    logic    periodic, rpc.protocol, rpc.dispatcher, manager, scheduler   (no aio-pika, no asyncpg)
    edges    transport/ (memory, amqp), store/ (memory, postgres)   chosen by URL scheme
    wiring   rpc.client, rpc.server, servicegroup, connections, capabilities, service, launcher
             api (APIService on uvicorn, aiosvc[api]: never imported here), workers
    faces    cli, __main__, testing/
"""

from .context import Context as Context
from .exceptions import AiosvcError as AiosvcError
from .exceptions import CastsFailed as CastsFailed
from .exceptions import ConfigError as ConfigError
from .exceptions import InvalidArguments as InvalidArguments
from .exceptions import InvalidTarget as InvalidTarget
from .exceptions import LoadError as LoadError
from .exceptions import MalformedMessage as MalformedMessage
from .exceptions import MessageUndeliverable as MessageUndeliverable
from .exceptions import MessagingTimeout as MessagingTimeout
from .exceptions import NoSuchMethod as NoSuchMethod
from .exceptions import RemoteError as RemoteError
from .exceptions import RPCError as RPCError
from .exceptions import ServiceError as ServiceError
from .exceptions import ServiceNotFound as ServiceNotFound
from .exceptions import StoreError as StoreError
from .exceptions import TransportError as TransportError
from .exceptions import UnsupportedVersion as UnsupportedVersion

__version__ = "0.1.0"

from .launcher import launch as launch
from .loading import load_object as load_object
from .loops import loop_factory as loop_factory
from .manager import Manager as Manager
from .periodic import periodic_task as periodic_task
from .rpc.client import RPCClient as RPCClient
from .scheduler import HostCapabilities as HostCapabilities
from .scheduler import SchedulerManager as SchedulerManager
from .service import Service as Service
from .servicegroup import ServiceGroup as ServiceGroup
from .settings import Settings as Settings
from .store import ServiceRecord as ServiceRecord
from .store import ServiceStore as ServiceStore
from .transport import Transport as Transport
from .transport import connect as connect

__all__ = [
    "AiosvcError",
    "CastsFailed",
    "ConfigError",
    "Context",
    "HostCapabilities",
    "InvalidArguments",
    "InvalidTarget",
    "LoadError",
    "MalformedMessage",
    "Manager",
    "MessageUndeliverable",
    "MessagingTimeout",
    "NoSuchMethod",
    "RPCClient",
    "RPCError",
    "RemoteError",
    "SchedulerManager",
    "Service",
    "ServiceError",
    "ServiceGroup",
    "ServiceNotFound",
    "ServiceRecord",
    "ServiceStore",
    "Settings",
    "StoreError",
    "Transport",
    "TransportError",
    "UnsupportedVersion",
    "__version__",
    "connect",
    "launch",
    "load_object",
    "loop_factory",
    "periodic_task",
]
