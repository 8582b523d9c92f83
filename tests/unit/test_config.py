"""The grid's configuration without a server: validation, the wire round-trip, conflicts, store passwords."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import msgpack
import pytest

from spacegrid.config import (CONFIG_FORMAT, GRID_LIMITS, GridConfig, conflicts, read_store_password, refusal,
                              split_grid_args, split_store_password, with_store_password, write_store_password)
from spacegrid.errors import ConfigError
from spacegrid.limits import DEFAULT_LIMITS, Limits

APP = "spacegrid.testing.apps:space"


def config(**changes: object) -> GridConfig:
    return GridConfig(**{"app": APP, "space": "test", "partitions": 16, **changes})  # type: ignore[arg-type]


def test_round_trip_through_msgpack_and_json_keeps_every_setting() -> None:
    """to_wire carries the format version; from_wire of its msgpack or JSON form gives an equal config, with floats
    written as integers read back as floats."""
    original = config(store="postgresql://app@db:5432/shop?search_path=s1", replicas=3, lease_s=1.0,
                      heartbeat_timeout_s=2.0, catch_ups_max=2, metrics=False, durability="fsync=always",
                      written_by="test")
    wire = original.to_wire()
    assert wire["format"] == CONFIG_FORMAT
    assert GridConfig.from_wire(msgpack.unpackb(msgpack.packb(wire))) == original
    assert GridConfig.from_wire(json.loads(json.dumps(wire))) == original
    as_ints = {**wire, "lease_s": 1, "heartbeat_timeout_s": 2}
    assert GridConfig.from_wire(as_ints) == original and isinstance(GridConfig.from_wire(as_ints).lease_s, float)


def test_a_newer_format_or_a_missing_field_is_refused() -> None:
    """A reader refuses a format it does not know and a config without app or partitions."""
    with pytest.raises(ConfigError, match="format 2"):
        GridConfig.from_wire({**config().to_wire(), "format": 2})
    with pytest.raises(ConfigError, match="lacks space, partitions"):
        GridConfig.from_wire({"format": CONFIG_FORMAT, "app": APP})


@pytest.mark.parametrize("changes, message", [
    ({"app": "nocolon"}, "MODULE:SPACE"),
    ({"partitions": 0}, "partitions"),
    ({"replicas": 7}, "--replicas"),
    ({"store": "mysql://x"}, "unknown store URL"),
    ({"store": "postgresql://app:secret@db/shop"}, "password never goes"),
    ({"lease_s": 0.1}, "--heartbeat-interval-s < --lease-s"),
    ({"catch_ups_max": 0}, "--catch-ups-max must be positive"),
    ({"catch_ups_max": 1.5}, "catch_ups_max must be a int"),
    ({"metrics": 1}, "metrics must be a bool"),
])
def test_invalid_settings_are_refused_saying_which(changes: dict[str, object], message: str) -> None:
    """Each invalid setting raises ConfigError naming it; a password in the store URL never gets in."""
    with pytest.raises(ConfigError, match=message):
        config(**changes)


def test_limits_take_the_grid_wide_fields_over_a_process_base() -> None:
    """limits() sets every grid-wide field and keeps the process's own bounds (stop timeout, connect timeout)."""
    grid = config(lease_s=1.0, heartbeat_timeout_s=2.0, handler_time_limit_s=0.5, write_behind_batch_rows=50)
    limits = grid.limits(Limits(pu_stop_timeout_s=4.0, connect_timeout_s=1.0))
    assert (limits.lease_s, limits.heartbeat_timeout_s, limits.handler_time_limit_s) == (1.0, 2.0, 0.5)
    assert limits.write_behind_batch_rows == 50 and limits.pu_stop_timeout_s == 4.0 and limits.connect_timeout_s == 1.0
    assert all(getattr(limits, name) == getattr(grid, name) for name in GRID_LIMITS)


def test_conflicts_list_only_given_settings_that_differ() -> None:
    """A setting not given is no conflict; one given equal (1 vs 1.0 included) is none; each that differs is listed
    with the grid's and the given value, in field order, and the refusal names the option."""
    grid = config(store="sqlite:///var/grid/store.db", lease_s=0.6)
    assert conflicts(grid, {}) == []
    assert conflicts(grid, {"app": APP, "lease_s": 0.6, "catch_ups_max": 1, "heartbeat_timeout_s": 1.5}) == []
    found = conflicts(grid, {"lease_s": 1.0, "store": "none", "app": APP})
    assert [(c.setting, c.grid_value, c.given_value) for c in found] == [("store", "sqlite:///var/grid/store.db", "none"),
                                                                        ("lease_s", 0.6, 1.0)]
    message = str(refusal(found, grid, "this PU", "Start it without those options."))
    assert "--store: the grid has sqlite:///var/grid/store.db, this process was given none" in message
    assert "--lease-s: the grid has 0.6, this process was given 1" in message
    assert message.endswith("Start it without those options.")


def test_store_passwords_are_split_off_and_put_back() -> None:
    """A password in the user part or a password= parameter is split off (the URL keeps the rest, user included);
    with_store_password puts one back, quoted."""
    assert split_store_password("postgresql://app:s3cr%40t@db:5432/shop?search_path=x") == (
        "postgresql://app@db:5432/shop?search_path=x", "s3cr@t")
    assert split_store_password("postgresql://app@db/shop?password=pw&sslmode=require") == (
        "postgresql://app@db/shop?sslmode=require", "pw")
    assert split_store_password("postgresql://app@db/shop") == ("postgresql://app@db/shop", None)
    assert split_store_password("sqlite:///tmp/x.db") == ("sqlite:///tmp/x.db", None)
    assert with_store_password("postgresql://app@db/shop", "s3cr@t") == "postgresql://app:s3cr%40t@db/shop"
    assert with_store_password("postgresql://app@db/shop", None) == "postgresql://app@db/shop"
    with pytest.raises(ConfigError, match="needs a user"):
        with_store_password("postgresql://db/shop", "pw")


def test_the_password_file_is_0600_and_the_option_then_the_env_then_the_data_dir_decide(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_store_password creates DATA_DIR/store.password with mode 0600; reading prefers --store-password-file,
    then SPACEGRID_STORE_PASSWORD, then the data dir's file; a file open to others is refused."""
    monkeypatch.delenv("SPACEGRID_STORE_PASSWORD", raising=False)
    path = write_store_password(tmp_path, "from-file")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_store_password(None, tmp_path) == "from-file"
    assert read_store_password(None, None) is None
    monkeypatch.setenv("SPACEGRID_STORE_PASSWORD", "from-env")
    assert read_store_password(None, tmp_path) == "from-env"
    other = tmp_path / "other"
    other.write_text("explicit\n")
    os.chmod(other, 0o600)
    assert read_store_password(other, tmp_path) == "explicit"
    os.chmod(other, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_store_password(other, tmp_path)


def test_the_launchers_pu_arguments_split_into_grid_settings_and_the_rest() -> None:
    """Grid-wide limits among `spacegrid pu` arguments become settings (both spellings); the rest passes on."""
    settings, rest = split_grid_args(["--handler-time-limit-s", "0.5", "--catch-ups-max=2", "--metrics-host", "h"])
    assert settings == {"handler_time_limit_s": 0.5, "catch_ups_max": 2} and rest == ["--metrics-host", "h"]
    with pytest.raises(ConfigError, match="takes a number"):
        split_grid_args(["--lease-s", "soon"])


def test_defaults_are_the_limits_defaults() -> None:
    """A config given nothing but app and partitions carries DEFAULT_LIMITS' grid-wide values, no store, metrics on."""
    grid = config()
    assert all(getattr(grid, name) == getattr(DEFAULT_LIMITS, name) for name in GRID_LIMITS)
    assert grid.store_url is None and grid.metrics and grid.replicas == 1
