# -*- coding: utf-8 -*-
"""engine: scheduled runs, skips, the lock, selection, exports, imports, verify, status."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import stat
import subprocess
import sys

import pytest
from repobackup_testlib import FakeClock, make_db, numbers, sha256

from ansible_collections.reposerver.backup.plugins.module_utils import engine as E
from ansible_collections.reposerver.backup.plugins.module_utils import report, store
from ansible_collections.reposerver.backup.plugins.module_utils import settings as S
from ansible_collections.reposerver.backup.plugins.module_utils.errors import (
    BackupError, LockHeld, RepositoryError, SettingsError)


def kept(engine, name):
    return engine.store.backups(name)


def state_file(engine, name):
    return os.path.join(engine.state_dir, name)


def read_log(engine):
    with open(engine.paths.log_file(engine.settings.server), encoding="utf-8") as handle:
        return handle.read()


def flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def rewrite_manifest(path, **changes):
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    doc.update(changes)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)


# -- scheduled runs and skips ---------------------------------------------------------------

def test_run_backs_up_every_included_repository(make_engine, sqlite_root):
    for name, rows in (("a", [1, 2]), ("b", [3]), ("skip me", [4])):
        make_db(sqlite_root / name, rows)
    (sqlite_root / "notes.txt").write_text("not a database")
    engine = make_engine(exclude=["skip me"])
    result = engine.run(scheduled=True)
    assert result["result"] == "ok"
    assert sorted(result["repositories"]) == ["a", "b"]
    for name, rows in (("a", [1, 2]), ("b", [3])):
        (manifest,) = kept(engine, name)
        assert numbers(manifest["path"]) == rows
        assert manifest["repository"] == name and manifest["in_use"] == "keep_connections"
        assert set(manifest) >= {"format", "host", "server", "kind", "server_version", "repository", "start",
                                 "end", "in_use", "sessions_ended", "size", "sha256", "engine_version"}
        E.verify_backup(manifest["path"])
    assert kept(engine, "skip me") == []
    assert "scheduled result=ok ok=2 failed=0" in read_log(engine)
    status = engine.read_status()
    assert status["last_run"]["trigger"] == "scheduled" and status["last_run"]["result"] == "ok"


def test_run_applies_retention(make_engine, sqlite_root, monkeypatch):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(keep_last=2)
    for second in range(4):
        moment = dt.datetime(2025, 1, 1, 0, 0, second, tzinfo=dt.timezone.utc)
        monkeypatch.setattr(store, "utc_now", lambda moment=moment: moment)
        assert engine.run()["result"] == "ok"
    assert [m["data_file"] for m in kept(engine, "a")] == ["20250101T000002Z.sqlite3", "20250101T000003Z.sqlite3"]
    assert engine.status()["repositories"]["a"]["backups_kept"] == 2


@pytest.mark.parametrize("options, reason", [
    ({"enabled": False}, "auto-backup is off"),
    ({"suspended_until": "2999-01-01"}, "suspended until 2999-01-01T00:00"),
    ({"enabled": False, "suspended_until": "2999-01-01"}, "auto-backup is off"),
])
def test_run_skips_and_records_why(make_engine, sqlite_root, destination, options, reason):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(**options)
    result = engine.run(scheduled=True)
    assert result == {"result": "skipped", "reason": reason, "repositories": {}}
    with open(state_file(engine, "last_skip.json"), encoding="utf-8") as handle:
        skip = json.load(handle)
    assert skip["reason"] == reason and skip["trigger"] == "scheduled"
    assert "scheduled result=skipped reason=%r" % reason in read_log(engine)
    assert list(destination.iterdir()) == []
    info = engine.status()
    assert info["last_skip"]["reason"] == reason
    assert reason in report.status_text(info)


def test_run_resumes_when_suspension_ends(make_engine, sqlite_root, monkeypatch):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(suspended_until="2030-06-01T12:00")
    clock = FakeClock(dt.datetime(2030, 6, 1, 11, 59))
    monkeypatch.setattr(E, "datetime", clock)
    assert engine.run(scheduled=True)["reason"] == "suspended until 2030-06-01T12:00"
    assert kept(engine, "a") == []
    clock.now = dt.datetime(2030, 6, 1, 12, 0)
    assert engine.run(scheduled=True)["result"] == "ok"
    assert len(kept(engine, "a")) == 1


@pytest.mark.parametrize("suspended_until, now, reason", [
    (None, dt.datetime(2030, 1, 1), None),
    ("2030-01-02", dt.datetime(2030, 1, 1, 23, 59), "suspended until 2030-01-02T00:00"),
    ("2030-01-02", dt.datetime(2030, 1, 2, 0, 0), None),
    ("2030-01-02T08:30", dt.datetime(2030, 1, 2, 8, 29, 59), "suspended until 2030-01-02T08:30"),
    ("2030-01-02T08:30", dt.datetime(2030, 1, 2, 8, 30), None),
])
def test_skip_reason(make_engine, suspended_until, now, reason):
    assert make_engine(suspended_until=suspended_until).skip_reason(now) == reason


LOCK_HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture(params=["same process", "other process"])
def held_lock(request, make_engine):
    """The server's lock, held by another Engine in this process or by another process."""
    holder = make_engine()
    if request.param == "same process":
        with holder.lock():
            yield
        return
    os.makedirs(holder.state_dir, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, state_file(holder, "lock")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_run_while_locked_is_skipped_as_already_running(held_lock, make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    result = engine.run(scheduled=True)
    assert result["result"] == "skipped" and result["reason"] == "already running"
    with open(state_file(engine, "last_skip.json"), encoding="utf-8") as handle:
        assert json.load(handle)["reason"] == "already running"
    assert "result=skipped reason='already running'" in read_log(engine)
    assert kept(engine, "a") == []
    with pytest.raises(LockHeld, match="in progress"):
        engine.export(["a"])
    with pytest.raises(LockHeld):
        with engine.lock():
            pass


def test_lock_is_released_after_use(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    with engine.lock():
        pass
    assert engine.run()["result"] == "ok"
    with pytest.raises(RuntimeError):
        with engine.lock():
            raise RuntimeError("boom")
    assert engine.run()["result"] == "ok"


# -- selection -------------------------------------------------------------------------------

@pytest.mark.parametrize("options, present, expected", [
    ({}, ["a", "b"], {"covered": ["a", "b"], "not_covered": [], "missing": []}),
    ({"exclude": ["b"]}, ["a", "b", "c"], {"covered": ["a", "c"], "not_covered": ["b"], "missing": []}),
    ({"exclude": ["zz"]}, ["a"], {"covered": ["a"], "not_covered": [], "missing": []}),
    ({"repositories": ["b"]}, ["a", "b"], {"covered": ["b"], "not_covered": ["a"], "missing": []}),
    ({"repositories": ["b", "ghost"]}, ["a", "b"], {"covered": ["b"], "not_covered": ["a"], "missing": ["ghost"]}),
    ({"repositories": ["ghost"]}, [], {"covered": [], "not_covered": [], "missing": ["ghost"]}),
    ({"repositories": []}, ["a"], {"covered": [], "not_covered": ["a"], "missing": []}),
    ({}, None, {"covered": [], "not_covered": [], "missing": []}),
    ({"repositories": ["a", "b"]}, None, {"covered": [], "not_covered": [], "missing": ["a", "b"]}),
])
def test_selection(options, present, expected):
    raw = {"destination": "/srv/b"}
    raw.update(options)
    assert E.selection(S.validate(raw), present) == expected


def test_new_repository_is_not_included_until_named(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(repositories=["a"])
    make_db(sqlite_root / "new", [1])
    assert engine.run()["repositories"].keys() == {"a"}
    assert engine.status()["not_covered"] == ["new"]
    make_engine(repositories="all").run()
    assert len(kept(engine, "new")) == 1


# -- export -----------------------------------------------------------------------------------

def test_export_missing_repository_is_partial(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [2])
    engine = make_engine(repositories=["a", "ghost", "b"])
    result = engine.run()
    assert result["result"] == "partial"
    assert result["repositories"]["a"]["result"] == "ok"
    assert result["repositories"]["b"]["result"] == "ok"
    ghost = result["repositories"]["ghost"]
    assert ghost["result"] == "failed" and "'ghost' does not exist" in ghost["error"] and ghost["backup"] is None
    status = engine.status()
    assert status["last_run"]["result"] == "partial"
    assert status["last_run"]["failed"] == ["ghost"]
    assert status["repositories"]["ghost"]["last"]["result"] == "failed"
    assert status["repositories"]["ghost"]["last_success"] is None
    assert status["repositories"]["a"]["last_success"]["result"] == "ok"
    assert "repository='ghost'" in read_log(engine)
    assert kept(engine, "ghost") == []


def test_export_named_repositories_now(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [2])
    engine = make_engine(repositories=["a"])
    result = engine.export(["b", "b"])  # any repository present, even one not included
    assert list(result["repositories"]) == ["b"] and result["result"] == "ok"
    assert engine.read_status()["last_run"]["trigger"] == "export"
    assert engine.export(["ghost"])["result"] == "failed"


@pytest.mark.parametrize("bad", ["", "..", "a//b", "../a", "a\0b"])
def test_export_refuses_bad_names(make_engine, bad):
    with pytest.raises(SettingsError):
        make_engine().export([bad])


@pytest.mark.parametrize("ask", ["export", "destination_problem"])
def test_an_sftp_override_needs_the_servers_sftp_settings(make_engine, sqlite_root, ask):
    """Export to another destination, and check mode's question about it, refuse an sftp:// URL alike when the
    server has no SFTP settings (key file, host key) to reach it with."""
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    url = "sftp://backup@127.0.0.1:1/srv/backups"
    sentence = ("destination %r is an sftp:// URL, but server main has no SFTP settings (key file, host key); "
                "configure its destination as sftp:// first." % url)
    if ask == "export":
        with pytest.raises(SettingsError) as info:
            engine.export(["a"], destination=url)
        assert str(info.value) == sentence
    else:
        assert engine.destination_problem(url) == sentence


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("in_use", ["keep_connections", "disconnect"])
def test_export_copy_is_a_standalone_database(make_engine, sqlite_root, journal, in_use):
    make_db(sqlite_root / "a", range(1, 101), journal=journal)
    engine = make_engine(in_use=in_use)
    result = engine.export(["a"])
    assert result["result"] == "ok", result
    (manifest,) = kept(engine, "a")
    assert manifest["in_use"] == in_use
    folder = os.path.dirname(manifest["path"])
    assert sorted(os.listdir(folder)) == sorted([manifest["data_file"], os.path.basename(manifest["manifest_path"])])
    with open(manifest["path"], "rb") as handle:
        header = handle.read(20)
    assert header[18:20] == b"\x01\x01"  # rollback-journal file: readable by sqlite3 alone, no -wal needed
    assert numbers(manifest["path"]) == list(range(1, 101))
    E.verify_backup(manifest["manifest_path"])
    assert stat.S_IMODE(os.stat(manifest["path"]).st_mode) == 0o640


@pytest.mark.parametrize("repositories", [["a", "b"], "all"])
def test_unreachable_server(make_engine, sqlite_root, repositories):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [2])
    engine = make_engine(repositories=repositories)
    assert engine.run()["result"] == "ok"
    before = {n: [(m["data_file"], sha256(m["path"])) for m in kept(engine, n)] for n in ("a", "b")}
    folders_before = {n: sorted(os.listdir(engine.store.repo_dir(n))) for n in ("a", "b")}
    os.rename(str(sqlite_root), str(sqlite_root) + ".away")
    result = engine.run()
    assert result["result"] == "failed"
    if repositories == "all":
        assert result["repositories"] == {}
        assert "unreachable" in result["error"]
    else:
        assert sorted(result["repositories"]) == ["a", "b"]
        for res in result["repositories"].values():
            assert res["result"] == "failed" and "unreachable" in res["error"]
    after = {n: [(m["data_file"], sha256(m["path"])) for m in kept(engine, n)] for n in ("a", "b")}
    assert after == before
    assert {n: sorted(os.listdir(engine.store.repo_dir(n))) for n in ("a", "b")} == folders_before
    info = engine.status()
    assert info["server_reachable"] is False
    assert "UNREACHABLE" in report.status_text(info)


# -- import -----------------------------------------------------------------------------------

@pytest.fixture
def backed_up(make_engine, sqlite_root):
    """Repository 'a' with rows 1..3, backed up once; returns (engine, manifest)."""
    make_db(sqlite_root / "a", [1, 2, 3])
    engine = make_engine()
    assert engine.export(["a"])["result"] == "ok"
    (manifest,) = kept(engine, "a")
    return engine, manifest


def add_rows(path, rows):
    conn = sqlite3.connect(str(path))
    with conn:
        conn.executemany("INSERT INTO t (n, v) VALUES (?, 'later')", [(n,) for n in rows])
    conn.close()


def no_restore_leftovers(root):
    return [n for n in os.listdir(str(root)) if n.startswith(".restore-")] == []


def test_import_refuses_existing_without_force(backed_up, sqlite_root):
    engine, manifest = backed_up
    add_rows(sqlite_root / "a", [4])
    before = sha256(sqlite_root / "a")
    with pytest.raises(RepositoryError, match="exists.*--force"):
        engine.import_backup(manifest["path"])
    assert sha256(sqlite_root / "a") == before
    assert numbers(sqlite_root / "a") == [1, 2, 3, 4]


@pytest.mark.parametrize("which", ["path", "manifest_path"])
@pytest.mark.parametrize("new_name", ["copy", "with space", "-h", ".hidden", "日本"])
def test_import_to_new_name(backed_up, sqlite_root, which, new_name):
    engine, manifest = backed_up
    done = engine.import_backup(manifest[which], repository=new_name)
    assert done["repository"] == new_name
    assert numbers(sqlite_root / new_name) == [1, 2, 3]
    assert stat.S_IMODE(os.stat(sqlite_root / new_name).st_mode) == 0o640
    assert no_restore_leftovers(sqlite_root)
    assert "import repository=%r" % new_name in read_log(engine)


def test_import_recreates_deleted_repository(backed_up, sqlite_root):
    engine, manifest = backed_up
    os.unlink(str(sqlite_root / "a"))
    assert engine.import_backup(manifest["manifest_path"])["repository"] == "a"
    assert numbers(sqlite_root / "a") == [1, 2, 3]


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_import_force_replaces_live_database_under_open_connection(make_engine, sqlite_root, journal):
    live = sqlite_root / "a"
    make_db(live, [1, 2, 3], journal=journal)
    engine = make_engine()
    engine.export(["a"])
    (manifest,) = kept(engine, "a")
    client = sqlite3.connect(str(live))
    try:
        client.execute("INSERT INTO t (n, v) VALUES (99, 'after the backup')")
        client.commit()
        inode = os.stat(str(live)).st_ino
        assert [r[0] for r in client.execute("SELECT n FROM t ORDER BY n")] == [1, 2, 3, 99]
        engine.import_backup(manifest["path"], force=True)
        # The client keeps its connection and now sees the restored content.
        assert [r[0] for r in client.execute("SELECT n FROM t ORDER BY n")] == [1, 2, 3]
        client.execute("INSERT INTO t (n, v) VALUES (4, 'written after the restore')")
        client.commit()
    finally:
        client.close()
    assert os.stat(str(live)).st_ino == inode
    assert numbers(live) == [1, 2, 3, 4]
    conn = sqlite3.connect(str(live))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    assert no_restore_leftovers(sqlite_root)


def test_import_refuses_other_kind_first(backed_up, sqlite_root):
    engine, manifest = backed_up
    rewrite_manifest(manifest["manifest_path"], kind="postgresql")
    flip_byte(manifest["path"], 200)  # also corrupt: the kind is checked before the checksum
    before = sha256(sqlite_root / "a")
    with pytest.raises(BackupError, match="kind 'postgresql'"):
        engine.import_backup(manifest["path"], repository="other", force=True)
    assert not (sqlite_root / "other").exists()
    assert sha256(sqlite_root / "a") == before


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: flip_byte(p, 5000), "corrupt"),
    (lambda p: flip_byte(p, 0), "corrupt"),
    (lambda p: os.truncate(p, 4096), "truncated"),
    (lambda p: os.truncate(p, 0), "truncated"),
    (os.unlink, "missing"),
])
def test_import_refuses_damaged_backup_without_touching_live(backed_up, sqlite_root, damage, fragment):
    engine, manifest = backed_up
    add_rows(sqlite_root / "a", [4])
    before = sha256(sqlite_root / "a")
    damage(manifest["path"])
    with pytest.raises(BackupError, match=fragment):
        engine.import_backup(manifest["path"] if fragment != "missing" else manifest["manifest_path"], force=True)
    assert sha256(sqlite_root / "a") == before
    assert numbers(sqlite_root / "a") == [1, 2, 3, 4]
    assert no_restore_leftovers(sqlite_root)


def test_import_refuses_backup_that_fails_integrity_check(backed_up, sqlite_root):
    """Checksum recomputed over damaged data: SQLite's own check still catches it."""
    engine, manifest = backed_up
    add_rows(sqlite_root / "a", [4])
    before = sha256(sqlite_root / "a")
    page_size = 4096
    with open(manifest["path"], "r+b") as handle:
        handle.seek(page_size + 8)                 # inside page 2 (table t): garble its cells
        handle.write(b"\xff" * 64)
    digest, size = store.sha256_file(manifest["path"])
    rewrite_manifest(manifest["manifest_path"], sha256=digest, size=size)
    with pytest.raises(BackupError):
        E.verify_backup(manifest["path"])
    with pytest.raises(BackupError):
        engine.import_backup(manifest["path"], force=True)
    assert sha256(sqlite_root / "a") == before
    assert no_restore_leftovers(sqlite_root)


def test_import_with_lock_held_fails_without_change(backed_up, sqlite_root):
    engine, manifest = backed_up
    make_db(sqlite_root / "a", [99])  # differs from the backup, so the import has work to do
    before = sha256(sqlite_root / "a")
    with engine.lock():
        with pytest.raises(LockHeld):
            engine.import_backup(manifest["path"], force=True)
    assert sha256(sqlite_root / "a") == before


# -- verify -----------------------------------------------------------------------------------

def test_verify_ok(backed_up):
    manifest = backed_up[1]
    for which in ("path", "manifest_path"):
        assert E.verify_backup(manifest[which])["sha256"] == manifest["sha256"]


@pytest.mark.parametrize("damage, fragment", [
    (lambda m: flip_byte(m["path"], 3000), "corrupt"),
    (lambda m: os.truncate(m["path"], 100), "truncated"),
    (lambda m: os.unlink(m["manifest_path"]), "no manifest"),
    (lambda m: rewrite_manifest(m["manifest_path"], kind="oracle"), "'oracle'"),
    (lambda m: rewrite_manifest(m["manifest_path"], format=7), "format 7"),
])
def test_verify_failures(backed_up, damage, fragment):
    manifest = backed_up[1]
    damage(manifest)
    with pytest.raises(BackupError, match=fragment):
        E.verify_backup(manifest["path"])


def test_verify_not_a_database(backed_up):
    manifest = backed_up[1]
    with open(manifest["path"], "wb") as handle:
        handle.write(b"this is not SQLite at all" * 100)
    digest, size = store.sha256_file(manifest["path"])
    rewrite_manifest(manifest["manifest_path"], sha256=digest, size=size)
    with pytest.raises(BackupError, match="not an SQLite database file"):
        E.verify_backup(manifest["path"])


# -- status -----------------------------------------------------------------------------------

def test_status_at_a_glance(make_engine, sqlite_root, monkeypatch):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [2])
    engine = make_engine(repositories=["a", "ghost"], times=["01:00", "13:30"], days=["mon", "tue"],
                         keep_last=5, in_use="disconnect")
    engine.run()
    info = engine.status(now=dt.datetime(2025, 1, 6, 12, 0))  # a Monday
    assert info["server"] == "main" and info["kind"] == "sqlite" and info["host"] == "testhost"
    assert info["enabled"] is True and info["suspended_until"] is None
    assert info["schedule"] == {"days": ["mon", "tue"], "times": ["01:00", "13:30"],
                                "text": "on Monday and Tuesday at 01:00 and 13:30"}
    assert info["next_run"] == "2025-01-06T13:30"
    assert info["covered"] == ["a"] and info["not_covered"] == ["b"] and info["missing"] == ["ghost"]
    assert info["server_reachable"] is True
    assert info["in_use"] == "disconnect" and info["keep_last"] == 5
    assert info["last_run"]["result"] == "partial"
    assert info["pending_repairs"] == []
    assert info["repositories"]["a"]["backups_kept"] == 1
    assert info["repositories"]["a"]["last_success"]["size"] > 0
    assert info["repositories"]["ghost"]["backups_kept"] == 0
    assert "b" not in info["repositories"]
    json.dumps(info)
    text = report.status_text(info)
    for fragment in ("main (sqlite) on testhost", "auto-backup  on", "on Monday and Tuesday at 01:00 and 13:30",
                     "next run     2025-01-06T13:30", "covered      a", "not covered  b", "missing      ghost",
                     "disconnect; keep last 5", "partial", "ghost", "does not exist"):
        assert fragment in text, fragment


@pytest.mark.parametrize("options, state, next_run", [
    ({"enabled": False}, "auto-backup  off", "none (auto-backup is off)"),
    ({"suspended_until": "2025-01-08"}, "on, suspended until 2025-01-08T00:00", "2025-01-08T01:00"),
])
def test_status_off_and_suspended(make_engine, options, state, next_run):
    info = make_engine(**options).status(now=dt.datetime(2025, 1, 6, 12, 0))
    text = report.status_text(info)
    assert state in text
    assert "next run     %s" % next_run in text
    assert info["last_run"] is None and "last run" not in text


def test_load_settings_and_servers_on_host(paths, make_settings, write_settings):
    assert E.servers_on_host(paths) == []
    with pytest.raises(SettingsError, match="no settings"):
        E.load_settings("main", paths)
    write_settings(make_settings())
    write_settings(make_settings(server_name="db_2"))
    assert E.servers_on_host(paths) == ["db_2", "main"]
    assert E.load_settings("db_2", paths).server == "db_2"
    with open(paths.settings_file("main"), "w") as handle:
        handle.write("{oops")
    with pytest.raises(SettingsError, match="not valid JSON"):
        E.load_settings("main", paths)


def test_an_export_reads_each_manifest_once(make_engine, sqlite_root):
    """The sequence before an export and retention after it share one read of each manifest."""
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = make_engine(keep_last=3)
    for dummy in range(4):
        assert engine.export(["a.db"])["result"] == "ok"
    reads = []
    real = engine.store._read_manifest  # pylint: disable=protected-access

    def counting(path):
        reads.append(path)
        return real(path)
    engine.store._read_manifest = counting  # pylint: disable=protected-access
    assert engine.export(["a.db"])["result"] == "ok"
    assert len(reads) == len(set(reads)) == 3, reads  # the three kept before it, each once
    assert len(engine.store.backups("a.db")) == 3
