"""reposerver.backup.autobackup_info on a real host: status at a glance, one server or all, read only."""

from __future__ import annotations

import datetime
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hosts_env import BUILD

MODULE = "reposerver.backup.autobackup_info"
EXPORT = "reposerver.backup.repository_export"
SETTINGS_MODULE = "reposerver.backup.autobackup_settings"
SERVER = "it_info"
STATE = Path("/var/lib/repobackup") / SERVER


def make_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (n INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()


def files_under(folder: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def site(tmp_path: Path, run_module):
    """it_info names alpha.db, beta.db and ghost.db; alpha.db, beta.db and gamma.db are present."""
    shutil.rmtree(STATE, ignore_errors=True)
    root = tmp_path / "sqlite"
    root.mkdir()
    for name in ("alpha.db", "beta.db", "gamma.db"):
        make_db(root / name)
    dest = tmp_path / "dest"
    dest.mkdir()
    args = {"server_name": SERVER, "sqlite_root": str(root), "destination": str(dest),
            "repositories": ["alpha.db", "beta.db", "ghost.db"], "keep_last": 7}
    applied = run_module(SETTINGS_MODULE, **args)
    assert applied["failed"] is False, applied.get("msg")
    yield {"root": root, "dest": dest, "settings": args}
    run_module(SETTINGS_MODULE, server_name=SERVER, state="absent")
    shutil.rmtree(STATE, ignore_errors=True)


def status_of(run_module, **args) -> dict:
    result = run_module(MODULE, server_name=SERVER, **args)
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is False
    (server,) = result["servers"]
    return server


def test_fresh_server_at_a_glance(run_module, site):
    status = status_of(run_module)
    assert status["server"] == SERVER and status["kind"] == "sqlite"
    assert status["enabled"] is True and status["suspended_until"] is None
    assert status["schedule"] == {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                  "times": ["01:00"], "text": "every day at 01:00"}
    assert status["next_run"].endswith("T01:00")
    assert status["destination"] == str(site["dest"]) and status["destination_kind"] == "local"
    assert status["in_use"] == "keep_connections" and status["keep_last"] == 7
    assert status["server_reachable"] is True
    assert status["covered"] == ["alpha.db", "beta.db"]
    assert status["not_covered"] == ["gamma.db"]
    assert status["missing"] == ["ghost.db"]
    assert status["last_run"] is None and status["last_success"] is None
    assert status["oldest_last_success"] is None
    assert status["failures"] == 0 and status["missed"] is False
    assert status["pending_repairs"] == []
    assert status["repositories"]["alpha.db"]["backups_kept"] == 0
    assert status["repositories"]["ghost.db"]["last"] is None


def test_after_exports(run_module, site):
    first = run_module(EXPORT, server_name=SERVER, repositories=["alpha.db", "beta.db"])
    assert first["failed"] is False, first.get("msg")
    second = run_module(EXPORT, server_name=SERVER, repositories=["alpha.db"])
    assert second["failed"] is False, second.get("msg")

    status = status_of(run_module)
    alpha, beta = status["repositories"]["alpha.db"], status["repositories"]["beta.db"]
    assert alpha["backups_kept"] == 2 and beta["backups_kept"] == 1
    assert alpha["last_success"]["time"] == second["backups"]["alpha.db"]["time"]
    assert alpha["last"]["result"] == "ok" and alpha["last"]["error"] is None
    assert alpha["last"]["size"] == second["backups"]["alpha.db"]["size"]
    assert alpha["last"]["duration"] == second["backups"]["alpha.db"]["duration"]
    assert alpha["failures"] == 0
    assert beta["last_success"]["time"] == first["backups"]["beta.db"]["time"]
    assert status["last_success"] == second["backups"]["alpha.db"]["time"]
    assert status["oldest_last_success"] == first["backups"]["beta.db"]["time"]
    assert status["last_run"]["trigger"] == "export" and status["last_run"]["result"] == "ok"
    assert status["last_run"]["repositories"] == ["alpha.db"]
    assert status["failures"] == 0 and status["missed"] is False
    assert "gamma.db" not in status["repositories"], "not covered and never backed up"


def test_failed_repository_is_counted(run_module, site):
    (site["root"] / "beta.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)  # present, unreadable
    result = run_module(EXPORT, server_name=SERVER, repositories=["alpha.db", "beta.db"])
    assert result["failed"] is True and "beta.db" in result["msg"]
    status = status_of(run_module)
    assert status["failures"] == 1
    beta = status["repositories"]["beta.db"]
    assert beta["last"]["result"] == "failed" and beta["last"]["error"]
    assert beta["failures"] == 1 and beta["last_success"] is None
    assert status["oldest_last_success"] is None, "a covered repository never succeeded"
    assert status["last_run"]["result"] == "partial"


def test_off_and_suspended(run_module, site):
    run_module(SETTINGS_MODULE, **dict(site["settings"], suspended_until="2099-01-04", days=["sat", "sun"],
                                       times=["13:30", "01:00"]))
    status = status_of(run_module)
    assert status["suspended_until"] == "2099-01-04T00:00"  # a date alone means its midnight
    assert status["next_run"].startswith("2099-01-04T01:00")
    assert status["schedule"]["text"] == "at weekends at 01:00 and 13:30"
    run_module(SETTINGS_MODULE, **dict(site["settings"], enabled=False))
    status = status_of(run_module)
    assert status["enabled"] is False and status["next_run"] is None and status["missed"] is False


def test_missed_run_is_flagged_until_a_backup_succeeds(run_module, site):
    """Configured three days ago, due two hours ago, never backed up: a missed run."""
    due = (datetime.datetime.now() - datetime.timedelta(hours=2)).strftime("%H:%M")
    run_module(SETTINGS_MODULE, **dict(site["settings"], times=[due]))
    settings = Path("/etc/repobackup") / (SERVER + ".json")
    long_ago = time.time() - 3 * 86400
    os.utime(settings, (long_ago, long_ago))
    status = status_of(run_module)
    assert status["missed"] is True
    assert status["last_due"].endswith("T" + due)
    run_module(EXPORT, server_name=SERVER, repositories=["alpha.db"])
    assert status_of(run_module)["missed"] is True, "beta.db is still without a backup"
    run_module(EXPORT, server_name=SERVER, repositories=["beta.db"])
    assert status_of(run_module)["missed"] is False


def test_check_mode_reads_the_same_and_changes_nothing(run_module, site):
    run_module(EXPORT, server_name=SERVER, repositories=["alpha.db"])
    state_before = files_under(STATE)
    dest_before = files_under(site["dest"])
    normal = status_of(run_module)
    checked = status_of(run_module, check=True, diff=True)
    # Free space is read afresh each time, and anything else on this machine may write meanwhile.
    assert checked.pop("destination_free_bytes") > 0 and normal.pop("destination_free_bytes") > 0
    assert checked == normal
    assert files_under(STATE) == state_before and files_under(site["dest"]) == dest_before


def test_all_servers(run_module, site):
    result = run_module(MODULE)
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is False
    names = [s["server"] for s in result["servers"]]
    assert SERVER in names and names == sorted(names)
    mine = next(s for s in result["servers"] if s["server"] == SERVER)
    assert mine["covered"] == ["alpha.db", "beta.db"]
    assert mine["schedule"]["text"] == "every day at 01:00"


def test_unknown_server_fails(run_module):
    result = run_module(MODULE, server_name="it_info_none")
    assert result["failed"] is True and "it_info_none" in result["msg"]


DRILL = """
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.reposerver.backup.plugins.module_utils import cli
sys.exit(cli.main(["drill", "--server", sys.argv[2]]))
"""


def test_last_drill_and_proven_restorable_per_repository(run_module, site):
    fresh = status_of(run_module)
    assert fresh["repositories"]["alpha.db"]["drill_state"] == "never"
    assert fresh["repositories"]["alpha.db"]["last_drill"] is None and fresh["never_drilled"] == 2
    assert fresh["drill"]["text"] == "none scheduled" and fresh["drill"]["max_age_days"] == 8
    run_module(EXPORT, server_name=SERVER, repositories=["alpha.db", "beta.db"])
    # The host command's drill, from this work tree's engine (the same files the modules carry).
    done = subprocess.run([sys.executable, "-c", DRILL, str(BUILD / "collections"), SERVER], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1, done.stdout + done.stderr  # ghost.db, named but missing, has no backup
    assert "FAILED  ghost.db  Repository 'ghost.db' has no backup of this host" in done.stdout, done.stdout

    status = status_of(run_module)

    alpha = status["repositories"]["alpha.db"]
    drill = alpha["last_drill"]
    assert drill["result"] == "ok" and drill["error"] is None
    assert drill["backup"] == alpha["last_success"]["backup"] and drill["backup_start"] == alpha["last_success"]["time"]
    assert {"restore", "integrity_check", "foreign_key_check", "row_counts", "objects"} <= set(drill["checks"])
    assert alpha["proven_restorable"] == alpha["last_success"]["time"] and alpha["drill_state"] == "ok"
    assert status["repositories"]["ghost.db"]["drill_state"] == "failed"
    assert status["last_drill_run"]["result"] == "partial"
    assert (status["drill_failures"], status["never_drilled"]) == (0, 0)  # ghost.db is not covered
