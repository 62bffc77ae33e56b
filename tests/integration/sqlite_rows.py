"""A one-column SQLite table for the module tests: write rows, read them back."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def write_rows(path: Path, rows: list) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
    conn.execute("DELETE FROM t")
    conn.executemany("INSERT INTO t VALUES (?)", [(r,) for r in rows])
    conn.commit()
    conn.close()


def rows_of(path: Path) -> list:
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")]
    finally:
        conn.close()
