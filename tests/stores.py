"""The main store's backends for tests: a SQLite file in the test's folder, or a PostgreSQL
database of the test's own on 127.0.0.1:5432 (created fresh, dropped after), and plain
queries on either to look at what the store committed."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgres"]


class StoreDb:
    """Where a test's store lives, and direct access to it (`?` placeholders on both)."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.backend == "sqlite":
            path = self.url.removeprefix("sqlite://")
            if not Path(path).exists():
                return []
            with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
                try:
                    return db.execute(sql, args).fetchall()
                except sqlite3.OperationalError:  # the schema is not there yet
                    return []
        with psycopg.connect(self.url, autocommit=True) as conn:
            try:
                return conn.execute(sql.replace("?", "%s"), args).fetchall()
            except psycopg.errors.UndefinedTable:
                return []

    def count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        rows = self.query(sql, args)
        return int(rows[0][0] or 0) if rows else 0

    def refuse_record_ids(self, record_id: str, message: str) -> None:
        """A trigger that refuses inserting the record `record_id`, as an operator might."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite://"))) as db:
                db.execute(
                    f"CREATE TRIGGER poison BEFORE INSERT ON records WHEN NEW.id = '{record_id}'"
                    f" BEGIN SELECT RAISE(ABORT, '{message}'); END"
                )
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                f" IF NEW.id = '{record_id}' THEN RAISE EXCEPTION '{message}'; END IF;"
                " RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON records FOR EACH ROW"
                " EXECUTE FUNCTION poison()"
            )


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database's URL; dropped after, whatever still holds a connection to it."""
    name = f"lookout_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def store_db_at(backend: str, folder: Path) -> Iterator[StoreDb]:
    if backend == "sqlite":
        yield StoreDb(backend, f"sqlite:///{folder}/s.db")
        return
    with pg_database() as url:
        yield StoreDb(backend, url)
