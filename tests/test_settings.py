"""``Settings``: the options users type, where they come from, and what a bad one says.

Sources, highest first: explicit overrides (CLI flags) > ``AIOSVC_*`` environment >
``--config`` file (TOML or dotenv) > ``.env`` in the working directory > defaults (nova's).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import Field

from aiosvc.exceptions import ConfigError
from aiosvc.settings import Settings, redact_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AIOSVC_* variable from the outside, and a working directory without a .env."""
    for name in list(os.environ):
        if name.upper().startswith("AIOSVC_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


class WidgetSettings(Settings):
    """A manager's own options, as a settings subclass."""

    widget_driver: str = "widgets.memory:Driver"
    widget_count: int = 3


# -- defaults


def test_nova_defaults() -> None:
    s = Settings.load()
    assert s.report_interval == 10
    assert s.service_down_time == 60
    assert s.periodic_enable is True
    assert s.periodic_interval == 60
    assert s.periodic_fuzzy_delay == 60
    assert s.graceful_shutdown_timeout == 60
    assert s.rpc_response_timeout == 60


def test_defaults_give_a_working_single_process_service() -> None:
    s = Settings.load()
    assert s.transport_url == "memory://"
    assert s.database_url == "memory://"
    assert s.control_exchange == "aiosvc"
    assert s.host  # the machine's name
    assert s.log_level == "INFO"
    assert s.allowed_remote_exceptions == []


def test_host_defaults_to_the_machine_name() -> None:
    import socket

    assert Settings.load().host == socket.gethostname()


# -- sources


def test_environment_variables_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_REPORT_INTERVAL", "5")
    monkeypatch.setenv("AIOSVC_TRANSPORT_URL", "amqp://guest:guest@rabbit:5672/")
    monkeypatch.setenv("AIOSVC_PERIODIC_ENABLE", "false")
    monkeypatch.setenv("AIOSVC_LOG_LEVEL", "debug")
    s = Settings.load()
    assert s.report_interval == 5
    assert s.transport_url == "amqp://guest:guest@rabbit:5672/"
    assert s.periodic_enable is False
    assert s.log_level == "DEBUG"  # case-insensitive for users' convenience


def test_unprefixed_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORT_INTERVAL", "5")
    monkeypatch.setenv("TRANSPORT_URL", "amqp://elsewhere/")
    s = Settings.load()
    assert s.report_interval == 10
    assert s.transport_url == "memory://"


def test_dotenv_in_working_directory(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "AIOSVC_REPORT_INTERVAL=15\n"
        "# other tools keep their own keys here too\n"
        "DATABASE_URL=mysql://someone-else/db\n"
        "DEBUG=1\n"
    )
    s = Settings.load()
    assert s.report_interval == 15
    assert s.database_url == "memory://"  # the unprefixed key is not ours


def test_dotenv_elsewhere_is_not_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AIOSVC_REPORT_INTERVAL=15\n")  # parent of cwd
    assert Settings.load().report_interval == 10


def test_toml_config_file(tmp_path: Path) -> None:
    config = tmp_path / "aiosvc.toml"
    config.write_text(
        'transport_url = "amqp://rabbit/"\n'
        "report_interval = 20\n"
        'allowed_remote_exceptions = ["myapp.exceptions"]\n'
    )
    s = Settings.load(config)
    assert s.transport_url == "amqp://rabbit/"
    assert s.report_interval == 20
    assert s.allowed_remote_exceptions == ["myapp.exceptions"]


def test_dotenv_style_config_file(tmp_path: Path) -> None:
    config = tmp_path / "aiosvc.conf"
    config.write_text("AIOSVC_REPORT_INTERVAL=25\nAIOSVC_HOST=compute-7\n")
    s = Settings.load(str(config))
    assert s.report_interval == 25
    assert s.host == "compute-7"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        Settings.load(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


@pytest.mark.parametrize("config_name", ["aiosvc.toml", "aiosvc.env"])
def test_precedence_of_sources(
    config_name: str,
    tmp_path: Path,
    clean_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each source sets every field it may win for; each field shows who won.
    (clean_environment / ".env").write_text(
        "AIOSVC_REPORT_INTERVAL=1\n"
        "AIOSVC_PERIODIC_INTERVAL=1\n"
        "AIOSVC_RPC_RESPONSE_TIMEOUT=1\n"
        "AIOSVC_GRACEFUL_SHUTDOWN_TIMEOUT=1\n"
    )
    config = tmp_path / config_name
    values = {"report_interval": 2, "periodic_interval": 2, "rpc_response_timeout": 2}
    if config_name.endswith(".toml"):
        config.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    else:
        config.write_text("".join(f"AIOSVC_{k.upper()}={v}\n" for k, v in values.items()))
    monkeypatch.setenv("AIOSVC_REPORT_INTERVAL", "3")
    monkeypatch.setenv("AIOSVC_PERIODIC_INTERVAL", "3")

    s = Settings.load(config, report_interval=4)

    assert s.report_interval == 4  # override > env
    assert s.periodic_interval == 3  # env > config file
    assert s.rpc_response_timeout == 2  # config file > .env
    assert s.graceful_shutdown_timeout == 1  # .env > default
    assert s.service_down_time == 60  # default


def test_overrides_beat_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_HOST", "from-env")
    assert Settings.load(host="from-flag").host == "from-flag"


# -- invalid values


def test_invalid_env_value_is_one_line_naming_field_variable_and_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIOSVC_REPORT_INTERVAL", "-5")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert "\n" not in message
    assert "report_interval" in message
    assert "AIOSVC_REPORT_INTERVAL=-5" in message
    assert "greater than or equal to 0" in message
    assert isinstance(info.value, ValueError)


def test_every_bad_field_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_PERIODIC_INTERVAL", "soon")
    monkeypatch.setenv("AIOSVC_RPC_MAX_CONCURRENCY", "0")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert "periodic_interval (AIOSVC_PERIODIC_INTERVAL=soon)" in message
    assert "rpc_max_concurrency (AIOSVC_RPC_MAX_CONCURRENCY=0)" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("periodic_enable", "maybe", "valid boolean"),
        ("log_level", "loud", "'DEBUG', 'INFO'"),
        ("host", "", "at least 1 character"),
        ("service_down_time", "0", "greater than 0"),
        ("periodic_fuzzy_delay", "-1", "greater than or equal to 0"),
        ("graceful_shutdown_timeout", "never", "valid number"),
    ],
)
def test_invalid_values_from_env(
    field: str, value: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"AIOSVC_{field.upper()}", value)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert f"{field} (AIOSVC_{field.upper()}=" in message
    assert reason in message


def test_invalid_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="report_interval"):
        Settings.load(report_interval="often")


def test_invalid_value_in_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("rpc_response_timeout = -1\n")
    with pytest.raises(ConfigError, match="rpc_response_timeout"):
        Settings.load(config)


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("transport_url", "http://broker:5672/"),
        ("transport_url", "kafka://broker/"),
        ("transport_url", "broker:5672"),
        ("database_url", "mysql://db/nova"),
        ("database_url", "sqlite:///nova.db"),
    ],
)
def test_bad_url_scheme(field: str, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIOSVC_{field.upper()}", url)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert field in message
    assert "URL scheme must be one of" in message


@pytest.mark.parametrize(
    "url", ["amqp://", "amqp://u:p@h:5672/vh", "amqps://h/", "memory://", "memory://test-1"]
)
def test_good_transport_urls(url: str) -> None:
    assert Settings.load(transport_url=url).transport_url == url


@pytest.mark.parametrize(
    "url", ["postgresql://u:p@db/aiosvc", "postgres://db/aiosvc", "memory://", "memory://x"]
)
def test_good_database_urls(url: str) -> None:
    assert Settings.load(database_url=url).database_url == url


def test_password_never_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_TRANSPORT_URL", "http://nova:hunter2@rabbit:5672/")
    monkeypatch.setenv("AIOSVC_DATABASE_URL", "mysql://nova:s3cr3t@db/nova")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert "hunter2" not in message
    assert "s3cr3t" not in message
    assert "nova:***@rabbit:5672" in message
    assert "nova:***@db" in message
    assert info.value.__cause__ is None  # the pydantic error (with the input) is not chained
    assert info.value.__suppress_context__  # nor shown as its context in a traceback


def test_public_dict_redacts_passwords() -> None:
    s = Settings.load(
        transport_url="amqp://nova:hunter2@rabbit/", database_url="postgresql://n:s3cr3t@db/x"
    )
    public = s.public_dict()
    assert public["transport_url"] == "amqp://nova:***@rabbit/"
    assert public["database_url"] == "postgresql://n:***@db/x"
    assert "hunter2" not in repr(public)
    assert s.transport_url == "amqp://nova:hunter2@rabbit/"  # the real value is intact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqp://guest:p%40ss@localhost/", "amqp://guest:***@localhost/"),
        ("amqp://guest:p@ss@localhost/", "amqp://guest:***@localhost/"),
        ("postgresql://:only-password@db/x", "postgresql://:***@db/x"),
        ("amqp://guest@localhost/", "amqp://guest@localhost/"),
        ("memory://", "memory://"),
        ("amqp://u:secret@[::1]:5672/", "amqp://u:***@[::1]:5672/"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_of_an_unparseable_url_hides_it() -> None:
    assert "secret" not in redact_url("amqp://u:secret@[::1/")


# -- allowed_remote_exceptions, the one list setting


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("myapp.exceptions", ["myapp.exceptions"]),
        ("myapp.exceptions, otherapp.errors", ["myapp.exceptions", "otherapp.errors"]),
        ('["myapp.exceptions", "x.Y"]', ["myapp.exceptions", "x.Y"]),
        ("", []),
    ],
)
def test_allowed_remote_exceptions_from_env(
    value: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # oslo's ListOpt form (comma-separated) and a JSON list both work.
    monkeypatch.setenv("AIOSVC_ALLOWED_REMOTE_EXCEPTIONS", value)
    assert Settings.load().allowed_remote_exceptions == expected


def test_unparseable_complex_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class TaggedSettings(Settings):
        tags: dict[str, int] = Field(default_factory=dict)

    monkeypatch.setenv("AIOSVC_TAGS", "not json")
    with pytest.raises(ConfigError) as info:
        TaggedSettings.load()
    message = str(info.value)
    assert "tags" in message
    assert "AIOSVC_TAGS" in message
    assert "\n" not in message


# -- service_down_time vs report_interval (nova's servicegroup.API.__init__)


def test_down_time_raised_when_not_above_report_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aiosvc.settings"):
        s = Settings.load(report_interval=30, service_down_time=30)
    assert s.service_down_time == 75  # 2.5 x report_interval
    assert any("service_down_time" in r.getMessage() for r in caplog.records)


def test_default_down_time_raised_for_a_long_report_interval() -> None:
    assert Settings.load(report_interval=60).service_down_time == 150


def test_down_time_kept_when_above_report_interval(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        s = Settings.load(report_interval=10, service_down_time=11)
    assert s.service_down_time == 11
    assert not caplog.records


def test_down_time_kept_when_reporting_is_off() -> None:
    s = Settings.load(report_interval=0, service_down_time=5)
    assert s.report_interval == 0
    assert s.service_down_time == 5


# -- a manager's own options


def test_subclass_reads_its_own_fields_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_WIDGET_COUNT", "7")
    s = WidgetSettings.load()
    assert s.widget_count == 7
    assert s.widget_driver == "widgets.memory:Driver"
    assert s.report_interval == 10


def test_reload_as_reads_the_subclass_fields_and_keeps_explicit_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIOSVC_WIDGET_COUNT", "7")
    base = Settings.load(report_interval=5, host="compute-1")
    upgraded = base.reload_as(WidgetSettings)
    assert isinstance(upgraded, WidgetSettings)
    assert upgraded.widget_count == 7
    assert upgraded.report_interval == 5
    assert upgraded.host == "compute-1"


def test_reload_as_to_own_class_is_the_same_object() -> None:
    s = WidgetSettings.load()
    assert s.reload_as(WidgetSettings) is s
    assert s.reload_as(Settings) is s


@pytest.mark.parametrize("config_name", ["svc.toml", "svc.env"])
def test_reload_as_reads_the_subclass_fields_from_the_config_file(
    config_name: str, tmp_path: Path
) -> None:
    # An embedder loads the settings once and hands them to Service.create(); the
    # manager's own options in the same file must not be silently dropped.
    config = tmp_path / config_name
    if config_name.endswith(".toml"):
        config.write_text("report_interval = 5\nwidget_count = 9\n")
    else:
        config.write_text("AIOSVC_REPORT_INTERVAL=5\nAIOSVC_WIDGET_COUNT=9\n")
    upgraded = Settings.load(config).reload_as(WidgetSettings)
    assert upgraded.report_interval == 5
    assert upgraded.widget_count == 9


def test_reload_as_with_a_bad_subclass_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_WIDGET_COUNT", "many")
    base = Settings.load()  # the base class ignores the field
    with pytest.raises(ConfigError) as info:
        base.reload_as(WidgetSettings)
    assert "widget_count (AIOSVC_WIDGET_COUNT=many)" in str(info.value)


def test_isolated_settings_read_only_what_they_are_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AIOSVC_PERIODIC_INTERVAL=7\n")
    monkeypatch.setenv("AIOSVC_REPORT_INTERVAL", "3")
    monkeypatch.setenv("AIOSVC_WIDGET_COUNT", "11")
    assert Settings.load().report_interval == 3  # not isolated: the environment counts
    assert Settings.load().periodic_interval == 7  # and .env
    isolated = Settings.load(isolated=True, host="h")
    assert (isolated.report_interval, isolated.periodic_interval) == (10, 60)
    assert isolated.isolated
    widened = isolated.reload_as(WidgetSettings)
    assert (widened.widget_count, widened.host, widened.isolated) == (3, "h", True)
    with pytest.raises(ConfigError, match="isolated settings read no config file"):
        Settings.load(tmp_path / ".env", isolated=True)


# -- rpc_wire: oslo.messaging's wire takes oslo's defaults where none is given

AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def test_aiosvc_wire_is_the_default() -> None:
    s = Settings.load(transport_url=AMQP)
    assert (s.rpc_wire, s.control_exchange, s.amqp_durable_queues) == ("aiosvc", "aiosvc", True)


def test_oslo_wire_takes_oslos_defaults() -> None:
    s = Settings.load(rpc_wire="oslo", transport_url=AMQP)
    assert (s.control_exchange, s.amqp_durable_queues) == ("openstack", False)


@pytest.mark.parametrize("source", ["overrides", "env", "toml"])
@pytest.mark.parametrize(("exchange", "durable"), [("nova", True), ("aiosvc", True)])
def test_oslo_wire_keeps_what_is_given(
    source: str,
    exchange: str,
    durable: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given explicitly, even a value equal to aiosvc's default is kept, from any source.
    values = {"rpc_wire": "oslo", "transport_url": AMQP, "control_exchange": exchange}
    if source == "overrides":
        s = Settings.load(**values, amqp_durable_queues=durable)
    elif source == "env":
        for name, value in values.items():
            monkeypatch.setenv(f"AIOSVC_{name.upper()}", value)
        monkeypatch.setenv("AIOSVC_AMQP_DURABLE_QUEUES", str(durable).lower())
        s = Settings.load()
    else:
        config = tmp_path / "aiosvc.toml"
        lines = [f'{name} = "{value}"' for name, value in values.items()]
        config.write_text("\n".join([*lines, f"amqp_durable_queues = {str(durable).lower()}"]))
        s = Settings.load(config)
    assert (s.rpc_wire, s.control_exchange, s.amqp_durable_queues) == ("oslo", exchange, durable)


def test_oslo_defaults_survive_reload_as() -> None:
    s = Settings.load(isolated=True, rpc_wire="oslo", transport_url=AMQP).reload_as(WidgetSettings)
    assert (s.rpc_wire, s.control_exchange, s.amqp_durable_queues) == ("oslo", "openstack", False)
    given = Settings.load(
        isolated=True, rpc_wire="oslo", transport_url=AMQP, control_exchange="nova"
    ).reload_as(WidgetSettings)
    assert (given.control_exchange, given.amqp_durable_queues) == ("nova", False)


@pytest.mark.parametrize("url", [None, "memory://", "memory://test-1"])
def test_oslo_wire_on_memory_is_a_config_error(url: str | None) -> None:
    overrides = {"transport_url": url} if url else {}
    with pytest.raises(ConfigError) as info:
        Settings.load(rpc_wire="oslo", **overrides)
    message = str(info.value)
    assert "rpc_wire='oslo'" in message
    assert "memory://" in message
    assert "\n" not in message


def test_oslo_wire_from_env_on_memory_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_RPC_WIRE", "oslo")
    with pytest.raises(ConfigError, match="rpc_wire='oslo' needs an AMQP transport_url"):
        Settings.load()


@pytest.mark.parametrize("value", ["bogus", "", "oslo.messaging"])
def test_unknown_rpc_wire(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_RPC_WIRE", value)
    with pytest.raises(ConfigError) as info:
        Settings.load(transport_url=AMQP)
    message = str(info.value)
    assert f"rpc_wire (AIOSVC_RPC_WIRE={value})" in message
    assert "'aiosvc' or 'oslo'" in message


@pytest.mark.parametrize(
    ("url", "brokers"),
    [
        ("rabbit://guest:guest@h:5672/", ["amqp://guest:guest@h:5672/"]),
        ("rabbit://h/", ["amqp://h/"]),
        (
            "rabbit://u:p@h1:5672,h2:5673/nova",
            ["amqp://u:p@h1:5672/nova", "amqp://u:p@h2:5673/nova"],
        ),
    ],
)
@pytest.mark.parametrize("wire", ["aiosvc", "oslo"])
def test_rabbit_url_is_amqp(url: str, brokers: list[str], wire: str) -> None:
    # oslo.messaging's transport_url, copied from an OpenStack service's configuration.
    from aiosvc.transport.amqp.connection import broker_urls

    s = Settings.load(transport_url=url, rpc_wire=wire)
    assert s.transport_url == url
    assert [str(broker) for broker in broker_urls(s.transport_url)] == brokers
