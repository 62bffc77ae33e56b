# -*- coding: utf-8 -*-
"""What the administrator reads: the status text prints only what is known, and a failure says where."""

from __future__ import annotations

import os

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import report
from repobackup_testlib import make_db
from sftp_testlib import tmpfs_mount  # noqa: F401  pylint: disable=unused-import


def upload_line(text: str) -> str:
    return [line for line in text.splitlines() if line.startswith("last upload")][0]


def test_a_local_upload_shows_its_size_and_no_transfer_time(make_engine, sqlite_root):
    make_db(sqlite_root / "a.db", range(1, 50))
    engine = make_engine()
    assert engine.export()["result"] == "ok"
    status = engine.status()
    assert status["last_upload"]["bytes"] > 0 and status["last_upload"]["seconds"] is None
    line = upload_line(report.status_text(status))
    assert "None" not in line and " in " not in line, line
    assert line.endswith(" ok (%s)" % report.human_size(status["last_upload"]["bytes"])), line


@pytest.mark.parametrize("upload, tail", [
    ({"bytes": 2048, "seconds": 1.5, "verified": True}, "ok (2.0 KiB in 1.5s, read back)"),
    ({"bytes": 2048, "seconds": 0.25, "verified": False}, "ok (2.0 KiB in 0.25s)"),
    ({"bytes": 2048, "seconds": None, "verified": None}, "ok (2.0 KiB)"),
    ({"bytes": None, "seconds": None, "verified": None}, "ok"),
    ({"bytes": None, "seconds": 3, "verified": True}, "ok (in 3s, read back)"),
])
def test_the_upload_line_prints_only_what_is_known(make_engine, sqlite_root, upload, tail):
    status = make_engine().status()
    status["last_upload"] = dict(upload, time="2026-12-01T01:00:00Z", result="ok", error=None)
    assert upload_line(report.status_text(status)) == "last upload  2026-12-01T01:00:00Z " + tail


def test_names_with_control_characters_stay_on_their_line(make_engine, sqlite_root):
    make_db(sqlite_root / "ok.db", range(1, 3))
    status = make_engine(repositories=["ok.db", "odd\nname.db"]).status()
    text = report.status_text(status)
    assert "odd\\nname.db" in text and "odd\nname.db" not in text
    assert [line for line in text.splitlines() if line.startswith("missing")] == \
        ["missing      odd\\nname.db (named but not present)"]


@pytest.fixture
def small_local(tmp_path, tmpfs_mount):
    return tmpfs_mount(tmp_path / "small", size="1m", owner=None, mode=0o750).path


def test_a_disk_that_fills_during_an_export_is_named_in_one_sentence(make_engine, sqlite_root, small_local):
    db = make_db(sqlite_root / "grows.db", range(1, 11), filler_kb=64)
    engine = make_engine(destination=str(small_local))
    assert engine.export()["result"] == "ok"
    folder = engine.store.repo_dir("grows.db")
    before = sorted(os.listdir(folder))
    make_db(db, range(11, 21), filler_kb=2048)  # the free-space check passes (last backup small); the export fills it
    failed = engine.export()["repositories"]["grows.db"]
    assert failed["result"] == "failed"
    assert failed["error"] == "No space left on device while writing the backup of 'grows.db' to %s" % folder
    assert sorted(os.listdir(folder)) == before
    status = engine.status()
    assert status["repositories"]["grows.db"]["last"]["error"] == failed["error"]
    with open(engine.paths.log_file("main"), encoding="utf-8") as handle:
        assert "to %s" % folder in handle.read()
