# -*- coding: utf-8 -*-
"""The shapes of run, export and status results (results.py): the doors and status.json rely on them."""

from __future__ import annotations

import os

from repobackup_testlib import make_db

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod

RUN = {"result", "error", "repositories", "repaired"}
PUBLISHED = {"time", "result", "error", "size", "duration", "backup", "data_file_path", "sha256", "content_sha256",
             "sessions_ended", "upload", "skipped_backups"}
FAILED = {"time", "result", "error", "size", "duration", "backup"}  # the destination was never tried
FAILED_AT_DESTINATION = FAILED | {"upload"}
STAND_IN = PUBLISHED - {"skipped_backups"} | {"replaces"}
LAST_RUN = {"start", "end", "trigger", "result", "error", "repositories", "failed", "repaired"}
LAST_UPLOAD = {"time", "result", "error", "destination_kind", "bytes", "seconds", "verified", "backup"}


def test_a_run_and_what_status_keeps_of_it(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(repositories=["a", "gone"])
    done = engine.run()
    assert set(done) == RUN and done["result"] == "partial" and done["repaired"] == []
    assert set(done["repositories"]["a"]) == PUBLISHED and done["repositories"]["a"]["upload"] == {
        "bytes": done["repositories"]["a"]["size"]}
    assert set(done["repositories"]["gone"]) == FAILED
    assert done["repositories"]["gone"]["error"] == "repository 'gone' does not exist"
    kept = engine.read_status()
    entry = kept["repositories"]["a"]
    assert entry == {"last": done["repositories"]["a"], "last_success": done["repositories"]["a"], "failures": 0}
    assert kept["repositories"]["gone"] == {"last": done["repositories"]["gone"], "failures": 1}
    assert set(kept["last_run"]) == LAST_RUN and kept["last_run"]["failed"] == ["gone"]
    assert kept["last_run"]["repositories"] == ["a", "gone"] and kept["last_run"]["trigger"] == "run"
    assert set(kept["last_upload"]) == LAST_UPLOAD
    assert kept["last_upload"]["backup"] == done["repositories"]["a"]["backup"]


def test_a_destination_that_cannot_be_used(make_engine, sqlite_root, destination):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    destination.rmdir()
    done = engine.run()
    failed = done["repositories"]["a"]
    assert set(done) == RUN and done["result"] == "failed" and done["error"] == failed["error"]
    assert set(failed) == FAILED_AT_DESTINATION and failed["upload"] is None and "does not exist" in failed["error"]
    upload = engine.read_status()["last_upload"]
    assert set(upload) == LAST_UPLOAD and upload["result"] == "failed" and upload["bytes"] is None


def test_skipped_and_crashed_runs(make_engine, sqlite_root, monkeypatch):
    make_db(sqlite_root / "a", [1])
    assert make_engine(enabled=False).run() == {"result": "skipped", "reason": "auto-backup is off", "repositories": {}}

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")
    monkeypatch.setattr(engine_mod.Engine, "_export_locked", broken)
    engine = make_engine()
    done = engine.export()
    assert set(done) == RUN and done["repositories"] == {} and done["repaired"] == [] and done["result"] == "failed"
    last_run = engine.read_status()["last_run"]
    assert set(last_run) == LAST_RUN and last_run["trigger"] == "export" and last_run["repositories"] == []
    assert "repositories" not in engine.read_status()


def test_status_stands_in_the_newest_backup_for_a_last_success_that_is_gone(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    first = engine.run()["repositories"]["a"]
    second = engine.run()["repositories"]["a"]
    os.unlink(second["backup"])
    shown = engine.status()["repositories"]["a"]["last_success"]
    assert set(shown) == STAND_IN and shown["backup"] == first["backup"] and shown["replaces"] == second["backup"]
    assert shown["duration"] is None and shown["upload"] is None and shown["result"] == "ok"
