"""Store URLs, table names and the canonical digest, without a database."""

import hashlib
from pathlib import Path

import pytest

from spacegrid.errors import ConfigError
from spacegrid.limits import Limits
from spacegrid.store import Row, digest_of, open_store
from spacegrid.store.base import SCHEMA_VERSION, TableNames, migration_statements, newest_per_key
from spacegrid.store.postgres import DIALECT as PG, PostgresStore, redact
from spacegrid.store.sqlite import SqliteStore


def test_sqlite_urls_name_a_file() -> None:
    """sqlite:///abs and sqlite:////abs name /abs; sqlite:rel names rel; a host or no file is refused."""
    for url, path in [("sqlite:////tmp/x/store.db", "/tmp/x/store.db"), ("sqlite:///tmp/x/store.db", "/tmp/x/store.db"),
                      ("sqlite:data/store.db", "data/store.db"), ("sqlite:/abs.db", "/abs.db")]:
        store = open_store(url, "s", ["m"])
        assert isinstance(store, SqliteStore) and store.path == Path(path), url
    assert open_store("sqlite:data/store.db", "s", ["m"]).url == "sqlite:data/store.db"
    assert open_store("sqlite:///tmp/a.db", "s", ["m"]).url == "sqlite:///tmp/a.db"
    for bad in ("sqlite:", "sqlite://host/x.db", "sqlite:///", "sqlite:dir/"):
        with pytest.raises(ConfigError, match="sqlite:///absolute/path.db"):
            open_store(bad, "s", ["m"])


def test_postgres_urls_and_limits() -> None:
    """postgresql:// and postgres:// pick PostgreSQL, with the pool size and timeout from the limits."""
    limits = Limits(store_pool_size=7, store_statement_timeout_s=3.0)
    store = open_store("postgresql://u@h/db", "s", ["m"], limits)
    assert isinstance(store, PostgresStore) and (store.concurrency, store.statement_timeout_s) == (7, 3.0)
    assert isinstance(open_store("postgres://u@h:5433/db?search_path=x", "s", ["m"]), PostgresStore)


def test_other_urls_say_what_is_accepted() -> None:
    """Any other scheme is a ConfigError naming the accepted forms."""
    for bad in ("mysql://h/db", "store.db", "", "postgresql:/h/db"):
        with pytest.raises(ConfigError, match="postgresql://user@host:port/database"):
            open_store(bad, "s", ["m"])


def test_passwords_never_show() -> None:
    """The password is redacted in the user part (even percent-encoded) and in a password= parameter."""
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"
    assert redact("postgresql://u@h/db?password=secret&sslmode=require") == \
        "postgresql://u@h/db?password=***&sslmode=require"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert open_store("postgresql://u:secret@h/db", "s", ["m"]).url == "postgresql://u:***@h/db"


def test_server_timeouts_unless_the_url_sets_them() -> None:
    """The statement timeout goes to the server (and idle transactions end), unless the URL's parameters say."""
    store = PostgresStore("postgresql://u@h/db?statement_timeout=99", "s", ["m"], statement_timeout_s=2.5)
    settings = store._server_settings()
    assert "statement_timeout" not in settings and settings["idle_in_transaction_session_timeout"] == "2500"


def test_table_names_fit_postgres_and_differ_in_more_than_case() -> None:
    """Names (indexes included) longer than 63 bytes, or equal but for case (SQLite ignores it), are refused."""
    names = TableNames("shop-1", ["orders", "Big_map"])
    assert names.map_table("orders") == "sg_shop-1__orders" and names.progress == "sg_shop-1___progress"
    assert names.dead_letters == "sg_shop-1___dead_letters"
    TableNames("s" * 20, ["m" * 33])  # 58 bytes, index 63
    with pytest.raises(ConfigError, match="longer than 63"):
        TableNames("s" * 20, ["m" * 34])
    with pytest.raises(ConfigError, match="differ in more than case"):
        TableNames("s", ["orders", "Orders"])
    with pytest.raises(ConfigError, match="no table for map"):
        names.map_table("nope")


def test_migrations_run_from_the_recorded_version() -> None:
    """A new space runs every step; an up-to-date one only ensures map tables; a newer layout is refused."""
    names = TableNames("s", ["m"])
    fresh = migration_statements(names, PG, 0)
    current = migration_statements(names, PG, SCHEMA_VERSION)
    assert any('"sg_s___progress"' in sql for sql in fresh) and not any("progress" in sql for sql in current)
    assert any('"sg_s__m"' in sql and 'COLLATE "C"' in sql for sql in current)
    with pytest.raises(ConfigError, match="upgrade spacegrid"):
        migration_statements(names, PG, SCHEMA_VERSION + 1)


def test_newest_per_key_keeps_one_row_per_key() -> None:
    """A batch reduces to the newest row of each key, grouped by map, upserts apart from deletes, in key order."""
    rows = [Row("m", "b", b"1", 1), Row("m", "a", None, 5), Row("m", "a", b"x", 4), Row("n", "b", b"2", 2),
            Row("m", "b", b"3", 3)]
    assert newest_per_key(rows) == {"m": ([Row("m", "b", b"3", 3)], [Row("m", "a", None, 5)]),
                                    "n": ([Row("n", "b", b"2", 2)], [])}


def test_digest_of_is_the_canonical_sha256() -> None:
    """sha256 of "key\\tversion\\n" lines in code-point order, UTF-8; independent of the input's order."""
    assert digest_of([("b", 1), ("é", 2), ("a", 10)]) == hashlib.sha256("a\t10\nb\t1\né\t2\n".encode()).hexdigest()
    assert digest_of([("b", 1), ("a", 2)]) == digest_of([("a", 2), ("b", 1)])
    assert digest_of([("a", 1)]) != digest_of([("a", 2)])
    assert digest_of([("\U0001f600", 1), ("\uffff", 1)]) == hashlib.sha256(
        "\uffff\t1\n\U0001f600\t1\n".encode()).hexdigest()  # code points, not UTF-16 units
    assert digest_of([]) == hashlib.sha256(b"").hexdigest()


def test_names_that_could_share_a_table_are_refused() -> None:
    """Space and map names that could give two spaces in one database the same table (containing '__', or a space
    name ending in '_') are refused with a ConfigError."""
    for space_name, maps in (("a__b", ["c"]), ("a", ["b__c"]), ("a_", ["progress"])):
        with pytest.raises(ConfigError, match="may not contain"):
            open_store("postgresql://u@h/db", space_name, maps)
