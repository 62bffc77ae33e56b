# -*- coding: utf-8 -*-
"""A clock that stepped forward or back: retention follows the manifests' sequence numbers, never the wall clock
alone; a run never prunes the backup it just published; status never names as last success a backup that is gone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

from repobackup_testlib import make_db, numbers

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import store

UTC = dt.timezone.utc
DAY3 = dt.datetime(2026, 12, 3, tzinfo=UTC)


def run_at(engine, monkeypatch, moment, db=None, row=None):
    """One run of the engine with the clock reading ``moment``; ``row`` is added to ``db`` first."""
    if row is not None:
        make_db(db, [row])
    monkeypatch.setattr(store, "utc_now", lambda: moment)
    monkeypatch.setattr(engine_mod, "utc_now", lambda: moment)
    done = engine.run()
    assert done["result"] == "ok", done
    return done["repositories"]["a.db"]


def manifest_paths(engine):
    return [m["manifest_path"] for m in engine.store.backups("a.db")]


def test_a_day_with_the_clock_one_day_ahead_prunes_nothing_just_published(
        make_engine, sqlite_root, monkeypatch, tmp_path):
    db = sqlite_root / "a.db"
    make_db(db, [1])
    engine = make_engine(keep_last=3)
    run_at(engine, monkeypatch, DAY3 - dt.timedelta(days=2, hours=-1))
    run_at(engine, monkeypatch, DAY3 - dt.timedelta(days=1, hours=-1), db, 2)
    # Day 3, 10:00 to 14:00: the clock reads day 4.
    ahead = [run_at(engine, monkeypatch, DAY3 + dt.timedelta(days=1, hours=hour), db, row)
             for row, hour in ((3, 10), (4, 12), (5, 14))]
    assert manifest_paths(engine) == [r["backup"] for r in ahead]
    # The clock is put right; day 4, 01:00, earlier by the clock than the three backups of day 3.
    normal = [run_at(engine, monkeypatch, DAY3 + dt.timedelta(days=1, hours=1), db, 6)]
    assert os.path.exists(normal[0]["backup"]) and os.path.exists(normal[0]["data_file_path"])
    assert manifest_paths(engine) == [r["backup"] for r in ahead[1:]] + [normal[0]["backup"]]
    # Status names it, and it is what import takes as the latest.
    assert engine.status()["repositories"]["a.db"]["last_success"]["backup"] == normal[0]["backup"]
    done = engine.import_backup(latest_of="a.db", repository="copy.db")
    assert done["backup"] == normal[0]["backup"] and numbers(sqlite_root / "copy.db") == [1, 2, 3, 4, 5, 6]
    # Normal days go on: after three more runs, the three newest by sequence are left, whatever their clocks said.
    for row in (7, 8, 9):
        normal.append(run_at(engine, monkeypatch, DAY3 + dt.timedelta(days=1, hours=row - 5), db, row))
    assert manifest_paths(engine) == [r["backup"] for r in normal[1:]]
    sequences = [m["sequence"] for m in engine.store.backups("a.db")]
    assert sequences == [7, 8, 9]


def test_the_clock_stepping_back_mid_day_keeps_the_newest_by_sequence(make_engine, sqlite_root, monkeypatch):
    db = sqlite_root / "a.db"
    make_db(db, [1])
    engine = make_engine(keep_last=2)
    moments = [DAY3 + dt.timedelta(hours=h) for h in (5, 6, 2, 3, 1)]  # the clock went back 4 hours after the 2nd
    done = [run_at(engine, monkeypatch, moment, db, row) for row, moment in enumerate(moments, start=2)]
    assert manifest_paths(engine) == [r["backup"] for r in done[-2:]]
    copy = engine.import_backup(latest_of="a.db", repository="copy.db")
    assert copy["backup"] == done[-1]["backup"] and numbers(sqlite_root / "copy.db") == list(range(1, 7))


def strip_sequence(path):
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    doc.pop("sequence")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)


def test_backups_of_an_older_engine_order_by_start_and_before_every_numbered_one(
        make_engine, sqlite_root, monkeypatch):
    """Manifests without a sequence (format 1 as older engines wrote it) keep their order by start."""
    db = sqlite_root / "a.db"
    make_db(db, [1])
    engine = make_engine(keep_last=3)
    # An older engine, its clock one day ahead for the last two.
    old = [run_at(engine, monkeypatch, DAY3 + dt.timedelta(days=d), db, row)
           for row, d in ((2, 0), (3, 5), (4, 4))]
    for result in old:
        strip_sequence(result["backup"])
    assert manifest_paths(engine) == [old[0]["backup"], old[2]["backup"], old[1]["backup"]]
    new = run_at(engine, monkeypatch, DAY3 + dt.timedelta(days=1), db, 5)
    assert engine.store.backups("a.db")[-1]["sequence"] == 1
    assert manifest_paths(engine) == [old[2]["backup"], old[1]["backup"], new["backup"]]


def test_the_run_never_prunes_its_own_backup_even_when_a_neighbour_claims_to_be_newer(make_engine, sqlite_root,
                                                                                      monkeypatch):
    """A neighbour with the highest sequence there is and a start in the future still cannot push it out."""
    db = sqlite_root / "a.db"
    make_db(db, [1])
    engine = make_engine(keep_last=1)
    first = run_at(engine, monkeypatch, DAY3 + dt.timedelta(days=30))
    with open(first["backup"], encoding="utf-8") as handle:
        doc = json.load(handle)
    doc["sequence"] = store.SEQUENCE_MAX
    with open(first["backup"], "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
    second = run_at(engine, monkeypatch, DAY3, db, 2)
    assert os.path.exists(second["backup"]) and os.path.exists(second["data_file_path"])
    assert engine.store.backups("a.db")[-1]["manifest_path"] == first["backup"]  # a tie, broken by start


def test_status_never_names_as_last_success_a_backup_that_is_gone(make_engine, sqlite_root, monkeypatch):
    db = sqlite_root / "a.db"
    make_db(db, [1])
    engine = make_engine(keep_last=5)
    first = run_at(engine, monkeypatch, DAY3)
    second = run_at(engine, monkeypatch, DAY3 + dt.timedelta(hours=1), db, 2)
    assert engine.status()["repositories"]["a.db"]["last_success"]["backup"] == second["backup"]
    os.unlink(second["data_file_path"])  # e.g. removed by hand, or by an older engine's retention
    info = engine.status()
    success = info["repositories"]["a.db"]["last_success"]
    assert success["backup"] == first["backup"] and success["time"] == first["time"]
    assert info["last_success"] == first["time"]
    os.unlink(second["backup"])
    shutil.rmtree(os.path.dirname(first["backup"]))
    info = engine.status()
    assert info["repositories"]["a.db"]["last_success"] is None and info["last_success"] is None
