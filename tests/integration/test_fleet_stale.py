"""fleet_status flags STALE: a server whose cron stopped (its newest good backup faked two days old) against its
daily schedule's limit of 30 hours; the flag goes with a fresh backup."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from pathlib import Path

import pytest

from test_role import REPO, SERVERS, inventory, playbook, remove_servers, repobackup, sample_repos

STATUS = Path("/var/lib/repobackup") / SERVERS[0] / "status.json"


@pytest.fixture
def repos(tmp_path: Path):
    yield sample_repos(tmp_path)
    remove_servers(SERVERS)


def fleet_row(inv: Path) -> str:
    done = subprocess.run(["ansible-playbook", "-i", str(inv), str(REPO / "playbooks" / "fleet_status.yml")],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r'TASK \[Show the fleet\].*?"msg": (\[.*?\n    \])', done.stdout, re.S)
    assert match, done.stdout
    (row,) = [line for line in json.loads(match.group(1)) if SERVERS[0] in line]
    return row


def test_fleet_status_flags_a_server_whose_newest_backup_is_too_old(repos, tmp_path):
    values = dict(repos, autobackup_times=["02:15"], autobackup_days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"])
    assert playbook(inventory(**values), tmp_path)[1] == 0
    assert repobackup("run", "--server", SERVERS[0]).returncode == 0
    inv = tmp_path / "inventory.yml"
    assert "STALE" not in fleet_row(inv)

    status = json.loads(STATUS.read_text())
    two_days_ago = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    for entry in status["repositories"].values():
        entry["last_success"]["time"] = entry["last"]["time"] = two_days_ago
    STATUS.write_text(json.dumps(status))
    row = fleet_row(inv)
    assert "STALE" in row.split()[-1], row
    shown = json.loads(repobackup("status", "--server", SERVERS[0], "--json").stdout)
    assert (shown["stale"], shown["max_age_hours"]) == (2, 30)

    assert repobackup("run", "--server", SERVERS[0]).returncode == 0
    assert "STALE" not in fleet_row(inv)
