# -*- coding: utf-8 -*-
"""Hostile ground: the run-as user (or the SQLite folder's owner) plants symbolic links where root works.

The attacker is the OS user ``nobody``: it owns the state folder, the SQLite
folder and the destination, as a run-as user such as ``postgres`` does on a
real host.  Root runs the engine the way the doors do (modules, an
administrator's ``repobackup``).  Each test plants a link at a root-only
victim and checks the victim afterwards, byte for byte.
"""

from __future__ import annotations

import json
import os
import pwd
import stat

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import kind_sqlite, privilege
from ansible_collections.reposerver.backup.plugins.module_utils.errors import RepoBackupError, RepositoryError

from repobackup_testlib import HOST, give_tmp_to, make_db, numbers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the doors run as root)")

ATTACKER = "nobody"


def _ids(user=ATTACKER):
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def victim(tmp_path):
    """A root-only folder with a root-only file and settings-like JSON files: what a link points at."""
    folder = tmp_path / "victim"
    folder.mkdir(mode=0o700)
    files = {"secret": b"root only\n", "main.json": b'{"format": 1}\n', "other.json": b'{"format": 1}\n'}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o600)

    return Victim(folder, files)


class Victim:
    """A folder (``victim / name`` and ``str(victim)`` as for a path) and a check that it is untouched."""

    def __init__(self, folder, files):
        self.folder, self.files = folder, dict(files)

    def __truediv__(self, name):
        return self.folder / name

    def __str__(self):
        return str(self.folder)

    def intact(self):
        names = sorted(n for n in os.listdir(str(self.folder)) if n not in ("root.db", "empty.db"))
        assert names == sorted(self.files)
        for name, data in self.files.items():
            assert (self.folder / name).read_bytes() == data, name
            info = os.stat(str(self.folder / name))
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600), name


@pytest.fixture
def attacker_engine(tmp_path, paths, destination, sqlite_root, make_settings):
    """An SQLite server whose run-as user (the attacker) owns the state folder, SQLite folder and destination."""
    give_tmp_to(tmp_path, paths, destination, ATTACKER)
    os.chown(str(sqlite_root), *_ids())
    make_db(sqlite_root / "a.db", range(1, 6))
    os.chown(str(sqlite_root / "a.db"), *_ids())

    def make(**options):
        return engine_mod.Engine(make_settings(run_as=ATTACKER, **options), paths, host=HOST)
    return make


def plant(link, target):
    """Create ``link`` -> ``target`` as the attacker would (the link is the attacker's)."""
    if os.path.lexists(str(link)):
        os.unlink(str(link))
    os.symlink(str(target), str(link))
    os.lchown(str(link), *_ids())


# -- 1. the run-as user cannot make root write anywhere ----------------------------------------------

def test_lock_link_to_a_root_only_file(attacker_engine, victim):
    engine = attacker_engine()
    os.makedirs(engine.state_dir, exist_ok=True)
    plant(os.path.join(engine.state_dir, "lock"), victim / "secret")
    result = engine.export()
    assert result["result"] == "failed" and "symbolic link" in result["error"], result
    victim.intact()


def test_pending_link_to_a_folder_of_settings(attacker_engine, victim):
    engine = attacker_engine()
    plant(os.path.join(engine.state_dir, "pending"), victim)
    assert engine.export()["result"] == "ok"
    victim.intact()


@pytest.mark.parametrize("folder", ["restored", "scratch", "status.json"])
def test_state_links_during_import(attacker_engine, victim, folder):
    engine = attacker_engine()
    backup = engine.export()["repositories"]["a.db"]["backup"]
    plant(os.path.join(engine.state_dir, folder), victim)
    try:
        engine.import_backup(backup, repository="copy.db")
    except RepoBackupError:
        pass  # refusing is fine; writing into the victim is not
    engine.export()
    victim.intact()


def test_destination_host_folder_linked_elsewhere(attacker_engine, victim, destination):
    engine = attacker_engine()
    plant(destination / HOST, victim)
    result = engine.export()
    assert result["result"] == "failed"
    victim.intact()


def test_root_refuses_folders_another_user_owns(tmp_path, paths, destination, sqlite_root, make_settings, victim):
    """run_as root with a state folder, destination or SQLite folder the attacker owns: refused, nothing written."""
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = engine_mod.Engine(make_settings(), paths, host=HOST)  # sqlite: run_as root
    os.makedirs(engine.state_dir)
    os.chown(engine.state_dir, *_ids())
    plant(os.path.join(engine.state_dir, "lock"), victim / "secret")
    result = engine.run()
    assert result["result"] == "failed" and "state folder" in result["error"] and "owned by user nobody" \
        in result["error"], result
    victim.intact()

    os.unlink(os.path.join(engine.state_dir, "lock"))
    os.chown(engine.state_dir, 0, 0)
    os.chown(str(destination), *_ids())
    result = engine.run()
    assert "Destination %s is refused" % destination in result["repositories"]["a.db"]["error"], result
    assert not os.listdir(str(destination))

    os.chown(str(destination), 0, 0)
    os.chown(str(sqlite_root), *_ids())
    result = engine.run()
    assert result["result"] == "failed" and "The SQLite folder %s is refused" % sqlite_root in result["error"], result
    assert engine.status()["server_reachable"] is False


# -- 2. the SQLite folder: no link followed, by export, existence checks or restore ----------------------

@pytest.mark.parametrize("suffix", ["", "-wal", "-journal", "-shm"])
def test_sqlite_names_and_side_files_that_are_links(attacker_engine, victim, sqlite_root, suffix):
    engine = attacker_engine(repositories=["a.db"])
    plant(str(sqlite_root / "a.db") + suffix, victim / "secret")
    result = engine.export()
    assert result["result"] == "failed"
    assert "symbolic link" in result["repositories"]["a.db"]["error"] or suffix == ""
    victim.intact()


def test_import_never_writes_through_a_link(attacker_engine, victim, sqlite_root):
    engine = attacker_engine()
    backup = engine.export()["repositories"]["a.db"]["backup"]
    make_db(victim / "root.db", range(100, 103))
    (victim / "empty.db").write_bytes(b"")
    before = {n: (victim / n).read_bytes() for n in ("root.db", "empty.db")}
    plant(sqlite_root / "a.db", victim / "root.db")
    plant(sqlite_root / "new.db", victim / "empty.db")
    assert not engine.server.exists("a.db") and not engine.server.exists("new.db")
    with pytest.raises(RepositoryError, match="symbolic link"):
        engine.import_backup(backup, repository="a.db", force=True)
    with pytest.raises(RepositoryError, match="symbolic link"):
        engine.import_backup(backup, repository="new.db")
    assert {n: (victim / n).read_bytes() for n in ("root.db", "empty.db")} == before


# -- 3. a door run as root keeps the scheduled job working; a crash is logged ----------------------------

def test_a_root_door_leaves_everything_to_the_run_as_user(attacker_engine, paths, sqlite_root):
    engine = attacker_engine()
    assert engine.export()["result"] == "ok"
    assert engine.import_backup(latest_of="a.db", repository="copy.db")["changed"]
    for name in ("lock", "status.json", "restored"):
        assert os.stat(os.path.join(engine.state_dir, name)).st_uid == _ids()[0], name
    assert os.stat(str(sqlite_root / "copy.db")).st_uid == _ids()[0]
    folder = engine.store.repo_dir("a.db")
    for level in (os.path.dirname(os.path.dirname(folder)), folder):
        assert os.stat(level).st_uid == _ids()[0]
    # what cron does next, as the run-as user itself
    again = privilege.call_as(ATTACKER, engine._run, True)  # pylint: disable=protected-access
    assert again["result"] == "ok", again


def test_an_unexpected_error_leaves_a_log_line_and_a_failed_status(attacker_engine, paths, monkeypatch):
    engine = attacker_engine()

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")
    monkeypatch.setattr(engine_mod.Engine, "_export_locked", broken)
    result = engine.run()
    assert result["result"] == "failed" and "ZeroDivisionError" in result["error"]
    status = json.loads(open(os.path.join(engine.state_dir, "status.json"), encoding="utf-8").read())
    assert status["last_run"]["result"] == "failed" and "planted bug" in status["last_run"]["error"]
    with open(paths.log_file("main"), encoding="utf-8") as handle:
        assert "result=failed" in handle.read().splitlines()[-1]


def test_an_older_root_lock_does_not_stop_the_job(attacker_engine):
    """An older engine's door left state/lock as root:root 0640: the run-as user's run still works."""
    engine = attacker_engine()
    lock = os.path.join(engine.state_dir, "lock")
    with open(lock, "w", encoding="utf-8") as handle:
        handle.write("pid 1")
    os.chmod(lock, 0o640)
    assert engine.run()["result"] == "ok"


def test_the_child_becomes_the_run_as_user_and_returns_errors_as_sentences():
    assert privilege.call_as(ATTACKER, os.geteuid) == _ids()[0]
    with pytest.raises(RepositoryError, match="^planted$"):
        privilege.call_as(ATTACKER, _raise, RepositoryError("planted"))
    with pytest.raises(RepoBackupError, match="does not exist on this host"):
        privilege.call_as("no-such-user-here", os.geteuid)


def _raise(exc):
    raise exc


# -- 9. what a killed run leaves is removed by the next; nothing in /tmp ------------------------------

def test_leftovers_of_a_killed_import_are_removed_by_the_next_run(attacker_engine, sqlite_root, paths):
    engine = attacker_engine()
    assert engine.export()["result"] == "ok"
    left = sqlite_root / ".restore-abc123.tmp"
    left.write_bytes(b"SQLite format 3\x00" + b"\0" * 1000)
    (sqlite_root / ".restore-abc123.tmp-journal").write_bytes(b"x")
    dead = os.path.join(engine.state_dir, "scratch", "999999999-x")
    os.makedirs(dead)
    os.chown(os.path.dirname(dead), *_ids())
    staging = os.path.join(engine.state_dir, "staging")  # an SFTP upload or download a killed run left
    staged = [os.path.join(staging, n) for n in (".tmp-999999999-abc", ".tmp-oldstyle", ".tmp-%d-live" % os.getpid())]
    for folder in staged:
        os.makedirs(folder)
        open(os.path.join(folder, "data.sqlite3"), "wb").close()
        for path in (staging, folder, os.path.join(folder, "data.sqlite3")):
            os.chown(path, *_ids())
    assert engine.run()["result"] == "ok"
    assert sorted(os.listdir(str(sqlite_root))) == ["a.db"]
    assert not os.path.exists(dead)
    assert [os.path.exists(p) for p in staged] == [False, False, True]  # a live process's copy stays
    with open(paths.log_file("main"), encoding="utf-8") as handle:
        assert "left by a run that was killed" in handle.read()


def test_content_hashes_use_no_temporary_folder(attacker_engine, tmp_path, monkeypatch):
    engine = attacker_engine()
    backup = engine.export()["repositories"]["a.db"]["backup"]
    empty = tmp_path / "tmp"
    empty.mkdir(mode=0o777)
    monkeypatch.setattr(kind_sqlite.tempfile, "tempdir", str(empty))
    assert engine.import_backup(backup)["changed"] is False  # compares the live repository's content
    assert os.listdir(str(empty)) == []
    assert numbers(engine.settings.options["root"] + "/a.db") == [1, 2, 3, 4, 5]
