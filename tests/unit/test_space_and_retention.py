# -*- coding: utf-8 -*-
"""Retention through real runs, and the free-space check before an export (local destinations).

The SFTP side of both is in test_sftp.py; the selection itself in test_retention.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import store
from repobackup_testlib import make_db
from sftp_testlib import tmpfs_mount  # noqa: F401  pylint: disable=unused-import

UTC = dt.timezone.utc


def run_at(engine, monkeypatch, moment, names=None):
    monkeypatch.setattr(store, "utc_now", lambda: moment)
    done = engine.export(names)
    assert done["result"] == "ok", done
    return done


def starts(engine, name):
    return [m["start"] for m in engine.store.backups(name)]


def corrupt(path):
    with open(path, "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_daily_weekly_monthly_through_real_runs_across_the_year_end(make_engine, sqlite_root, monkeypatch):
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = make_engine(keep_last=2, keep_daily=3, keep_weekly=2, keep_monthly=2)
    moments = [dt.datetime(2026, 11, 30, 12, 0, tzinfo=UTC)] + [
        dt.datetime(2026, 12, 27, 12, 0, tzinfo=UTC) + dt.timedelta(days=d) for d in range(0, 8)]
    moments.insert(5, moments[4] + dt.timedelta(hours=6))  # two runs on 2026-12-30
    for moment in moments:
        run_at(engine, monkeypatch, moment)
    kept = starts(engine, "a.db")
    # last 2: 01-03, 01-02; daily 3: 01-03, 01-02, 01-01; weekly 2: ISO week 2026-W53 runs from
    # Mon 12-28 to Sun 2027-01-03 (newest 01-03), W52 ends Sun 12-27; monthly 2: January (01-03),
    # December (12-31).  11-30 and both runs of 12-30 go.
    assert kept == ["2026-12-27T12:00:00Z", "2026-12-31T12:00:00Z", "2027-01-01T12:00:00Z",
                    "2027-01-02T12:00:00Z", "2027-01-03T12:00:00Z"]


def test_the_newest_good_backup_survives_when_the_newest_is_corrupt(make_engine, sqlite_root, monkeypatch):
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = make_engine(keep_last=1)
    base = dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    for day in range(3):
        run_at(engine, monkeypatch, base + dt.timedelta(days=day))
    # keep_last 1 has left the newest only; make two more and corrupt the newest.
    engine.settings.keep_last = 3
    for day in range(3, 5):
        run_at(engine, monkeypatch, base + dt.timedelta(days=day))
    backups = engine.store.backups("a.db")
    assert len(backups) == 3
    corrupt(backups[-1]["path"])
    engine.settings.keep_last = 1
    removed = engine.store.prune("a.db", engine.settings.retention())
    kept = engine.store.backups("a.db")
    # The corrupt newest stays (keep_last counts backups, good or not), and so does the newest good one.
    assert [m["start"] for m in kept] == [backups[1]["start"], backups[2]["start"]]
    assert engine.store.is_good(kept[0]) and not engine.store.is_good(kept[1])
    assert removed == [backups[0]["data_file"]]
    assert engine.import_backup(latest_of="a.db", force=True)["backup"] == kept[0]["manifest_path"]


def test_a_failed_run_prunes_nothing(make_engine, sqlite_root, monkeypatch):
    db = make_db(sqlite_root / "a.db", range(1, 4))
    engine = make_engine(keep_last=3)
    base = dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    for day in range(3):
        run_at(engine, monkeypatch, base + dt.timedelta(days=day))
    folder = engine.store.repo_dir("a.db")
    before = sorted(os.listdir(folder))
    engine.settings.keep_last = 1
    os.unlink(db)
    monkeypatch.setattr(store, "utc_now", lambda: base + dt.timedelta(days=9))
    assert engine.export(["a.db"])["result"] == "failed"
    assert sorted(os.listdir(folder)) == before


def test_only_this_hosts_and_this_servers_folder_is_pruned(make_engine, sqlite_root, destination, monkeypatch):
    make_db(sqlite_root / "a.db", range(1, 4))
    mine = make_engine(keep_last=1)
    neighbour = engine_mod.Engine(dataclasses.replace(mine.settings), mine.paths, host="otherhost")
    sibling = make_engine(keep_last=1, server_name="second")
    base = dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    for index, each in enumerate((neighbour, sibling, neighbour, sibling)):
        each.settings.keep_last = 5
        run_at(each, monkeypatch, base + dt.timedelta(hours=index))
    others = {p: sorted(os.listdir(p)) for p in (neighbour.store.repo_dir("a.db"), sibling.store.repo_dir("a.db"))}
    assert all(len(files) == 4 for files in others.values())
    for hour in range(5, 9):
        run_at(mine, monkeypatch, base + dt.timedelta(hours=hour))
    assert len(mine.store.backups("a.db")) == 1
    assert {p: sorted(os.listdir(p)) for p in others} == others


@pytest.fixture
def small_local(tmp_path, tmpfs_mount):
    mount = tmpfs_mount(tmp_path / "small", size="3m", owner=None, mode=0o750)
    return mount.path


def test_free_space_is_checked_against_the_last_backup(make_engine, sqlite_root, small_local):
    make_db(sqlite_root / "big.db", range(1, 11), filler_kb=1536)
    engine = make_engine(destination=str(small_local), keep_last=5)
    assert engine.export()["result"] == "ok"
    folder = engine.store.repo_dir("big.db")
    before = sorted(os.listdir(folder))
    refused = engine.export()["repositories"]["big.db"]
    assert refused["result"] == "failed"
    assert refused["error"].startswith("Not enough free space at %s: " % small_local)
    assert "1.2 x the last backup" in refused["error"] and "nothing was written" in refused["error"]
    assert sorted(os.listdir(folder)) == before
    status = engine.status()
    assert status["repositories"]["big.db"]["last"]["error"] == refused["error"]
    assert status["destination_kind"] == "local" and status["destination_mount_point"] is True
    free = os.statvfs(str(small_local))
    assert status["destination_free_bytes"] == free.f_bavail * free.f_frsize
    assert status["last_upload"]["result"] == "failed" and status["last_upload"]["error"] == refused["error"]


def test_a_manifest_that_claims_a_huge_size_does_not_stop_later_runs(make_engine, sqlite_root, small_local):
    """Manifests are untrusted input: a size beyond the repository's own is not believed."""
    make_db(sqlite_root / "a.db", range(1, 11))
    engine = make_engine(destination=str(small_local), keep_last=5)
    first = engine.export()["repositories"]["a.db"]
    with open(first["backup"], encoding="utf-8") as handle:
        doc = json.load(handle)
    doc["size"] = 10 ** 12
    with open(first["backup"], "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
    again = engine.export()["repositories"]["a.db"]
    assert again["result"] == "ok", again["error"]


def test_free_space_for_a_first_backup_is_checked_against_the_repository(make_engine, sqlite_root, small_local):
    make_db(sqlite_root / "huge.db", range(1, 11), filler_kb=2816)  # 2.8 MiB: x1.2 is more than the 3 MiB disk
    make_db(sqlite_root / "tiny.db", range(1, 11))
    engine = make_engine(destination=str(small_local))
    done = engine.export()
    assert done["result"] == "partial"
    assert "1.2 x the repository" in done["repositories"]["huge.db"]["error"]
    assert done["repositories"]["tiny.db"]["result"] == "ok"
    assert engine.store.backups("huge.db") == []
    status = engine.status()
    assert status["last_upload"]["result"] in ("ok", "failed")
    assert status["repositories"]["tiny.db"]["backups_kept"] == 1
