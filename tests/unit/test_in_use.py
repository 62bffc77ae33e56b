# -*- coding: utf-8 -*-
"""In-use actions against REAL concurrent clients (separate processes).

A writer process commits numbered rows 1, 2, 3, ... one per transaction and
reports each committed number.  The repository also carries ~10 MB of blobs
so that a backup takes measurable time.  For keep_connections and disconnect,
in rollback-journal and WAL mode, the backup must be a consistent snapshot
(numbers 1..K without a gap, passing PRAGMA integrity_check), contain at least
everything committed before the export began, and the writer must go on
committing afterwards.  For disconnect, clients must be held off while the
file is copied, and a client that keeps an exclusive lock longer than
disconnect_wait makes the export fail without publishing anything.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from repobackup_testlib import make_db, numbers, sha256

from ansible_collections.reposerver.backup.plugins.module_utils import kind_sqlite

WRITER = r"""
import os, sqlite3, sys, time
path, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(path, timeout=60, isolation_level=None)
conn.execute("PRAGMA busy_timeout=60000")
conn.execute("PRAGMA synchronous=OFF")
n = 0
while not os.path.exists(stop):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (n, v) VALUES (?, ?)", (n + 1, "written by the client"))
    conn.execute("COMMIT")
    n += 1
    print(n, flush=True)
    time.sleep(0.001)
conn.close()
print("done", n, flush=True)
"""

PROBE = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
conn.execute("PRAGMA busy_timeout=0")
out = []
try:
    conn.execute("SELECT count(*) FROM t").fetchone()
    out.append("read-ok")
except sqlite3.OperationalError as exc:
    out.append("read-locked" if "locked" in str(exc) else "read-error:%s" % exc)
try:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
    out.append("write-ok")
except sqlite3.OperationalError as exc:
    out.append("write-locked" if "locked" in str(exc) else "write-error:%s" % exc)
print(" ".join(out))
"""

LOCKER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO t (n, v) VALUES (999999, 'never committed')")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""

FILLER_KB = 10 * 1024


class Writer:
    """A client process committing numbered rows; ``last`` is the last number it reported."""

    def __init__(self, db, stop_file):
        self.stop_file = str(stop_file)
        self.last = 0
        self.final = None
        self.cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), self.stop_file],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.split()
            with self.cond:
                if parts[0] == "done":
                    self.final = int(parts[1])
                else:
                    self.last = int(parts[0])
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, count, timeout=30.0):
        with self.cond:
            self.cond.wait_for(lambda: self.last >= count or self.proc.poll() is not None, timeout)
            reached = self.last
        assert reached >= count, "writer stopped at %d (exit %r): %s" % (
            reached, self.proc.poll(), self.proc.stderr.read() if self.proc.poll() is not None else "")

    def stop(self):
        with open(self.stop_file, "w"):
            pass
        self.proc.wait(timeout=60)
        self.thread.join(timeout=10)
        assert self.proc.returncode == 0, self.proc.stderr.read()
        assert self.final is not None
        return self.final

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def writers():
    started = []
    yield started
    for writer in started:
        writer.kill()


def probe(db):
    done = subprocess.run([sys.executable, "-c", PROBE, str(db)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def check_snapshot(path):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM filler").fetchone()[0] == FILLER_KB // 64
    finally:
        conn.close()
    found = numbers(path)
    assert found == list(range(1, len(found) + 1)), "the backup has a gap"
    return len(found)


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("in_use", ["keep_connections", "disconnect"])
def test_export_with_a_live_writer(make_engine, sqlite_root, tmp_path, monkeypatch, writers, in_use, journal):
    db = sqlite_root / "busy"
    make_db(db, [], journal=journal, filler_kb=FILLER_KB)
    assert os.path.getsize(str(db)) > 5 * 1024 * 1024
    engine = make_engine(in_use=in_use, disconnect_wait=30)
    during = []

    if in_use == "disconnect":
        # A pause hook around the copy of the database file (by path or through a file object).
        real = {"copyfile": kind_sqlite.shutil.copyfile, "copyfileobj": kind_sqlite.shutil.copyfileobj}
        busy = []

        def paused(which):
            def copy(src, dst, *args, **kwargs):
                source = src if isinstance(src, str) else getattr(src, "name", None)
                if busy or source != str(db):
                    return real[which](src, dst, *args, **kwargs)
                busy.append(which)
                try:
                    # The export holds its lock now: a fresh client cannot write, the writer is stuck.
                    seen = probe(db)
                    held_at = writer.last
                    time.sleep(0.3)
                    after_pause = writer.last
                    done = real[which](src, dst, *args, **kwargs)
                    # Still held off once the file is copied (closing a descriptor of the
                    # database must not have dropped the lock).
                    during.append((seen, held_at, after_pause, probe(db)))
                    return done
                finally:
                    busy.pop()
            return copy

        monkeypatch.setattr(kind_sqlite.shutil, "copyfile", paused("copyfile"))
        monkeypatch.setattr(kind_sqlite.shutil, "copyfileobj", paused("copyfileobj"))

    writer = Writer(db, tmp_path / "stop")
    writers.append(writer)
    writer.wait_for(200)
    n_before = writer.last
    started = time.monotonic()
    result = engine.export(["busy"])
    duration = time.monotonic() - started
    assert result["result"] == "ok", result
    k_reported_at_end = writer.last
    writer.wait_for(k_reported_at_end + 100)           # the client was let back in and goes on
    final = writer.stop()

    (manifest,) = engine.store.backups("busy")
    assert manifest["in_use"] == in_use
    k = check_snapshot(manifest["path"])
    assert k >= n_before, (k, n_before)
    assert k <= final
    assert final > k + 50
    assert numbers(db) == list(range(1, final + 1))     # the client lost nothing
    assert duration > 0

    if in_use == "disconnect":
        ((seen, held_at, after_pause, seen_after_copy),) = during
        for probed in (seen, seen_after_copy):
            assert "write-locked" in probed, probed
            assert probed[0] == ("read-locked" if journal == "delete" else "read-ok"), probed
        assert after_pause == held_at, "the writer committed while clients were held off"
        assert k >= held_at


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_disconnect_gives_up_when_a_client_keeps_its_lock(make_engine, sqlite_root, journal):
    db = sqlite_root / "busy"
    make_db(db, [1, 2, 3], journal=journal, filler_kb=256)
    before = sha256(db)
    engine = make_engine(in_use="disconnect", disconnect_wait=1)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = engine.export(["busy"])
        waited = time.monotonic() - started
    finally:
        locker.stdin.close()
        locker.wait(timeout=30)
    assert result["result"] == "failed"
    res = result["repositories"]["busy"]
    assert res["result"] == "failed" and res["backup"] is None
    assert "Could not hold clients off" in res["error"] and "within 1 s" in res["error"], res["error"]
    assert 0.9 <= waited < 10
    assert engine.store.backups("busy") == []
    folder = engine.store.repo_dir("busy")
    assert (os.listdir(folder) if os.path.isdir(folder) else []) == []
    assert engine.status()["repositories"]["busy"]["last"]["result"] == "failed"
    # The client is gone: the database is as it was and the next export works.
    assert numbers(db) == [1, 2, 3]
    if journal == "delete":
        assert sha256(db) == before
    assert engine.export(["busy"])["result"] == "ok"
    (manifest,) = engine.store.backups("busy")
    assert numbers(manifest["path"]) == [1, 2, 3]


@pytest.mark.parametrize("journal, outcome", [("delete", "fails"), ("wal", "snapshot")])
def test_keep_connections_with_a_client_holding_an_exclusive_lock(make_engine, sqlite_root, journal, outcome):
    """Rollback journal: an exclusive client blocks readers, so the online copy gives up
    after the wait; WAL: readers are not blocked and the copy has the committed data only."""
    db = sqlite_root / "busy"
    make_db(db, [1, 2, 3], journal=journal)
    engine = make_engine(in_use="keep_connections", disconnect_wait=1)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = engine.export(["busy"])
        waited = time.monotonic() - started
    finally:
        locker.stdin.close()
        locker.wait(timeout=30)
    if outcome == "fails":
        assert result["result"] == "failed"
        assert "locked" in result["repositories"]["busy"]["error"]
        assert waited < 10
        assert engine.store.backups("busy") == []
    else:
        assert result["result"] == "ok", result
        (manifest,) = engine.store.backups("busy")
        assert check_snapshot_small(manifest["path"]) == [1, 2, 3]


def check_snapshot_small(path):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    return numbers(path)
