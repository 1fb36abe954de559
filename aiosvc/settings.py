"""The one configuration model: :class:`Settings`.

Values come from, highest first: explicit overrides (the CLI flags), ``AIOSVC_*``
environment variables, a ``--config`` file (TOML, or ``KEY=VALUE`` lines), ``.env``
in the working directory, then the defaults below (nova's, where nova has one).

A manager that needs options of its own subclasses :class:`Settings` and names the
subclass in ``Manager.settings_class``; its fields read ``AIOSVC_<NAME>`` like the rest.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
import os
import re
import socket
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from . import backends
from .exceptions import ConfigError

__all__ = ["Settings", "redact_url"]

log = logging.getLogger(__name__)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

_toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "aiosvc_toml_file", default=None
)
# Set while loading settings that read explicit values only (Settings.load(isolated=True)).
_explicit_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aiosvc_explicit_only", default=False
)

S = TypeVar("S", bound="Settings")

# oslo.messaging's defaults, taken with rpc_wire="oslo" for the settings not given.
_OSLO_DEFAULTS: dict[str, Any] = {"control_exchange": "openstack", "amqp_durable_queues": False}

# RabbitMQ takes a message TTL of at most 2**32 - 1 ms (about 49 days).
_MAX_TTL_SECONDS = (2**32 - 1) // 1000


class Settings(BaseSettings):
    """Options every service reads (DESIGN section 4).

    Nova: ``nova.conf.service``, ``nova.conf.base``, ``oslo_messaging`` and
    ``oslo_service`` options of the same names.
    """

    model_config = SettingsConfigDict(
        env_prefix="AIOSVC_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    transport_url: str = Field(
        "memory://",
        description="Message broker: memory://, amqp://user:pass@host:5672/vhost, "
        "or several: amqp://user:pass@host1:5672,host2:5672/vhost",
    )
    database_url: str = Field(
        "memory://", description="Service store: memory:// or postgresql://user:pass@host/db"
    )
    host: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=255,
        description="This host's name: its own queue is topic.host, its row's host",
    )
    control_exchange: str = Field("aiosvc", min_length=1, description="AMQP topic exchange")
    report_interval: float = Field(
        10.0, ge=0, description="Seconds between state reports; 0 turns reporting off"
    )
    service_down_time: float = Field(
        60.0, gt=0, description="Seconds without a report after which a service is down"
    )
    periodic_enable: bool = Field(True, description="Run periodic tasks")
    periodic_interval: float = Field(
        60.0, gt=0, description="Spacing of periodic tasks declared without one"
    )
    periodic_fuzzy_delay: float = Field(
        60.0, ge=0, description="Up to this many random seconds before a task's first run"
    )
    graceful_shutdown_timeout: float = Field(
        60.0, ge=0, description="Seconds stop() waits for in-flight work; 0 waits forever"
    )
    rpc_response_timeout: float = Field(60.0, gt=0, description="Default timeout of a call")
    rpc_max_concurrency: int = Field(
        64, ge=1, description="Handlers run at once per service (AMQP prefetch)"
    )
    scheduler_topic: str = Field(
        "scheduler",
        min_length=1,
        description="Topic the services publish their capabilities to (fanout cast)",
    )
    capabilities_wait: float = Field(
        1.0,
        ge=0,
        description="Seconds a new scheduler waits for every live host's capabilities",
    )
    amqp_durable_queues: bool = Field(
        True, description="Declare the topic and topic.host queues durable"
    )
    amqp_quorum_queues: bool = Field(
        False, description="Declare them as quorum queues (survive a RabbitMQ node's loss)"
    )
    dead_letter_max_length: int = Field(
        10000,
        gt=0,
        description="Most messages the dead-letter queue <control_exchange>.dlx keeps; "
        "the oldest go first",
    )
    dead_letter_ttl: float = Field(
        604800.0,
        gt=0,
        le=_MAX_TTL_SECONDS,
        description="Seconds a dead letter is kept in <control_exchange>.dlx (default 7 days)",
    )
    rpc_wire: Literal["aiosvc", "oslo"] = Field(
        "aiosvc",
        description="RPC message format: aiosvc's own, or oslo.messaging's (to join an "
        "OpenStack deployment; AMQP only); see docs/interop.md",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="Event loop of `python -m aiosvc run`: uvloop when installed "
        "(aiosvc[uvloop]) with auto, or always asyncio's, or always uvloop's",
    )
    loop_block_warning: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="Seconds the event loop may go without running before a WARNING names "
        "the handler or periodic task holding it, with its stack; 0 turns the alarm off",
    )
    allowed_remote_exceptions: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules or classes whose remote exceptions are re-raised as themselves "
        "(comma-separated, or a JSON list)",
    )
    api_listen: str = Field(
        "0.0.0.0",
        description="IP address an API service listens on (nova's osapi_compute_listen)",
    )
    api_port: int = Field(
        8080, ge=0, le=65535, description="Port an API service listens on; 0 picks a free one"
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port the process serves Prometheus metrics on, at /metrics "
        "(aiosvc[metrics]); 0 picks a free one; unset: no metrics",
    )
    metrics_listen: str = Field(
        "127.0.0.1", description="IP address the metrics endpoint listens on"
    )
    log_level: LogLevel = Field(
        "INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    tracing: bool = Field(
        True,
        description="OpenTelemetry spans for calls, casts, their handling and periodic runs, "
        "with W3C trace context in message headers, when opentelemetry-api is installed "
        "(aiosvc[tracing]); see docs/observability.md",
    )

    # The --config file these settings were read from, so upgrade() reads it again.
    _config_file: Path | None = PrivateAttr(default=None)
    # Read from explicit values only (tests), so reload_as() reads nothing else either.
    _isolated: bool = PrivateAttr(default=False)

    @field_validator("allowed_remote_exceptions", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # oslo's ListOpt form ("a.b, c.d") as well as a JSON list, from env or a file.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return json.loads(value)
                except ValueError:
                    return value
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("rpc_wire", "event_loop", mode="before")
    @classmethod
    def _lower_wire(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_listen", "metrics_listen")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address (e.g. 0.0.0.0 for every interface, "
                "127.0.0.1 for this machine only, :: for IPv6)"
            ) from None

    @field_validator("transport_url")
    @classmethod
    def _transport_scheme(cls, value: str) -> str:
        return _check_ports(_check_scheme(value, backends.TRANSPORTS))

    @field_validator("database_url")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        return _check_scheme(value, backends.STORES)

    @model_validator(mode="after")
    def _down_time_above_interval(self) -> Self:
        # Nova raises service_down_time itself rather than flap services up and down.
        if self.report_interval and self.service_down_time <= self.report_interval:
            raised = self.report_interval * 2.5
            log.warning(
                "service_down_time (%s) must be greater than report_interval (%s); using %s",
                self.service_down_time,
                self.report_interval,
                raised,
            )
            object.__setattr__(self, "service_down_time", raised)
        return self

    @model_validator(mode="after")
    def _oslo_wire(self) -> Self:
        if self.rpc_wire != "oslo":
            return self
        if urlsplit(self.transport_url).scheme == "memory":
            raise ValueError(
                "rpc_wire='oslo' needs an AMQP transport_url (amqp://, amqps:// or rabbit://): "
                "oslo.messaging's wire is its RabbitMQ driver's; memory:// speaks aiosvc's"
            )
        # Declarations must match oslo.messaging's, or RabbitMQ refuses one side's: where
        # a setting was not given, its default is oslo's.
        for name, oslo_default in _OSLO_DEFAULTS.items():
            if name not in self.model_fields_set:
                object.__setattr__(self, name, oslo_default)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _explicit_only.get():
            return (init_settings,)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_file.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        sources += [dotenv_settings, file_secret_settings]
        return tuple(sources)

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        *,
        isolated: bool = False,
        _origins: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Self:
        """Read the settings from every source, failing early with one clear error.

        Args:
            config_file: a ``.toml`` file of ``name = value`` lines, or a dotenv file
                of ``AIOSVC_NAME=value`` lines; below the environment in priority.
            isolated: read nothing but ``overrides`` and the defaults: no environment,
                ``.env`` or file (what tests want; kept by :meth:`reload_as`).
            _origins: where some overrides came from, for error messages: a flag
                (``{"transport_url": "--transport-url"}``) or ``"--set"``.
            overrides: values that beat every source (the CLI flags).

        Raises:
            ConfigError: a value is invalid; the message names the setting, where its
                value came from (flag, environment variable, file) and the reason.
        """
        if isolated and config_file is not None:
            raise ConfigError("isolated settings read no config file")
        token = None
        kwargs: dict[str, Any] = {}
        path = None
        explicit_only = _explicit_only.set(isolated)
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            if path.suffix == ".toml":
                token = _toml_file.set(path)
            else:
                kwargs["_env_file"] = (".env", path)
        try:
            settings = cls(**kwargs, **overrides)
        except ValidationError as exc:
            given = {k: ((_origins or {}).get(k, ""), v) for k, v in overrides.items()}
            raise config_error(exc, cls._env_prefix(), given, path) from None
        except SettingsError as exc:
            raise _source_error(exc, cls._env_prefix()) from None
        finally:
            _explicit_only.reset(explicit_only)
            if token is not None:
                _toml_file.reset(token)
        settings._config_file = path
        settings._isolated = isolated
        return settings

    @classmethod
    def _env_prefix(cls) -> str:
        return cls.model_config.get("env_prefix") or ""

    @property
    def isolated(self) -> bool:
        """Whether these settings were read from explicit values only (``load(isolated=True)``)."""
        return self._isolated

    def reload_as(self, settings_cls: type[S]) -> S:
        """These settings as ``settings_cls`` (a subclass), reading its extra fields.

        The sources are read again (environment, config file), since they may hold the
        subclass's own fields; values given explicitly to :meth:`load` are kept.

        Raises:
            ConfigError: one of the subclass's own fields is invalid.
        """
        if isinstance(self, settings_cls):
            return self
        explicit = self.model_dump(include=self.model_fields_set)
        # Read the same config file again: it may hold the subclass's own fields.
        return settings_cls.load(self._config_file, isolated=self._isolated, **explicit)

    def public_dict(self) -> dict[str, Any]:
        """The settings with passwords removed from URLs, for logs and ``--help`` output."""
        data = self.model_dump()
        for key, value in data.items():
            if key.endswith("_url") and isinstance(value, str):
                data[key] = redact_url(value)
        return data


def _check_scheme(value: str, schemes: Collection[str]) -> str:
    scheme = urlsplit(value).scheme
    if not scheme:
        raise ValueError(
            f"{redact_url(value)!r} is not a URL (no scheme): "
            f"the URL scheme must be one of {', '.join(schemes)}"
        )
    if scheme not in schemes:
        raise ValueError(f"URL scheme must be one of {', '.join(schemes)}, got {scheme!r}")
    return value


def _check_ports(value: str) -> str:
    """``value`` if each of its hosts (``h1:1,h2:2`` for a list) has no port or one of 0-65535."""
    hosts = urlsplit(value).netloc.split(",")
    for host in hosts:
        if len(hosts) > 1 and not host.rpartition("@")[2]:
            raise ValueError("an empty host in the list of hosts")
        try:
            urlsplit(f"//{host}").port  # noqa: B018  (parsing it is the check)
        except ValueError as exc:
            raise ValueError(f"bad port in {host.rpartition('@')[2]!r}: {exc}") from None
    return value


def config_error(
    exc: ValidationError,
    env_prefix: str = "AIOSVC_",
    given: Mapping[str, tuple[str, Any]] | None = None,
    config_file: Path | None = None,
) -> ConfigError:
    """One ConfigError naming every bad field, where its value came from and the reason.

    Never a password. A value comes from ``given`` (the fields passed explicitly, each
    as ``(flag, value)``, the flag being ``"--transport-url"``, ``"--set"``, or ``""``
    for a value passed in code), else from the first source holding it: the environment
    variable, ``config_file``, ``.env``; else it is the default.
    """
    problems = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(part) for part in err["loc"]) or "settings"
        reason = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            problems.append(reason)
            continue
        field = str(err["loc"][0])
        origin = _origin(field, err.get("input"), env_prefix, given or {}, config_file)
        problems.append(f"{name} ({origin}): {reason}")
    return ConfigError("invalid setting " + "; ".join(problems))


def _origin(
    field: str,
    value: Any,
    env_prefix: str,
    given: Mapping[str, tuple[str, Any]],
    config_file: Path | None,
) -> str:
    """Where ``field``'s value came from, written the way the user wrote it."""
    variable = f"{env_prefix}{field.upper()}"
    if field in given:
        flag, value = given[field]  # as given, not as a "before" validator left it
        shown = _shown(field, value)
        if flag == "--set":
            return f"--set {field}={shown}"
        return f"{flag} {shown!r}" if flag else f"{field}={shown!r} given to load()"
    shown = _shown(field, value)
    if any(name.upper() == variable for name in os.environ):
        return f"{variable}={shown}"
    for path in (config_file, Path(".env")):
        if path is not None and _file_sets(path, field, variable):
            toml = path.suffix == ".toml"
            return f"{path}: {field} = {shown!r}" if toml else f"{path}: {variable}={shown}"
    return f"default {shown!r}"


def _shown(field: str, value: Any) -> Any:
    url = isinstance(value, str) and ("://" in value or field.endswith("_url"))
    return redact_url(value) if url else value


def _file_sets(path: Path, field: str, variable: str) -> bool:
    """Whether the config file ``path`` (TOML, or dotenv lines) gives a value for ``field``."""
    from dotenv import dotenv_values  # pydantic-settings' own dependency

    try:
        if path.suffix == ".toml":
            with path.open("rb") as f:
                return field in {key.lower() for key in tomllib.load(f)}
        return path.is_file() and variable in {key.upper() for key in dotenv_values(path)}
    except (OSError, ValueError):
        return False


def _source_error(exc: SettingsError, env_prefix: str) -> ConfigError:
    """A value a source could not parse (e.g. not JSON for a list or dict field), as one line."""
    cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
    match = re.search(r'field "(\w+)"', str(exc))
    if match is None:
        return ConfigError(f"invalid setting: {exc}{cause}".replace("\n", " "))
    name = match[1]
    return ConfigError(
        f"invalid setting {name} ({env_prefix}{name.upper()}): cannot parse the value{cause}"
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; safe to log.

    Every host of a list (``amqp://u:p@h1,u:p@h2/``) is masked.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    hosts = [_redact_userinfo(host) for host in parts.netloc.split(",")]
    return urlunsplit(parts._replace(netloc=",".join(hosts)))


def _redact_userinfo(netloc: str) -> str:
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return netloc
    return f"{userinfo.split(':', 1)[0]}:***@{hostport}"
