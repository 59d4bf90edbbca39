"""Why the store inserts rows through json_each: SQLite writes while another thread is busy.

The ingest loop keeps the GIL busy while the store's writer thread inserts. `executemany`
takes the GIL back for every row; one `INSERT ... SELECT ... FROM json_each(?)` per chunk
needs it once. Both write the same 20,000 records-table rows (~1.2 KB) into WAL SQLite, first
alone, then beside a thread that spins in Python.

    .venv/bin/python bench/store_write.py
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import msgspec

from lookout.monitor.storage.groups import _INSERT_RECORDS, _ROWS_PER_STATEMENT
from lookout.monitor.storage.schema import migrate_sqlite

ROWS = 20_000


def rows() -> list[tuple[object, ...]]:
    text = "Where is my order? I ordered a pair of running shoes last Tuesday " * 5
    return [
        (
            f"r{i:08x}",
            1.7e9 + i,
            1.7e9 + i,
            "bench",
            "gpt-4o-mini",
            "openai",
            "ok",
            812.0,
            120.0,
            150,
            80,
            0.00007,
            text,
            text,
            None,
            "u-1",
            "s-1",
            '{"tenant": "acme"}',
        )
        for i in range(ROWS)
    ]


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    migrate_sqlite(db)
    return db


def write_executemany(db: sqlite3.Connection, data: list[tuple[object, ...]]) -> None:
    with db:
        db.execute("BEGIN")
        db.executemany(
            f"INSERT OR IGNORE INTO records VALUES ({','.join('?' * 18)}, NULL, NULL)", data
        )


def write_json_each(db: sqlite3.Connection, data: list[tuple[object, ...]]) -> None:
    encoded = [msgspec.json.encode(row) for row in data]  # done on put() in the store
    with db:
        db.execute("BEGIN")
        for i in range(0, len(encoded), _ROWS_PER_STATEMENT):
            db.execute(
                _INSERT_RECORDS, (b"[" + b",".join(encoded[i : i + _ROWS_PER_STATEMENT]) + b"]",)
            )


def main() -> None:
    data = rows()
    print(f"{ROWS:,} rows of ~1.2 KB, WAL SQLite {sqlite3.sqlite_version}")
    for contended in (False, True):
        stop = threading.Event()

        def spin(stop: threading.Event = stop) -> None:
            x = 0
            while not stop.is_set():
                for i in range(1000):
                    x += i

        spinner = threading.Thread(target=spin)
        if contended:
            spinner.start()
        for name, write in (("executemany", write_executemany), ("json_each", write_json_each)):
            with tempfile.TemporaryDirectory() as tmp:
                db = open_db(Path(tmp) / "b.db")
                started = time.perf_counter()
                write(db, data)
                us = (time.perf_counter() - started) / ROWS * 1e6
                db.close()
            label = "beside a busy thread" if contended else "alone"
            print(f"{name:12s} {label:22s} {us:9.1f} us/row")
        stop.set()
        if contended:
            spinner.join()


if __name__ == "__main__":
    main()
