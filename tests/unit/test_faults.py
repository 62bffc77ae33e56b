"""Faults lose nothing: a run killed mid-export, and a destination that fills up.

Both use the real thing: SIGKILL to a real `repobackup export` process, and a
small tmpfs mounted as the destination (root only; skipped elsewhere).
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import store
from repobackup_testlib import HOST, kill_export_when, make_db, numbers, small_tmpfs


def _size(path: str) -> int:
    """Bytes of a file, or of the files in a private staging folder (``.tmp-*/data.sqlite3``)."""
    try:
        if os.path.isdir(path):
            return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
        return os.path.getsize(path)
    except OSError:
        return 0


def good_backups(engine, name):
    return [m for m in engine.store.backups(name) if engine_mod.verify_backup(m["manifest_path"])]


def test_sigkill_mid_export_keeps_earlier_backups_and_next_run_cleans_up(
        make_settings, write_settings, sqlite_root, paths):
    db = make_db(sqlite_root / "big.db", range(1, 101), journal="wal", filler_kb=96 * 1024)
    engine = engine_mod.Engine(make_settings(keep_last=5), paths)  # this host's name, as the child uses
    write_settings(engine.settings)
    first = engine.export()
    assert first["result"] == "ok"
    folder = engine.store.repo_dir("big.db")
    earlier = sorted(os.listdir(folder))
    kept_before = [m["sha256"] for m in good_backups(engine, "big.db")]

    def partial_copy_on_disk():
        return any(n.startswith(store.TMP_PREFIX) and _size(os.path.join(folder, n)) > (1 << 20)
                   for n in os.listdir(folder))

    def drop_new_backup():  # it finished first
        for name in os.listdir(folder):
            if name not in earlier:
                os.unlink(os.path.join(folder, name))

    killed, out, err = kill_export_when(paths, partial_copy_on_disk, drop_new_backup)
    assert killed, "the export always finished before it could be killed: %s %s" % (out, err)

    leftovers = [n for n in os.listdir(folder) if n not in earlier]
    assert leftovers and all(n.startswith(store.TMP_PREFIX) for n in leftovers), leftovers
    assert [m["sha256"] for m in good_backups(engine, "big.db")] == kept_before
    assert numbers(db) == list(range(1, 101))

    again = engine.export()  # the lock died with the process
    assert again["result"] == "ok"
    assert not [n for n in os.listdir(folder) if n.startswith(".")], "leftovers of the killed run remain"
    assert len(good_backups(engine, "big.db")) == 2


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path / "small") as mount:
        yield mount


def test_full_disk_publishes_nothing_and_keeps_earlier_backups(make_settings, paths, sqlite_root, small_disk):
    db = make_db(sqlite_root / "grows.db", range(1, 11), filler_kb=1024)
    engine = engine_mod.Engine(make_settings(destination=str(small_disk), keep_last=5), paths, host=HOST)
    first = engine.export()
    assert first["result"] == "ok"
    folder = engine.store.repo_dir("grows.db")
    earlier = sorted(os.listdir(folder))

    make_db(db, range(11, 21), filler_kb=8 * 1024)  # now larger than the whole disk
    failed = engine.export()
    assert failed["result"] == "failed"
    error = failed["repositories"]["grows.db"]["error"]
    assert "No space left" in error or "full" in error, error
    assert sorted(os.listdir(folder)) == earlier, "a partial file was left behind"
    assert len(good_backups(engine, "grows.db")) == 1
    status = engine.status()
    assert status["repositories"]["grows.db"]["last"]["result"] == "failed"
    assert status["repositories"]["grows.db"]["last_success"]["time"] == first["repositories"]["grows.db"]["time"]
    assert numbers(db) == list(range(1, 21))
