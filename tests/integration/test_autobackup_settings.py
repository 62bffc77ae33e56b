"""reposerver.backup.autobackup_settings on a real host: the four steps, bad input, off/on, absent."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
from pathlib import Path

import pytest

from hosts_env import paramiko_importable, public_host_key

MODULE = "reposerver.backup.autobackup_settings"
SERVER = "it_settings"
SETTINGS = Path("/etc/repobackup") / (SERVER + ".json")
CRON = Path("/etc/cron.d") / ("repobackup_" + SERVER)


def snapshot() -> dict:
    """Bytes and modes of the two managed files (None when absent)."""
    out = {}
    for path in (SETTINGS, CRON):
        out[str(path)] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) if path.exists() else None
    return out


@pytest.fixture
def site(tmp_path: Path, run_module):
    root = tmp_path / "sqlite"
    root.mkdir()
    for name in ("alpha.db", "beta.db"):
        conn = sqlite3.connect(root / name)
        conn.execute("CREATE TABLE t (n INTEGER)")
        conn.commit()
        conn.close()
    args = {"server_name": SERVER, "sqlite_root": str(root), "destination": str(tmp_path / "dest"),
            "days": ["mon", "wed", "fri"], "times": ["01:00", "13:30"], "keep_last": 3}
    yield args
    run_module(MODULE, server_name=SERVER, state="absent")


@pytest.mark.parametrize("host", ["localhost", "sshhost"])
def test_four_steps(module_runner, site, host):
    run_module = module_runner(host)
    before = snapshot()
    assert before == {str(SETTINGS): None, str(CRON): None}

    checked = run_module(MODULE, check=True, diff=True, **site)
    assert checked["failed"] is False, checked.get("msg")
    assert checked["changed"] is True
    assert snapshot() == before, "check mode changed the host"
    assert any(d["after_header"] == str(CRON) for d in checked["diff"])

    applied = run_module(MODULE, **site)
    assert applied["changed"] is True
    doc = json.loads(SETTINGS.read_text())
    assert doc["schedule"] == {"days": ["mon", "wed", "fri"], "times": ["01:00", "13:30"]}
    assert doc["keep_last"] == 3 and doc["format"] == 2
    assert stat.S_IMODE(SETTINGS.stat().st_mode) == 0o640
    assert stat.S_IMODE(CRON.stat().st_mode) == 0o644
    cron = CRON.read_text()
    assert "0 1 * * 1,3,5 root /usr/local/sbin/repobackup run --server it_settings --scheduled" in cron
    assert "30 13 * * 1,3,5 root /usr/local/sbin/repobackup run --server it_settings --scheduled" in cron
    assert applied["schedule_text"] == "on Monday, Wednesday and Friday at 01:00 and 13:30"

    after_apply = snapshot()
    again_check = run_module(MODULE, check=True, **site)
    assert again_check["changed"] is False
    again = run_module(MODULE, diff=True, **site)
    assert again["changed"] is False
    assert snapshot() == after_apply


def test_one_changed_value_changes_exactly_that(run_module, site):
    run_module(MODULE, **site)
    old = json.loads(SETTINGS.read_text())
    result = run_module(MODULE, diff=True, **dict(site, keep_last=5))
    assert result["changed"] is True
    new = json.loads(SETTINGS.read_text())
    assert new.pop("keep_last") == 5 and old.pop("keep_last") == 3
    assert new == old
    # the cron file did not change, so only the settings diff is shown
    assert [d["after_header"] for d in result["diff"]] == [str(SETTINGS)]


def test_off_keeps_the_schedule_and_on_restores_it(run_module, site):
    run_module(MODULE, **site)
    cron_on = CRON.read_text()
    off = run_module(MODULE, **dict(site, enabled=False))
    assert off["changed"] is True and off["next_run"] is None
    cron_off = CRON.read_text()
    entries = [line for line in cron_off.splitlines() if "repobackup run" in line]
    assert entries and all(line.startswith("#disabled# ") for line in entries)
    assert [line[len("#disabled# "):] for line in entries] == \
        [line for line in cron_on.splitlines() if "repobackup run" in line]
    on = run_module(MODULE, **site)
    assert on["changed"] is True
    assert CRON.read_text() == cron_on


BAD = [
    ({"days": ["funday"]}, "'funday'"),
    ({"times": ["25:00"]}, "'25:00'"),
    ({"times": ["7pm"]}, "'7pm'"),
    ({"times": [810]}, "quote it"),
    ({"times": []}, "non-empty list"),
    ({"days": []}, "non-empty list"),
    ({"destination": "backups/here"}, "'backups/here'"),
    ({"in_use": "kick"}, "kick"),
    ({"server_name": "Main-1"}, "'Main-1'"),
    ({"repositories": ["a/../b"]}, "'a/../b'"),
    ({"repositories": ["nul\u0000byte"]}, "NUL"),
    ({"keep_last": 0}, "keep_last 0"),
    ({"parallel": 17}, "parallel 17"),
    ({"suspended_until": "next tuesday"}, "'next tuesday'"),
    # Control characters in values used as given: a final newline in a server name broke the cron line.
    ({"server_name": SERVER + "\n"}, "server_name '%s\\n' is not allowed" % SERVER),
    ({"server_name": SERVER + "\r"}, "server_name '%s\\r' is not allowed" % SERVER),
    ({"run_as": "root\n"}, "run_as 'root\\n' is not a valid user name"),
    ({"destination": "/tmp/it-dest\n"}, "destination '/tmp/it-dest\\n' is not allowed"),
    ({"sqlite_root": "/tmp/it-sq\tlite"}, "sqlite_root '/tmp/it-sq\\tlite' is not allowed"),
    ({"metrics_file": "/tmp/it\x00.prom"}, "metrics_file"),
    ({"times": ["01:\t00"]}, "times entry '01:\\t00' is not allowed"),
    ({"host_id": "db1.example.com\n"}, "host_id 'db1.example.com\\n' is not allowed"),
    ({"host_id": "-db1"}, "host_id '-db1' is not allowed"),
]


@pytest.mark.parametrize("change,words", BAD, ids=[str(case[0]) for case in BAD])
def test_bad_input_is_refused_and_host_unchanged(run_module, site, change, words):
    run_module(MODULE, **site)
    before = snapshot()
    result = run_module(MODULE, **dict(site, **change))
    assert result["failed"] is True
    assert words in result["msg"], result["msg"]
    assert result["msg"].count(". ") == 0, "one sentence"
    assert snapshot() == before


def test_missing_repository_is_accepted_with_a_warning(run_module, site):
    result = run_module(MODULE, **dict(site, repositories=["alpha.db", "gamma.db"]))
    assert result["failed"] is False
    assert result["missing"] == ["gamma.db"]
    assert any("gamma.db" in w for w in result.get("warnings", []))


def test_server_down_still_accepts_settings(run_module, site, tmp_path):
    down = dict(site, sqlite_root=str(tmp_path / "not-mounted"), repositories=["alpha.db"])
    result = run_module(MODULE, **down)
    assert result["failed"] is False and result["changed"] is True
    assert result["missing"] == ["alpha.db"]
    assert SETTINGS.exists()


def test_absent_removes_settings_and_cron_keeps_backups(run_module, site, tmp_path):
    run_module(MODULE, **site)
    kept = tmp_path / "dest" / "somehost" / SERVER / "alpha.db" / "x.manifest.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    checked = run_module(MODULE, check=True, server_name=SERVER, state="absent")
    assert checked["changed"] is True and SETTINGS.exists()
    gone = run_module(MODULE, server_name=SERVER, state="absent")
    assert gone["changed"] is True
    assert not SETTINGS.exists() and not CRON.exists()
    assert kept.exists()
    assert run_module(MODULE, server_name=SERVER, state="absent")["changed"] is False


def test_files_are_not_world_readable_under_umask_000(run_module, site):
    old = os.umask(0)
    try:
        run_module(MODULE, **site)
    finally:
        os.umask(old)
    assert stat.S_IMODE(SETTINGS.stat().st_mode) & 0o007 == 0


# --- retention periods, require_mount, sftp:// destinations ---------------------------------------

SFTP_URL = "sftp://rbsftp@127.0.0.1:2222/srv/backups"


@pytest.fixture
def sftp_site(site, tmp_path):
    key = public_host_key(tmp_path)
    args = dict(site, destination=SFTP_URL, sftp_key_file="/root/.ssh/id_backup", sftp_host_key=key,
                sftp_verify_upload=True, sftp_retries=5, sftp_timeout=45)
    return args


def test_sftp_options_stored_check_mode_and_idempotent(run_module, sftp_site):
    before = snapshot()
    checked = run_module(MODULE, check=True, diff=True, **sftp_site)
    assert checked["failed"] is False, checked.get("msg")
    assert checked["changed"] is True and snapshot() == before, "check mode changed the host"

    applied = run_module(MODULE, **sftp_site)
    assert applied["failed"] is False and applied["changed"] is True, applied.get("msg")
    doc = json.loads(SETTINGS.read_text())
    assert doc["destination"] == SFTP_URL
    assert doc["sftp"] == {"key_file": "/root/.ssh/id_backup", "known_hosts": "", "host_key": sftp_site["sftp_host_key"],
                           "verify_upload": True, "retries": 5, "timeout": 45}
    assert doc["require_mount"] is False and applied["destination_mounted"] is None
    assert applied["missing_python_modules"] == ([] if paramiko_importable() else ["paramiko"])
    assert applied["settings"] == doc
    # The key file is not there: accepted (it may come later), with a warning that says what will fail.
    assert not os.path.exists("/root/.ssh/id_backup")
    assert any("sftp_key_file /root/.ssh/id_backup does not exist (yet)" in w for w in applied.get("warnings", []))

    stored = snapshot()
    assert run_module(MODULE, check=True, **sftp_site)["changed"] is False
    assert run_module(MODULE, diff=True, **sftp_site)["changed"] is False
    assert snapshot() == stored


def test_sftp_defaults_and_a_known_hosts_line_as_host_key(run_module, site, tmp_path):
    key = public_host_key(tmp_path)
    result = run_module(MODULE, **dict(site, destination=SFTP_URL, sftp_key_file="/root/.ssh/id_backup",
                                       sftp_known_hosts="/etc/repobackup/../ssh/known_hosts",
                                       sftp_host_key="[127.0.0.1]:2222 %s root@example" % key))
    assert result["failed"] is False, result.get("msg")
    sftp = json.loads(SETTINGS.read_text())["sftp"]
    assert sftp == {"key_file": "/root/.ssh/id_backup", "known_hosts": "/etc/ssh/known_hosts", "host_key": key,
                    "verify_upload": False, "retries": 3, "timeout": 30}


def test_local_destination_stores_retention_and_no_sftp(run_module, site):
    result = run_module(MODULE, **dict(site, keep_daily=7, keep_weekly=4, keep_monthly=12))
    assert result["failed"] is False and result["changed"] is True, result.get("msg")
    doc = json.loads(SETTINGS.read_text())
    assert (doc["keep_last"], doc["keep_daily"], doc["keep_weekly"], doc["keep_monthly"]) == (3, 7, 4, 12)
    assert doc["sftp"] is None and doc["require_mount"] is False
    assert result["missing_python_modules"] == [] and result["destination_mounted"] is None
    assert run_module(MODULE, **dict(site, keep_daily=7, keep_weekly=4, keep_monthly=12))["changed"] is False


def test_require_mount_reports_whether_destination_is_a_mount_point(run_module, site, tmp_path):
    unmounted = run_module(MODULE, **dict(site, require_mount=True))
    assert unmounted["failed"] is False and unmounted["changed"] is True, unmounted.get("msg")
    assert unmounted["destination_mounted"] is False
    assert json.loads(SETTINGS.read_text())["require_mount"] is True
    assert not (tmp_path / "dest").exists(), "the module never creates the destination"
    mounted = run_module(MODULE, check=True, **dict(site, require_mount=True, destination="/"))
    assert mounted["destination_mounted"] is True


SFTP_BAD = [
    ({"destination": "sftp://rbsftp:hunter2@127.0.0.1/srv/backups"}, "carries a password"),
    ({"sftp_key_file": None}, "sftp_key_file is required"),
    ({"sftp_key_file": "~/.ssh/id_ed25519"}, "sftp_key_file '~/.ssh/id_ed25519'"),
    ({"sftp_known_hosts": "known_hosts"}, "sftp_known_hosts 'known_hosts'"),
    ({"sftp_host_key": "ssh-ed25519 AAAAnotakey"}, "sftp_host_key"),
    ({"sftp_host_key": "ssh-dss AAAAB3NzaC1kc3MAAACBAP"}, "sftp_host_key"),
    ({"sftp_retries": 11}, "sftp_retries 11"),
    ({"sftp_timeout": 0}, "sftp_timeout 0"),
    ({"require_mount": True}, "require_mount true"),
    ({"destination": "sftp://rbsftp@127.0.0.1"}, "not a valid sftp:// URL"),
    ({"keep_daily": -1}, "keep_daily -1"),
    ({"keep_monthly": 100001}, "keep_monthly 100001"),
]


@pytest.mark.parametrize("change,words", SFTP_BAD, ids=[str(case[0]) for case in SFTP_BAD])
def test_bad_sftp_and_retention_values_refused_and_host_unchanged(run_module, sftp_site, change, words):
    assert run_module(MODULE, **sftp_site)["failed"] is False
    before = snapshot()
    result = run_module(MODULE, **dict(sftp_site, **change))
    assert result["failed"] is True
    assert words in result["msg"], result["msg"]
    assert "hunter2" not in json.dumps(result)
    assert snapshot() == before


# --- surrounding whitespace, host id -----------------------------------------------------------------

def test_times_and_days_with_a_trailing_newline_are_stored_clean(run_module, site):
    result = run_module(MODULE, **dict(site, times=["01:00\r\n", "13:30\n"], days=["mon\n", "fri"]))
    assert result["failed"] is False, result.get("msg")
    doc = json.loads(SETTINGS.read_text())
    assert doc["schedule"] == {"days": ["mon", "fri"], "times": ["01:00", "13:30"]}
    cron = CRON.read_bytes()
    assert b"\r" not in cron and b"\n0 1 * * 1,5 root " in cron and b"\n30 13 * * 1,5 root " in cron, cron
    assert run_module(MODULE, **dict(site, times=["01:00", "13:30"], days=["mon", "fri"]))["changed"] is False


def test_host_id_defaults_to_this_hosts_fqdn_and_is_stored(run_module, site):
    """Resolved once, when the settings are applied: the engine's folder never moves with the resolver."""
    applied = run_module(MODULE, **site)
    assert applied["failed"] is False, applied.get("msg")
    found = json.loads(SETTINGS.read_text())["host_id"]
    assert found == applied["settings"]["host_id"]
    assert found.split(".")[0].lower() == socket.gethostname().split(".")[0].lower(), found
    assert run_module(MODULE, **site)["changed"] is False

    cron = CRON.read_bytes()
    before = snapshot()
    checked = run_module(MODULE, check=True, diff=True, **dict(site, host_id="db1.eu.example.com"))
    assert checked["changed"] is True and snapshot() == before
    assert [d["after_header"] for d in checked["diff"]] == [str(SETTINGS)]
    assert '"host_id": "db1.eu.example.com"' in checked["diff"][0]["after"]
    changed = run_module(MODULE, **dict(site, host_id="db1.eu.example.com"))
    assert changed["changed"] is True and changed["settings"]["host_id"] == "db1.eu.example.com"
    assert json.loads(SETTINGS.read_text())["host_id"] == "db1.eu.example.com" and CRON.read_bytes() == cron
    assert run_module(MODULE, **dict(site, host_id="db1.eu.example.com"))["changed"] is False


def test_the_document_a_check_returned_applies_as_its_options_would(run_module, site):
    """settings: the role checks each server's options in check mode, then applies the document the check returned."""
    checked = run_module(MODULE, check=True, **site)
    assert checked["failed"] is False, checked.get("msg")
    before = snapshot()
    assert run_module(MODULE, check=True, settings=checked["settings"])["changed"] is True
    assert snapshot() == before, "check mode changed the host"
    applied = run_module(MODULE, diff=True, settings=checked["settings"])
    assert applied["failed"] is False, applied.get("msg")
    assert applied["changed"] is True and applied["settings"] == checked["settings"]
    assert json.loads(SETTINGS.read_text()) == checked["settings"]
    assert run_module(MODULE, **site)["changed"] is False  # the very files the options write
    assert run_module(MODULE, settings=applied["settings"])["changed"] is False
    after = snapshot()
    bad = run_module(MODULE, settings=dict(checked["settings"], keep_last=0))
    assert bad["failed"] is True and bad["msg"].startswith("keep_last 0 is not allowed"), bad["msg"]
    both = run_module(MODULE, settings=checked["settings"], keep_last=5)
    assert both["failed"] is True and "mutually exclusive" in both["msg"], both["msg"]
    assert snapshot() == after


def test_folders_runs_would_refuse_are_named_when_applied(run_module, site):
    """A run-as root server whose SQLite folder another user owns: every run would refuse it; say so now."""
    root = Path(site["sqlite_root"])
    nobody = 65534
    os.chown(str(root), nobody, nobody)
    applied = run_module(MODULE, **site)
    assert applied["failed"] is False, applied.get("msg")
    warnings = applied.get("warnings", [])
    assert any("The SQLite folder %s will be refused" % root in w and "owned by user nobody" in w
               for w in warnings), warnings
    os.chown(str(root), 0, 0)
    again = run_module(MODULE, **site)
    assert not any("will be refused" in w for w in again.get("warnings", []))


def test_drill_times_add_a_second_cron_line_that_switches_with_the_backups(run_module, site):
    applied = run_module(MODULE, **dict(site, drill_times=["04:30"], drill_days=["sun"], drill_max_age_days=3))
    assert applied["failed"] is False and applied["changed"] is True, applied.get("msg")
    doc = json.loads(SETTINGS.read_text())
    assert doc["drill"] == {"days": ["sun"], "times": ["04:30"], "identity_file": "", "max_age_days": 3}
    cron = CRON.read_text()
    assert "30 4 * * 0 root /usr/local/sbin/repobackup drill --server it_settings --scheduled\n" in cron
    assert "restore drills on Sunday at 04:30" in cron
    again = run_module(MODULE, **dict(site, drill_times=["04:30"], drill_days=["sun"], drill_max_age_days=3))
    assert again["changed"] is False
    off = run_module(MODULE, **dict(site, enabled=False, drill_times=["04:30"], drill_days=["sun"],
                                    drill_max_age_days=3))
    assert off["changed"] is True
    assert "#disabled# 30 4 * * 0 root /usr/local/sbin/repobackup drill --server it_settings --scheduled\n" \
        in CRON.read_text()
    before = snapshot()
    refused = run_module(MODULE, **dict(site, drill_times=["4.30"]))
    assert refused["failed"] is True and "drill_times entry '4.30' is not allowed" in refused["msg"]
    assert snapshot() == before
    none = run_module(MODULE, **site)
    assert none["changed"] is True and " drill " not in CRON.read_text()
