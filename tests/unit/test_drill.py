# -*- coding: utf-8 -*-
"""Restore drills of the ``sqlite`` kind, through the engine and the host command, with real files and clients.

A drill restores each repository's newest good backup into scratch (never the SQLite folder), checks it
against the facts its manifest recorded, records the result (status, metrics, status text) and removes the
scratch.  The PostgreSQL side is in test_drill_postgresql.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repobackup_testlib import make_db, numbers, rehash
from test_in_use import FILLER_KB, Writer

from ansible_collections.reposerver.backup.plugins.module_utils import cli, layout, metrics, report
from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod

COLLECTIONS = str(Path(engine_mod.__file__).parents[5])


def data_of(backup: str) -> str:
    return backup[:-len(".manifest.json")] + ".sqlite3"


def prom(path) -> dict:
    """The metrics file as {metric{labels}: value}."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return dict(line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))


def nice_of(pid: int) -> int:
    """The nice value of a process's main thread (field 19 of /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[16])


def scratch_entries(paths) -> list:
    folder = os.path.join(paths.state_dir("main"), "scratch")
    return os.listdir(folder) if os.path.isdir(folder) else []


LABELS = '{server="main",repository="a.db"}'


def test_a_drill_over_good_backups_records_success_in_status_metrics_and_text(
        make_engine, sqlite_root, paths, tmp_path):
    make_db(sqlite_root / "a.db", range(1, 40))
    make_db(sqlite_root / "b.db", range(1, 3))
    metrics_file = tmp_path / "prom" / "repobackup.prom"
    engine = make_engine(metrics_file=str(metrics_file))
    engine.export()
    make_db(sqlite_root / "a.db", range(40, 60))
    newest = engine.export(["a.db"])["repositories"]["a.db"]
    before = engine.status()["repositories"]["a.db"]
    assert (before["drill_state"], before["last_drill"], before["proven_restorable"]) == ("never", None, None)

    done = engine.drill()

    assert done["result"] == "ok" and list(done["repositories"]) == ["a.db", "b.db"]
    drill = done["repositories"]["a.db"]
    assert drill["backup"] == newest["backup"] and drill["sha256"] == newest["sha256"]
    assert {"restore", "integrity_check", "foreign_key_check", "row_counts", "objects"} <= set(drill["checks"])
    assert drill["error"] is None and drill["target"] == "scratch on the server"
    info = engine.status()
    repo = info["repositories"]["a.db"]
    assert repo["last_drill"] == drill and repo["drill_state"] == "ok"
    assert repo["proven_restorable"] == newest["time"] == drill["backup_start"]
    assert repo["proven_restorable_backup"] == newest["backup"]
    assert (info["drill_failures"], info["drill_stale"], info["never_drilled"]) == (0, 0, 0)
    assert info["last_drill_run"]["result"] == "ok" and info["last_drill_run"]["trigger"] == "drill"
    gauges = prom(metrics_file)
    assert gauges["repobackup_drill_ok" + LABELS] == "1"
    started = datetime.datetime.fromisoformat(newest["time"].replace("Z", "+00:00"))
    assert gauges["repobackup_proven_restorable_timestamp_seconds" + LABELS] == "%d" % started.timestamp()
    assert "repobackup_drill_error_info" + LABELS not in gauges
    assert gauges["repobackup_destination_usable{server=\"main\",kind=\"local\"}"] == "1"  # kept from the run
    text = report.status_text(info)
    assert "a.db        %s  ok      %s" % (drill["time"], newest["time"]) in text
    assert scratch_entries(paths) == []
    assert sorted(os.listdir(str(sqlite_root))) == ["a.db", "b.db"]
    assert numbers(sqlite_root / "a.db") == list(range(1, 60))


def test_a_proof_older_than_drill_max_age_days_is_stale(make_engine, sqlite_root):
    make_db(sqlite_root / "a.db", [1])
    engine = make_engine(drill_max_age_days=3)
    engine.export()
    engine.drill()
    now = datetime.datetime.now()
    assert engine.status(now=now + datetime.timedelta(days=2))["repositories"]["a.db"]["drill_state"] == "ok"
    later = engine.status(now=now + datetime.timedelta(days=4))
    assert later["repositories"]["a.db"]["drill_state"] == "stale" and later["drill_stale"] == 1


@pytest.mark.parametrize("damage, cause", [
    ("rows", "Table t has 10 rows in the copy restored from"),
    ("page", "database disk image is malformed"),
])
def test_a_backup_whose_checksum_is_right_but_whose_content_is_not_fails_the_drill_by_name(
        make_engine, write_settings, sqlite_root, paths, tmp_path, capsys, damage, cause):
    make_db(sqlite_root / "a.db", range(1, 2001))
    metrics_file = tmp_path / "repobackup.prom"
    settings = make_engine(metrics_file=str(metrics_file)).settings
    write_settings(settings)
    engine = engine_mod.Engine(settings, paths, host=layout.host_name())
    first = engine.export()["repositories"]["a.db"]
    assert engine.drill()["result"] == "ok"
    broken = engine.export()["repositories"]["a.db"]  # same content, a newer backup: then altered
    data = data_of(broken["backup"])
    if damage == "rows":
        conn = sqlite3.connect(data, isolation_level=None)
        conn.execute("DELETE FROM t WHERE n > 10")
        conn.close()
    else:
        with open(data, "r+b") as handle:  # a b-tree page of t overwritten in the middle of the file
            handle.seek(os.path.getsize(data) // 2)
            handle.write(b"\xff" * 600)
    rehash(broken["backup"])

    assert cli.main(["drill"], paths) == 1

    out = capsys.readouterr().out
    assert "FAILED  a.db  " in out and cause in out and broken["backup"] in out
    info = engine.status()
    repo = info["repositories"]["a.db"]
    assert repo["drill_state"] == "failed" and info["drill_failures"] == 1
    assert repo["last_drill"]["result"] == "failed" and repo["last_drill"]["backup"] == broken["backup"]
    assert cause in repo["last_drill"]["error"]
    assert repo["proven_restorable"] == first["time"]  # the earlier proof stands, flagged by the failure
    gauges = prom(metrics_file)
    assert gauges["repobackup_drill_ok" + LABELS] == "0"
    error_info = [key for key in gauges if key.startswith("repobackup_drill_error_info{")]
    assert len(error_info) == 1 and cause.replace('"', '\\"') in error_info[0]
    assert "DRILL FAILED" in report.status_text(info)
    assert numbers(sqlite_root / "a.db") == list(range(1, 2001))
    assert scratch_entries(paths) == []


def test_a_repository_without_a_backup_fails_its_drill_and_others_still_run(make_engine, sqlite_root):
    make_db(sqlite_root / "a.db", [1])
    engine = make_engine()
    engine.export()
    make_db(sqlite_root / "new.db", [1])
    done = engine.drill()
    assert done["result"] == "partial"
    assert done["repositories"]["a.db"]["result"] == "ok"
    assert "'new.db' has no backup of this host" in done["repositories"]["new.db"]["error"]


def test_a_drill_checks_free_space_before_it_restores_anything(make_engine, sqlite_root, paths):
    make_db(sqlite_root / "a.db", [1])
    engine = make_engine()
    backup = engine.export()["repositories"]["a.db"]["backup"]
    with open(backup, encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest["size"] = 2 ** 60  # claims more than any disk here holds
    with open(backup, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    drill = engine.drill()["repositories"]["a.db"]
    assert drill["result"] == "failed"
    assert drill["error"].startswith("Not enough free space for the drill at %s" % os.path.join(
        paths.state_dir("main"), "scratch"))
    assert "nothing was restored" in drill["error"]
    assert scratch_entries(paths) == []


def test_scheduled_drills_skip_when_off_or_locked_and_a_manual_one_refuses_a_held_lock(
        make_settings, write_settings, sqlite_root, paths, capsys):
    make_db(sqlite_root / "a.db", [1])
    write_settings(make_settings(enabled=False))
    assert cli.main(["drill", "--scheduled"], paths) == 0
    assert "skipped: auto-backup is off" in capsys.readouterr().out
    settings = make_settings()
    write_settings(settings)
    engine = engine_mod.Engine(settings, paths)
    engine.export()
    with engine.lock():
        assert cli.main(["drill", "--scheduled"], paths) == 1
        assert "skipped: already running" in capsys.readouterr().out
        assert cli.main(["drill"], paths) == 1
        assert "Another run of server main is in progress" in capsys.readouterr().err
    assert engine.status()["last_skip"]["trigger"] == "scheduled drill"
    assert cli.main(["drill", "--scheduled"], paths) == 0
    assert "ok      a.db  " in capsys.readouterr().out
    assert engine.status()["last_drill_run"]["trigger"] == "scheduled drill"


DRILL = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.reposerver.backup.plugins.module_utils import cli, layout
sys.exit(cli.main(["drill"], layout.Paths(**json.loads(sys.argv[2]))))
"""


@pytest.mark.parametrize("next_one", ["drill", "run"])
def test_a_drill_killed_with_sigkill_leaves_scratch_that_the_next_run_or_drill_removes_first(
        make_settings, write_settings, sqlite_root, paths, next_one):
    make_db(sqlite_root / "a.db", range(1, 100), filler_kb=FILLER_KB * 4)
    settings = make_settings()
    write_settings(settings)
    engine = engine_mod.Engine(settings, paths)
    engine.export()
    proc = subprocess.Popen([sys.executable, "-c", DRILL, COLLECTIONS, json.dumps(dataclasses.asdict(paths))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not scratch_entries(paths) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    niced = nice_of(proc.pid) if proc.poll() is None else None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = scratch_entries(paths)
    assert left and left[0].startswith("%d-" % proc.pid), "the drill ended before its scratch was seen"
    assert "last_drill_run" not in engine.read_status()  # killed: nothing recorded
    assert niced is not None and niced >= 10  # the drill ran at a lower priority

    done = engine.drill() if next_one == "drill" else engine.run()

    assert done["result"] == "ok"
    assert scratch_entries(paths) == []
    log = Path(paths.log_file("main")).read_text(encoding="utf-8")
    assert "removed %s, left by a run that was killed" % os.path.join(paths.state_dir("main"), "scratch", left[0]) \
        in log


def test_a_drill_never_touches_the_live_repository_while_a_client_writes(make_engine, sqlite_root, tmp_path):
    db = make_db(sqlite_root / "live.db", [], journal="wal", filler_kb=FILLER_KB)
    writer = Writer(db, tmp_path / "stop")
    try:
        writer.wait_for(50)
        engine = make_engine()
        assert engine.export()["result"] == "ok"
        inode = os.stat(db).st_ino
        for dummy in range(3):
            seen = writer.last
            drill = engine.drill()["repositories"]["live.db"]
            assert drill["result"] == "ok", drill
            writer.wait_for(seen + 20)  # the client kept committing across the drill
            assert set(os.listdir(str(sqlite_root))) <= {"live.db", "live.db-wal", "live.db-shm"}
            assert os.stat(db).st_ino == inode
    finally:
        final = writer.stop()
    assert numbers(db) == list(range(1, final + 1))  # every commit of the client is there, none lost
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_metrics_of_a_repository_never_drilled_have_no_drill_gauges():
    text = metrics.render("main", {"a.db": {"last": {"time": "2026-01-01T00:00:00Z", "result": "ok"},
                                            "failures": 0}})
    assert "repobackup_drill" not in text and "repobackup_proven_restorable" not in text
