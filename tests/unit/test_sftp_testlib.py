# -*- coding: utf-8 -*-
"""The SFTP test environment itself (sftp_testlib): real sshd, real paramiko, no engine."""

from __future__ import annotations

import io
import os
import stat
import threading
import time

import paramiko
import pytest

from sftp_testlib import (cut_sessions, connect, mount_points, session_pids, wait_for,  # noqa: F401  pylint: disable=unused-import
                          wait_for_growing_file, sftp_dir, sftp_server, tmpfs_mount)


class SlowSource(io.RawIOBase):
    """total bytes of b"x", handed out in chunks with a pause: an upload that lasts."""

    def __init__(self, total, pause=0.005):
        super().__init__()
        self.left = total
        self.pause = pause

    def readable(self):
        return True

    def read(self, size=-1):
        size = min(self.left, 32768 if size is None or size < 0 else size)
        if size:
            time.sleep(self.pause)
        self.left -= size
        return b"x" * size


def test_server_description(sftp_server):
    assert sftp_server.host == "127.0.0.1"
    assert sftp_server.user == os.environ["REPOBACKUP_SFTP_USER"]
    assert sftp_server.url("/srv/b") == "sftp://%s@127.0.0.1:%d/srv/b" % (sftp_server.user, sftp_server.port)
    assert sftp_server.url("x") == "sftp://%s@127.0.0.1:%d%s/x" % (sftp_server.user, sftp_server.port, sftp_server.home)
    assert sftp_server.host_key.startswith("ssh-ed25519 AAAA") and len(sftp_server.host_key.split()) == 2


def test_login_checks_host_key_and_puts_a_file(sftp_dir):
    server, path = sftp_dir
    assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (server.uid, 0o750)
    with connect(server) as client:
        key = client.get_transport().get_remote_server_key()
        assert "%s %s" % (key.get_name(), key.get_base64()) == server.host_key
        with client.open_sftp() as sftp:
            sftp.putfo(io.BytesIO(b"hello\n"), str(path / "hello.txt"))
            assert sftp.stat(str(path / "hello.txt")).st_size == 6
        # an SFTP-only account: commands are refused
        _stdin, stdout, _stderr = client.exec_command("id")
        assert stdout.channel.recv_exit_status() != 0
    assert (path / "hello.txt").read_bytes() == b"hello\n"
    assert (path / "hello.txt").stat().st_uid == server.uid


def test_cut_sessions_breaks_a_running_upload(sftp_dir):
    server, path = sftp_dir
    listener = int(open(os.path.join(os.path.dirname(server.known_hosts), "sshd.pid"), encoding="utf-8").read())
    client = connect(server)
    outcome = {}

    def upload():
        try:
            with client.open_sftp() as sftp:
                sftp.putfo(SlowSource(64 << 20), str(path / "big.part"))
            outcome["result"] = "finished"
        except Exception as exc:  # pylint: disable=broad-exception-caught
            outcome["result"] = exc

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    try:
        wait_for_growing_file(path, "big", 256 << 10, timeout=10)
        assert session_pids(server.user)
        assert cut_sessions(server.user)
        worker.join(10)
        assert not worker.is_alive()
        assert isinstance(outcome["result"], (OSError, EOFError, paramiko.SSHException)), outcome
        assert not client.get_transport().is_active()
        assert not session_pids(server.user)
        os.kill(listener, 0)   # the listener survives; new logins work
        with connect(server) as again, again.open_sftp() as sftp:
            assert sftp.stat(str(path / "big.part")).st_size < 64 << 20
    finally:
        client.close()


def test_full_tmpfs_fails_the_put_and_unmounts(sftp_dir, tmpfs_mount):
    server, path = sftp_dir
    disk = tmpfs_mount(path / "disk", size="1m")
    assert disk.mounted and os.path.ismount(str(path / "disk"))
    assert (path / "disk").stat().st_uid == server.uid
    with connect(server) as client, client.open_sftp() as sftp:
        # SFTP v3 has no "disk full": an unpipelined write gets SSH_FX_FAILURE ...
        with sftp.open(str(path / "disk" / "one"), "wb") as handle:
            with pytest.raises(OSError, match="Failure"):
                handle.write(b"y" * (2 << 20))
        sftp.remove(str(path / "disk" / "one"))
        # ... while put/putfo (pipelined) lose the write errors and only notice the size
        with pytest.raises(OSError, match="size mismatch"):
            sftp.putfo(io.BytesIO(b"y" * (2 << 20)), str(path / "disk" / "two-mb"))
    disk.unmount()
    assert not disk.mounted and not os.path.ismount(str(path / "disk"))
    assert str(path / "disk") not in mount_points()


def test_tmpfs_as_a_local_mount_point(tmp_path, tmpfs_mount):
    disk = tmpfs_mount(tmp_path / "dest", owner=None, mode=0o700)
    assert os.path.ismount(str(tmp_path / "dest"))
    assert stat.S_IMODE((tmp_path / "dest").stat().st_mode) == 0o700
    assert repr(disk).startswith("TmpfsMount(")
    # left mounted: the fixture's teardown unmounts it
