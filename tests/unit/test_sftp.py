# -*- coding: utf-8 -*-
"""sftp:// destinations against the real test sshd on a loopback port (scripts/setup-test-env).

The SFTP user is the unprivileged ``rbsftp``; the engine runs in this process
with paramiko.  Faults are real: a host key that differs, a port nobody
listens on, a folder the user may not write, a tmpfs that fills, and the
user's sshd session processes killed in the middle of an upload.
"""

from __future__ import annotations

import base64
import hashlib
import errno
import json
import os
import stat
import subprocess
import threading

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import cli, layout, sftp, store
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError, MissingFile
from repobackup_testlib import HOST, give_tmp_to, make_db, numbers
from sftp_testlib import (cut_sessions, sftp_dir, sftp_server, tmpfs_mount,  # noqa: F401  pylint: disable=unused-import
                          wait_for_growing_file)

# A well-formed ed25519 public key that no test server has.
OTHER_KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(range(32))).decode()


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# A well-formed ECDSA public key: a type of key the test server does not have.
ECDSA_KEY = "ecdsa-sha2-nistp256 " + base64.b64encode(
    _ssh_string(b"ecdsa-sha2-nistp256") + _ssh_string(b"nistp256") + _ssh_string(b"\x04" + bytes(range(64)))).decode()


@pytest.fixture
def sftp_engine(make_settings, paths, sftp_dir):
    """make(subpath="", **options) -> an Engine whose destination is sftp://rbsftp@.../<sftp_dir>/<subpath>."""
    server, root = sftp_dir

    def make(subpath="", **options):
        raw = {"destination": server.url(os.path.join(str(root), subpath)), "sftp_key_file": server.key_file,
               "sftp_host_key": server.host_key, "sftp_timeout": 5}
        raw.update(options)
        return engine_mod.Engine(make_settings(**raw), paths, host=HOST)
    return make


def remote_files(root):
    """Every file below ``root`` (relative paths), leftovers included."""
    found = []
    for folder, dummy, names in os.walk(str(root)):
        found.extend(os.path.relpath(os.path.join(folder, n), str(root)) for n in names)
    return sorted(found)


def test_backups_go_to_the_sftp_server_whole_and_private(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    make_db(sqlite_root / "alpha.db", range(1, 51))
    make_db(sqlite_root / "beta.db", range(1, 11), journal="wal")
    engine = sftp_engine(sftp_verify_upload=True)
    done = engine.run()
    assert done["result"] == "ok", done
    folder = root / HOST / "main" / "alpha.db"
    names = sorted(os.listdir(folder))
    assert len(names) == 2 and names[0].endswith(".manifest.json"), names
    for name in names:
        info = os.stat(folder / name)
        assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_uid == server.uid
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750
    assert not [n for n in remote_files(root) if os.path.basename(n).startswith(".")]
    result = done["repositories"]["alpha.db"]
    assert result["backup"].startswith("sftp://%s@%s:%d/" % (server.user, server.host, server.port))
    assert result["upload"]["verified"] is True and result["upload"]["bytes"] == result["size"]
    # The data on the server is what the manifest says, and sqlite3 alone opens it.
    manifest = store.resolve(str(folder / names[0]))
    store.check_data(manifest)
    assert numbers(manifest["path"]) == list(range(1, 51))


def test_status_shows_destination_kind_free_space_and_last_upload(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 6))
    engine = sftp_engine()
    assert engine.run()["result"] == "ok"
    status = engine.status()
    assert status["destination_kind"] == "sftp" and status["destination_reachable"] is True
    local = os.statvfs(str(root))
    assert abs(status["destination_free_bytes"] - local.f_bavail * local.f_frsize) < 64 << 20
    assert status["last_upload"]["result"] == "ok" and status["last_upload"]["destination_kind"] == "sftp"
    assert status["last_upload"]["bytes"] == status["repositories"]["a.db"]["last"]["size"]
    assert status["repositories"]["a.db"]["backups_kept"] == 1


def test_import_reads_backups_back_from_the_sftp_server(sftp_engine, sqlite_root):
    db = make_db(sqlite_root / "a.db", range(1, 21))
    engine = sftp_engine()
    first = engine.export(["a.db"])["repositories"]["a.db"]
    make_db(db, range(21, 31))
    assert engine.export(["a.db"])["result"] == "ok"
    os.unlink(db)
    restored = engine.import_backup(latest_of="a.db")
    assert restored["changed"] and numbers(db) == list(range(1, 31))
    # By address, the older one, under another name; nothing downloaded stays behind.
    again = engine.import_backup(first["backup"], repository="old.db")
    assert again["backup"] == first["backup"]
    assert numbers(sqlite_root / "old.db") == list(range(1, 21))
    assert not os.listdir(engine._state("staging"))
    with pytest.raises(BackupError, match="not on this server's destination"):
        engine.import_backup(first["backup"].replace("rbsftp@", "root@"), repository="x.db")


def test_retention_works_the_same_over_sftp(sftp_engine, sftp_dir, sqlite_root, monkeypatch):
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = sftp_engine(keep_last=2)
    for dummy in range(4):
        assert engine.export(["a.db"])["result"] == "ok"
    kept = engine.store.backups("a.db")
    assert len(kept) == 2
    assert len(os.listdir(root / HOST / "main" / "a.db")) == 4


def test_a_changed_host_key_is_refused_before_anything_is_sent(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    assert sftp_engine().run()["result"] == "ok"
    earlier = remote_files(root)
    done = sftp_engine(sftp_host_key=OTHER_KEY).run()
    assert done["result"] == "failed"
    error = done["repositories"]["a.db"]["error"]
    assert "does not match sftp_host_key" in error and "SHA256:" in error and server.known_hosts_name() in error
    assert remote_files(root) == earlier


def test_an_unknown_host_key_is_never_accepted(sftp_engine, sftp_dir, sqlite_root, tmp_path):
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    empty = tmp_path / "known_hosts"
    empty.write_text("[otherhost]:22 %s\n" % OTHER_KEY)
    done = sftp_engine(sftp_host_key="", sftp_known_hosts=str(empty)).run()
    error = done["repositories"]["a.db"]["error"]
    assert "is unknown" in error and "never accepted automatically" in error and str(empty) in error
    assert remote_files(root) == [] and empty.read_text() == "[otherhost]:22 %s\n" % OTHER_KEY
    # The same server found in a known_hosts file is trusted.
    good = sftp_engine(sftp_host_key="", sftp_known_hosts=server.known_hosts).run()
    assert good["result"] == "ok", good


def test_an_unreachable_server_fails_cleanly_after_the_retries(make_settings, paths, sqlite_root, sftp_server):
    for name in ("a.db", "b.db", "c.db"):
        make_db(sqlite_root / name, range(1, 4))
    free_port = 1  # tcpmux: nothing listens here
    engine = engine_mod.Engine(make_settings(
        destination="sftp://%s@127.0.0.1:%d/srv" % (sftp_server.user, free_port), sftp_key_file=sftp_server.key_file,
        sftp_host_key=sftp_server.host_key, sftp_retries=2, sftp_timeout=2), paths, host=HOST)
    attempts = []
    real_connect = engine.store.fs._connect
    engine.store.fs._connect = lambda: (attempts.append(1), real_connect())
    done = engine.run()
    assert done["result"] == "failed"
    error = done["repositories"]["a.db"]["error"]
    assert "failed after 3 attempt(s)" in error and "cannot connect to 127.0.0.1:1" in error
    # Asked once per run (1 + 2 retries), not once per repository; every repository says why.
    assert len(attempts) == 3 and done["error"] == error
    assert {r["error"] for r in done["repositories"].values()} == {error}
    status = engine.status()
    assert status["destination_reachable"] is False and status["destination_free_bytes"] is None
    assert status["last_upload"]["result"] == "failed"


def test_permission_denied_on_the_remote_path(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    locked = root / "locked"
    locked.mkdir(mode=0o755)  # owned by root: rbsftp may look, not write
    make_db(sqlite_root / "a.db", range(1, 4))
    done = sftp_engine("locked").run()
    error = done["repositories"]["a.db"]["error"]
    assert "permission denied for user 'rbsftp'" in error, error
    assert remote_files(locked) == []


def test_permission_lost_on_the_repository_folder_keeps_earlier_backups(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = sftp_engine(keep_last=1)
    assert engine.run()["result"] == "ok"
    folder = root / HOST / "main" / "a.db"
    earlier = remote_files(root)
    os.chmod(folder, 0o550)  # rbsftp may read its backups, no longer write or remove them
    try:
        failed = engine.run()["repositories"]["a.db"]
    finally:
        os.chmod(folder, 0o750)
    assert failed["result"] == "failed" and "permission denied for user 'rbsftp'" in failed["error"], failed
    assert remote_files(root) == earlier
    assert [engine.store.is_good(m) for m in engine.store.backups("a.db")] == [True]


def test_a_missing_remote_folder_is_not_created(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    done = sftp_engine("not-there").run()
    assert "does not exist on the SFTP server" in done["repositories"]["a.db"]["error"]
    assert not (root / "not-there").exists()


def test_a_remote_disk_that_fills_keeps_earlier_backups(sftp_engine, sftp_dir, sqlite_root, tmpfs_mount):
    server, root = sftp_dir
    tmpfs_mount(root / "small", size="3m", owner=server.user)
    db = make_db(sqlite_root / "grows.db", range(1, 11), filler_kb=512)
    engine = sftp_engine("small", keep_last=5)
    assert engine.export()["result"] == "ok"
    earlier = remote_files(root / "small")
    make_db(db, range(11, 21), filler_kb=4096)  # larger than the whole remote disk
    failed = engine.export()["repositories"]["grows.db"]
    assert failed["result"] == "failed"
    assert "remote disk is full" in failed["error"], failed["error"]
    assert remote_files(root / "small") == earlier
    assert len([m for m in engine.store.backups("grows.db") if engine.store.is_good(m)]) == 1
    assert not os.listdir(engine._state("staging"))


def test_not_enough_free_space_refuses_to_start(sftp_engine, sftp_dir, sqlite_root, tmpfs_mount):
    server, root = sftp_dir
    tmpfs_mount(root / "small", size="3m", owner=server.user)
    make_db(sqlite_root / "big.db", range(1, 11), filler_kb=1536)
    engine = sftp_engine("small", keep_last=5)
    assert engine.export()["result"] == "ok"  # about 1.5 MiB: 1.5 MiB left, 1.8 MiB needed next time
    earlier = remote_files(root / "small")
    refused = engine.export()["repositories"]["big.db"]
    assert refused["result"] == "failed"
    assert "Not enough free space at sftp://" in refused["error"] and "1.2 x the last backup" in refused["error"]
    assert remote_files(root / "small") == earlier
    assert engine.status()["repositories"]["big.db"]["last"]["error"] == refused["error"]


def _cut_when_uploading(root, user):
    def cut():
        wait_for_growing_file(root, ".tmp-", 1 << 20, timeout=30)
        cut_sessions(user)
    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    return thread


def test_a_connection_cut_during_upload_is_retried(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    make_db(sqlite_root / "big.db", range(1, 11), filler_kb=48 * 1024)
    engine = sftp_engine(sftp_retries=2)
    cutter = _cut_when_uploading(root, server.user)
    done = engine.export()
    cutter.join(5)
    assert done["result"] == "ok", done
    assert engine.store.fs.reconnects >= 1
    files = remote_files(root)
    assert len(files) == 2 and not [f for f in files if os.path.basename(f).startswith(".")], files
    manifest = store.resolve(str(root / [f for f in files if f.endswith(".manifest.json")][0]))
    store.check_data(manifest)


def test_a_connection_cut_without_retries_fails_cleanly(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    db = make_db(sqlite_root / "big.db", range(1, 11), filler_kb=512)
    engine = sftp_engine(sftp_retries=0)
    assert engine.export()["result"] == "ok"
    earlier = remote_files(root)
    make_db(db, range(11, 21), filler_kb=48 * 1024)
    cutter = _cut_when_uploading(root, server.user)
    failed = engine.export()["repositories"]["big.db"]
    cutter.join(5)
    assert failed["result"] == "failed" and "failed after 1 attempt(s)" in failed["error"], failed
    # Nothing new under a final name; at most the cut temporary file, which the next good run removes.
    assert [f for f in remote_files(root) if not os.path.basename(f).startswith(".")] == earlier
    assert engine.export()["result"] == "ok"
    assert not [f for f in remote_files(root) if os.path.basename(f).startswith(".")]


def counted_connects(engine) -> list:
    """One entry per connection the engine's SFTP destination attempts."""
    attempts = []
    real_connect = engine.store.fs._connect
    engine.store.fs._connect = lambda: (attempts.append(1), real_connect())
    return attempts


def test_a_refusal_while_connecting_is_not_retried(sftp_engine, sftp_dir, sqlite_root):
    """No host key type in common (the pinned key is ECDSA, the server has ed25519 only): another attempt would
    meet the same refusal, so the run fails at the first, not after the retries."""
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = sftp_engine(sftp_host_key=ECDSA_KEY, sftp_retries=3)
    attempts = counted_connects(engine)
    done = engine.run()
    assert done["result"] == "failed"
    error = done["repositories"]["a.db"]["error"]
    assert len(attempts) == 1 and "attempt(s)" not in error, error
    assert error.startswith("SSH handshake with %s:%d failed: " % (sftp_dir[0].host, sftp_dir[0].port))


def test_a_connection_refused_is_retried(sftp_engine, sqlite_root, sftp_server, make_settings, paths):
    """Nothing listens yet (a server that restarts): worth the retries."""
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = engine_mod.Engine(make_settings(
        destination="sftp://%s@127.0.0.1:1/srv" % sftp_server.user, sftp_key_file=sftp_server.key_file,
        sftp_host_key=sftp_server.host_key, sftp_retries=1, sftp_timeout=2), paths, host=HOST)
    attempts = counted_connects(engine)
    error = engine.run()["repositories"]["a.db"]["error"]
    assert len(attempts) == 2 and "failed after 2 attempt(s)" in error


def test_an_extension_the_server_does_not_know_is_told_from_one_that_fails(sftp_engine, sftp_dir):
    """By the status the server answers, not its text: unknown is None, a failure is an error."""
    root = sftp_dir[1]
    fs = sftp_engine().store.fs
    client = fs._client()
    try:
        assert sftp._extended(client, "no-such-request@repobackup.example") is None
        assert sftp._extended(client, "statvfs@openssh.com", str(root)) is not None
        with pytest.raises(IOError) as info:
            sftp._extended(client, "statvfs@openssh.com", str(root / "no such folder"))
        assert info.value.errno == errno.ENOENT
    finally:
        fs.close()


def test_a_data_file_gone_from_the_server_is_missing(sftp_engine, sftp_dir, sqlite_root):
    """The server's "no such file" reaches the store as MissingFile, named by its address."""
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = sftp_engine()
    done = engine.run()["repositories"]["a.db"]
    manifest = engine.store.backups("a.db")[-1]
    os.unlink(engine.store.fs.path_of(done["data_file_path"]))
    with pytest.raises(MissingFile) as info:
        engine.store.check(manifest)
    engine.close()
    assert str(info.value) == "Backup data file %s is missing." % done["data_file_path"]


def test_a_key_with_a_passphrase_is_refused_with_one_sentence(sftp_engine, sftp_dir, sqlite_root, tmp_path):
    key = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL)
    make_db(sqlite_root / "a.db", range(1, 4))
    error = sftp_engine(sftp_key_file=str(key)).run()["repositories"]["a.db"]["error"]
    assert error == ("SFTP key file %s is protected by a passphrase; unattended backups need a key without one "
                     "(passwords are never stored)." % key)
    assert "secret" not in error


def test_a_key_the_server_does_not_know_is_refused(sftp_engine, sqlite_root, tmp_path):
    key = tmp_path / "id_other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL)
    make_db(sqlite_root / "a.db", range(1, 4))
    error = sftp_engine(sftp_key_file=str(key)).run()["repositories"]["a.db"]["error"]
    assert "refused the key %s for user 'rbsftp'" % key in error


def test_require_mount_refuses_an_unmounted_share(make_settings, paths, sqlite_root, tmp_path, tmpfs_mount):
    share = tmp_path / "share"
    mount = tmpfs_mount(share, size="8m", owner=None, mode=0o750)
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = engine_mod.Engine(make_settings(destination=str(share), require_mount=True), paths, host=HOST)
    assert engine.run()["result"] == "ok"
    assert engine.status()["destination_mount_point"] is True
    mount.unmount()
    os.chmod(share, 0o750)  # the bare mount point, as on a host whose share did not come up
    done = engine.run()
    assert done["result"] == "failed"
    assert "is not a mount point, and require_mount is true" in done["repositories"]["a.db"]["error"]
    assert os.listdir(share) == [], "the backup went to the local disk under the mount point"
    status = engine.status()
    assert status["destination_mount_point"] is False and status["destination_reachable"] is False
    # Without require_mount the same run would have written under the mount point.
    loose = engine_mod.Engine(make_settings(destination=str(share)), paths, host=HOST)
    assert loose.run()["result"] == "ok" and os.listdir(share) == [layout.encode_name(HOST)]


def test_host_command_status_and_verify_over_sftp(make_settings, write_settings, paths, sftp_dir, sqlite_root, capsys):
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    write_settings(make_settings(destination=server.url(str(root)), sftp_key_file=server.key_file,
                                 sftp_host_key=server.host_key, keep_daily=7))
    assert cli.main(["run"], paths) == 0
    capsys.readouterr()
    assert cli.main(["status"], paths) == 0
    text = capsys.readouterr().out
    assert "destination  %s (sftp, " % server.url(str(root)) in text and " free)" in text
    assert "keep last 14, 7 daily" in text
    assert "last upload" in text and " ok (" in text
    status = json.loads((cli.main(["status", "--json"], paths), capsys.readouterr().out)[1])
    address = status["repositories"]["a.db"]["last"]["backup"]
    assert cli.main(["verify", address], paths) == 0
    assert capsys.readouterr().out.startswith("ok: %s (sqlite, repository 'a.db'" % address)
    # A corrupt backup on the server fails verification, named by its address.
    data = root / layout.encode_name(layout.host_name()) / "main" / "a.db" / os.path.basename(status["repositories"]["a.db"]["last"]["data_file_path"])
    with open(data, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    assert cli.main(["verify", address], paths) == 1
    err = capsys.readouterr().err
    assert status["repositories"]["a.db"]["last"]["data_file_path"] in err and "corrupt" in err
    # Data that matches its manifest but fails SQLite's own check: still named by its address, not by
    # the copy downloaded to the staging folder.
    junk = b"SQLite format 3\x00" + b"\x00" * 4080
    data.write_bytes(junk)
    manifest_path = str(data).rsplit(".", 1)[0] + ".manifest.json"
    doc = json.loads(open(manifest_path, encoding="utf-8").read())
    doc.update(size=len(junk), sha256=hashlib.sha256(junk).hexdigest())
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
    assert cli.main(["verify", address], paths) == 1
    err = capsys.readouterr().err
    assert status["repositories"]["a.db"]["last"]["data_file_path"] in err and "staging" not in err, err


def _run_as_sftp_user(server, tmp_path, paths, destination_dir):
    """The engine's run-as user is the SFTP account: its folders and its own copy of the key."""
    give_tmp_to(tmp_path, paths, destination_dir, server.user)
    key = tmp_path / "id_key"
    key.write_bytes(open(server.key_file, "rb").read())
    key.chmod(0o600)
    os.chown(str(key), server.uid, server.gid)
    return str(key)


def test_what_a_root_door_creates_belongs_to_the_run_as_user(sftp_engine, sqlite_root, paths, tmp_path, sftp_dir):
    """A door run by root (a module, an administrator) works as run_as: it never locks the scheduled job out."""
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    key = _run_as_sftp_user(server, tmp_path, paths, sqlite_root)
    engine = sftp_engine(run_as=server.user, sftp_key_file=key)
    assert engine.export()["result"] == "ok"
    assert engine.import_backup(latest_of="a.db", repository="copy.db")["changed"]
    for name in ("lock", "staging", "status.json", "restored", os.path.join("restored", "copy.db.json")):
        info = os.stat(os.path.join(engine.state_dir, name))
        assert (info.st_uid, info.st_gid) == (server.uid, server.gid), name
    assert os.stat(str(sqlite_root / "copy.db")).st_uid == server.uid
    assert stat.S_IMODE(os.stat(os.path.join(engine.state_dir, "staging")).st_mode) == 0o700


def test_the_default_known_hosts_is_the_run_as_users(sftp_engine, sftp_dir, sqlite_root, paths, tmp_path):
    """Cron runs as run_as, a door may run as root: both read run_as's ~/.ssh/known_hosts."""
    server, root = sftp_dir
    make_db(sqlite_root / "a.db", range(1, 4))
    key = _run_as_sftp_user(server, tmp_path, paths, sqlite_root)
    known = os.path.join(server.home, ".ssh", "known_hosts")
    assert not os.path.exists(known)
    engine = sftp_engine(sftp_host_key="", run_as=server.user, sftp_key_file=key)
    error = engine.run()["repositories"]["a.db"]["error"]
    assert "is unknown" in error and known in error and "/etc/ssh/ssh_known_hosts" in error
    try:
        with open(known, "w", encoding="utf-8") as handle:
            handle.write("%s %s\n" % (server.known_hosts_name(), server.host_key))
        assert engine.run()["result"] == "ok"
    finally:
        os.unlink(known)


def test_import_of_the_latest_reads_each_backup_once_and_skips_a_corrupt_one(sftp_engine, sftp_dir, sqlite_root):
    server, root = sftp_dir
    db = make_db(sqlite_root / "a.db", range(1, 6))
    engine = sftp_engine()
    assert engine.export(["a.db"])["result"] == "ok"
    make_db(db, range(6, 9))
    newest = engine.export(["a.db"])["repositories"]["a.db"]
    data = root / HOST / "main" / "a.db" / os.path.basename(newest["data_file_path"])
    with open(data, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    fs, reads = engine.store.fs, []
    real_fetch, real_hash = fs.fetch, fs.hash_file
    fs.fetch = lambda path: (reads.append(("fetch", path)), real_fetch(path))[1]
    fs.hash_file = lambda path: (reads.append(("hash", path)), real_hash(path))[1]
    done = engine.import_backup(latest_of="a.db", repository="back.db")
    assert numbers(sqlite_root / "back.db") == list(range(1, 6))  # the older, good backup
    assert [kind for kind, dummy in reads] == ["fetch", "fetch"], reads  # no separate remote read to hash
    assert done["backup"] != newest["backup"]
