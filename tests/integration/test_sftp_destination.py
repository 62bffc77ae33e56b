"""The modules with an sftp:// destination on the test sshd, run by /usr/bin/python3 with Debian's paramiko.

Export writes there, autobackup_info reads kind, free space, counts and the last
upload from there, and repository_import restores from there (latest or by
address); a host key that does not match stops check mode and a real run alike.
"""

from __future__ import annotations

import os
import pwd
import shutil
import uuid
from pathlib import Path

import pytest

from hosts_env import SFTP_HOME, SFTP_USER, SSH_HOST, SSH_KEY, SSH_PORT, ssh_host_key
from sqlite_rows import rows_of, write_rows

SETTINGS = "reposerver.backup.autobackup_settings"
EXPORT = "reposerver.backup.repository_export"
IMPORT = "reposerver.backup.repository_import"
INFO = "reposerver.backup.autobackup_info"
SERVER = "it_sftp"
STATE = Path("/var/lib/repobackup") / SERVER


@pytest.fixture
def site(tmp_path: Path, run_module):
    remote = SFTP_HOME / ("rbit-%s" % uuid.uuid4().hex[:8])
    remote.mkdir(mode=0o750)
    user = pwd.getpwnam(SFTP_USER)
    os.chown(remote, user.pw_uid, user.pw_gid)
    root = tmp_path / "sqlite"
    root.mkdir()
    write_rows(root / "alpha.db", ["a", "b"])
    url = "sftp://%s@%s:%d%s" % (SFTP_USER, SSH_HOST, SSH_PORT, remote)
    options = dict(server_name=SERVER, sqlite_root=str(root), destination=url, sftp_key_file=str(SSH_KEY),
                   sftp_host_key=ssh_host_key(), sftp_timeout=5, keep_last=2)
    applied = run_module(SETTINGS, **options)
    assert applied["failed"] is False, applied.get("msg")
    yield {"root": root, "remote": remote, "url": url, "options": options}
    run_module(SETTINGS, server_name=SERVER, state="absent")
    shutil.rmtree(STATE, ignore_errors=True)
    shutil.rmtree(remote, ignore_errors=True)


def test_export_info_and_import_through_sftp(run_module, site):
    first = run_module(EXPORT, server_name=SERVER, repositories=["alpha.db"])
    assert first["failed"] is False and first["changed"] is True, first.get("msg")
    backup = first["backups"]["alpha.db"]
    assert backup["manifest"].startswith(site["url"] + "/") and backup["manifest"].endswith(".manifest.json")
    on_server = site["remote"] / os.path.relpath(backup["path"][len(site["url"]):], "/")
    assert on_server.is_file() and rows_of(on_server) == ["a", "b"]

    info = run_module(INFO, server_name=SERVER)
    assert info["failed"] is False, info.get("msg")
    (status,) = info["servers"]
    assert status["destination_kind"] == "sftp" and status["destination_reachable"] is True
    assert status["destination_free_bytes"] > 0 and status["destination_error"] is None
    assert status["repositories"]["alpha.db"]["backups_kept"] == 1
    assert status["last_upload"]["result"] == "ok" and status["last_upload"]["bytes"] == backup["size"]

    live = site["root"] / "alpha.db"
    write_rows(live, ["changed"])
    restored = run_module(IMPORT, server_name=SERVER, latest_of="alpha.db", force=True)
    assert restored["failed"] is False and restored["changed"] is True, restored.get("msg")
    assert rows_of(live) == ["a", "b"]
    again = run_module(IMPORT, server_name=SERVER, backup=backup["manifest"], force=True)
    assert again["failed"] is False and again["changed"] is False, again.get("msg")
    copy = run_module(IMPORT, server_name=SERVER, backup=backup["path"], repository="copy.db")
    assert copy["failed"] is False and copy["changed"] is True, copy.get("msg")
    assert rows_of(site["root"] / "copy.db") == ["a", "b"]
    assert os.listdir(STATE / "staging") == [], "a downloaded backup stayed behind"


def test_a_wrong_host_key_stops_check_mode_and_runs(run_module, site):
    wrong = dict(site["options"], sftp_host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f")
    assert run_module(SETTINGS, **wrong)["failed"] is False
    checked = run_module(EXPORT, check=True, server_name=SERVER)
    assert checked["failed"] is True and "does not match sftp_host_key" in checked["msg"], checked
    ran = run_module(EXPORT, server_name=SERVER)
    assert ran["failed"] is True and "does not match sftp_host_key" in ran["msg"]
    assert list(site["remote"].iterdir()) == []
    (status,) = run_module(INFO, server_name=SERVER)["servers"]
    assert status["destination_reachable"] is False and "does not match" in status["destination_error"]
    assert status["last_upload"]["result"] == "failed"
