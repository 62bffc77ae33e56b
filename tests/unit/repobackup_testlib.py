# -*- coding: utf-8 -*-
"""Helpers shared by the unit tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import datetime
import hashlib
import sqlite3
from urllib.parse import quote

HOST = "testhost"


def make_db(path, rows=(), journal="delete", filler_kb=0):
    """An SQLite database with table t(n, v) holding ``rows`` (numbers)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=%s" % journal)
        conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("BEGIN")
        for n in rows:
            conn.execute("INSERT INTO t (n, v) VALUES (?, ?)", (n, "row %d" % n))
        conn.execute("COMMIT")
        if filler_kb:
            conn.execute("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, pad BLOB)")
            conn.execute("BEGIN")
            for dummy in range(filler_kb // 64):
                conn.execute("INSERT INTO filler (pad) VALUES (randomblob(65536))")
            conn.execute("COMMIT")
    finally:
        conn.close()
    return str(path)


def numbers(path):
    conn = sqlite3.connect("file:%s?mode=ro" % quote(str(path)), uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT n FROM t ORDER BY n")]
    finally:
        conn.close()


def sha256(path):
    with open(str(path), "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class FakeClock:
    """Stands in for the ``datetime`` module inside one engine module."""

    def __init__(self, now):
        clock = self

        class _DT(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return clock.now if tz is None else clock.now.astimezone(tz)

        self.now = now
        self.datetime = _DT
        self.date = datetime.date
        self.time = datetime.time
        self.timedelta = datetime.timedelta
        self.timezone = datetime.timezone
