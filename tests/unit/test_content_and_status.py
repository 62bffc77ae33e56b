"""Content hashes, skip_unchanged, plan, idempotent import, missed runs and metrics."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from repobackup_testlib import make_db, numbers

from ansible_collections.reposerver.backup.plugins.module_utils import metrics
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError, RepositoryError, SettingsError
from ansible_collections.reposerver.backup.plugins.module_utils.kind_sqlite import SqliteServer


def manifests(engine, name):
    return engine.store.backups(name)


# -- content hash ------------------------------------------------------------------

@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_content_hash_ignores_what_a_copy_changes_and_sees_data(make_engine, sqlite_root, journal):
    db = make_db(sqlite_root / "a", [1, 2], journal=journal)
    engine = make_engine()
    live = engine.server.live_content_hash("a")
    engine.export(["a"])
    (first,) = manifests(engine, "a")
    assert SqliteServer.content_hash(first["path"]) == live
    make_db(db, [3])
    assert engine.server.live_content_hash("a") != live


def test_content_hash_zeroes_only_the_volatile_header_fields(tmp_path):
    path = make_db(tmp_path / "x", [1])
    base = SqliteServer.content_hash(path)
    with open(path, "r+b") as handle:
        for offset in (18, 19, 24, 27, 92, 99):
            handle.seek(offset)
            handle.write(b"\x07")
    assert SqliteServer.content_hash(path) == base
    with open(path, "r+b") as handle:
        handle.seek(56)  # text encoding: real content
        handle.write(b"\x09")
    assert SqliteServer.content_hash(path) != base


# -- export options ------------------------------------------------------------------

def test_skip_unchanged_publishes_nothing_until_the_content_changes(make_engine, sqlite_root):
    db = make_db(sqlite_root / "a", [1])
    engine = make_engine(keep_last=2)
    first = engine.export(["a"], skip_unchanged=True)["repositories"]["a"]
    assert first["result"] == "ok" and first["content_sha256"]
    files = sorted(os.listdir(engine.store.repo_dir("a")))
    again = engine.export(["a"], skip_unchanged=True)["repositories"]["a"]
    assert again["result"] == "unchanged"
    assert again["backup"] == first["backup"] and again["sha256"] == first["sha256"]
    assert sorted(os.listdir(engine.store.repo_dir("a"))) == files
    info = engine.status()["repositories"]["a"]
    assert info["last_success"]["result"] == "unchanged" and info["failures"] == 0
    make_db(db, [2])
    third = engine.export(["a"], skip_unchanged=True)["repositories"]["a"]
    assert third["result"] == "ok" and third["content_sha256"] != first["content_sha256"]
    assert len(manifests(engine, "a")) == 2


def test_skip_unchanged_compares_with_a_good_backup_only(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    engine.export(["a"], skip_unchanged=True)
    (good,) = manifests(engine, "a")
    with open(good["path"], "r+b") as handle:  # the last backup rots on disk
        handle.seek(200)
        handle.write(b"rot")
    again = engine.export(["a"], skip_unchanged=True)["repositories"]["a"]
    assert again["result"] == "ok", "a corrupt last backup must not stand in for a new one"


def test_destination_override(make_engine, sqlite_root, tmp_path):
    make_db(sqlite_root / "a", [1])
    other = tmp_path / "elsewhere"
    other.mkdir()
    engine = make_engine()
    result = engine.export(["a"], destination=str(other))["repositories"]["a"]
    assert result["backup"].startswith(str(other) + "/")
    assert manifests(engine, "a") == []
    with pytest.raises(SettingsError, match="relative"):
        engine.export(["a"], destination="relative")


def test_plan_reads_only(make_engine, sqlite_root, destination):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [1])
    engine = make_engine(repositories=["a", "ghost"])
    assert engine.plan() == {"export": ["a"], "missing": ["ghost"], "reachable": True}
    assert engine.plan(["b"]) == {"export": ["b"], "missing": [], "reachable": True}
    assert list(destination.iterdir()) == []


# -- import --------------------------------------------------------------------------

def test_import_same_backup_twice_is_unchanged(make_engine, sqlite_root):
    db = make_db(sqlite_root / "a", [1, 2])
    engine = make_engine()
    engine.export(["a"])
    (backup,) = manifests(engine, "a")
    first = engine.import_backup(backup["manifest_path"], repository="copy")
    assert first["changed"] and not first["replaced"] and not first["before"]["exists"]
    second = engine.import_backup(backup["manifest_path"], repository="copy")
    assert not second["changed"]
    assert engine.import_backup(backup["path"])["changed"] is False  # the original is unchanged too
    make_db(db, [3])
    dry = engine.import_backup(backup["path"], force=True, dry_run=True)
    assert dry["changed"] and dry["replaced"] and numbers(db) == [1, 2, 3]
    assert dry["before"]["content_sha256"] != dry["after"]["content_sha256"]
    with pytest.raises(RepositoryError, match="force"):
        engine.import_backup(backup["path"])
    assert engine.import_backup(backup["path"], force=True)["changed"]
    assert numbers(db) == [1, 2]
    assert os.path.exists(os.path.join(engine.state_dir, "restored", "a.json"))


def test_latest_of_skips_a_corrupt_newest_backup(make_engine, sqlite_root):
    db = make_db(sqlite_root / "a", [1])
    engine = make_engine()
    engine.export(["a"])
    make_db(db, [2])
    engine.export(["a"])
    older, newest = manifests(engine, "a")
    with open(newest["path"], "r+b") as handle:
        handle.seek(300)
        handle.write(b"bad")
    done = engine.import_backup(latest_of="a", repository="b")
    assert done["backup"] == older["manifest_path"]
    assert numbers(sqlite_root / "b") == [1]
    with pytest.raises(BackupError, match="no good backup"):
        engine.import_backup(latest_of="never")


def test_dry_run_changes_nothing(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    engine.export(["a"])
    (backup,) = manifests(engine, "a")
    done = engine.import_backup(backup["path"], repository="new", dry_run=True)
    assert done["changed"] and not (sqlite_root / "new").exists()


# -- missed runs -----------------------------------------------------------------------

def _configure_at(engine, write_settings, when):
    path = write_settings(engine.settings)
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))


def test_missed_run_is_flagged_only_when_due_after_configuration(make_engine, write_settings, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(times=["00:05"])
    now = dt.datetime(2030, 3, 4, 9, 0)
    _configure_at(engine, write_settings, now - dt.timedelta(days=2))
    info = engine.status(now=now)
    assert info["last_due"] == "2030-03-04T00:05" and info["missed"] is True
    _configure_at(engine, write_settings, now - dt.timedelta(hours=1))  # set after today's run was due
    assert engine.status(now=now)["missed"] is False


def test_a_success_after_the_due_time_clears_missed(make_engine, write_settings, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(times=["00:05"])
    now = dt.datetime.now().replace(microsecond=0)
    _configure_at(engine, write_settings, now - dt.timedelta(days=3))
    engine.export(["a"])
    info = engine.status()
    assert info["missed"] is False and info["oldest_last_success"] == info["last_success"]


@pytest.mark.parametrize("options", [{"enabled": False}, {"suspended_until": "2030-03-05"}])
def test_off_or_suspended_is_not_missed(make_engine, write_settings, sqlite_root, options):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(times=["00:05"], **options)
    now = dt.datetime(2030, 3, 4, 9, 0)
    _configure_at(engine, write_settings, now - dt.timedelta(days=2))
    assert engine.status(now=now)["missed"] is False


def test_a_run_in_progress_is_not_missed(make_engine, write_settings, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(times=["00:05"])
    now = dt.datetime(2030, 3, 4, 9, 0)
    _configure_at(engine, write_settings, now - dt.timedelta(days=2))
    with engine.lock():
        info = engine.status(now=now)
    assert info["running"] is True and info["missed"] is False


# -- metrics -----------------------------------------------------------------------------

def test_metrics_file_after_each_run(make_engine, sqlite_root, tmp_path):
    make_db(sqlite_root / 'we"ird\\name', [1])
    make_db(sqlite_root / "b", [1])
    target = tmp_path / "textfile" / "repobackup.prom"
    old = os.umask(0)
    try:
        engine = make_engine(metrics_file=str(target), repositories=['we"ird\\name', "b", "gone"])
        engine.export()
    finally:
        os.umask(old)
    text = target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert 'repobackup_last_failed{server="main",repository="we\\"ird\\\\name"} 0' in text
    assert 'repobackup_last_failed{server="main",repository="gone"} 1' in text
    assert 'repobackup_consecutive_failures{server="main",repository="gone"} 1' in text
    assert "# TYPE repobackup_last_success_timestamp_seconds gauge" in text
    assert 'repobackup_last_size_bytes{server="main",repository="b"} ' in text
    assert 'repobackup_destination_usable{server="main",kind="local"} 1' in text
    free = [line for line in text.splitlines() if line.startswith("repobackup_destination_free_bytes{")]
    assert len(free) == 1 and int(free[0].split()[-1]) > 0
    engine.export()
    assert 'repobackup_consecutive_failures{server="main",repository="gone"} 2' in target.read_text()
    os.rename(engine.settings.destination, engine.settings.destination + ".away")  # an unmounted share
    engine.export()
    text = target.read_text()
    assert 'repobackup_destination_usable{server="main",kind="local"} 0' in text
    assert "repobackup_destination_free_bytes{" not in text
    assert not [n for n in os.listdir(target.parent) if n.startswith(".tmp-")]


def test_metrics_render_without_success(tmp_path):
    text = metrics.render("s", {"r": {"last": {"result": "failed", "duration": 1.5}, "failures": 3}})
    assert 'repobackup_last_duration_seconds{server="s",repository="r"} 1.5' in text
    assert "repobackup_last_success_timestamp_seconds{" not in text


def test_metrics_file_must_be_prom(make_settings):
    with pytest.raises(SettingsError, match=r"\.prom"):
        make_settings(metrics_file="/var/lib/x.txt")


def test_status_text_shows_a_missed_run(make_engine, write_settings, sqlite_root):
    from ansible_collections.reposerver.backup.plugins.module_utils.report import status_text
    make_db(sqlite_root / "a", [1])
    engine = make_engine(times=["00:05"])
    now = dt.datetime(2030, 3, 4, 9, 0)
    _configure_at(engine, write_settings, now - dt.timedelta(days=2))
    text = status_text(engine.status(now=now))
    assert "MISSED       the run due at 2030-03-04T00:05 left no successful backup" in text
