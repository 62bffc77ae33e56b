"""The collection playbooks, as an administrator runs them: ansible-playbook over two hosts.

The inventory holds localhost (connection local) and the ssh host
(root@127.0.0.1:2222), both in group repository_servers. They are the same
machine, so each declares its own server name, sqlite root and destination.
site.yml applies the role to both; backup_now.yml backs up one of them;
the other's settings are dated two days back with a schedule that was due
since, so fleet_status.yml must flag exactly that one as MISSED; restore.yml
restores a repository and refuses an incomplete request.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from hosts_env import SSH_HOST, SSH_KEY, SSH_KNOWN_HOSTS, SSH_PORT, TARGET_PYTHON
from hosts_env import REPO_ROOT as REPO

PLAYBOOKS = REPO / "playbooks"
LOCAL, SSH = "localhost", "sshhost"
SERVERS = {LOCAL: "fleet_local", SSH: "fleet_ssh"}
QUERY = "SELECT id, name FROM items ORDER BY id"


def server_paths(name: str) -> list:
    return [Path("/etc/repobackup") / (name + ".json"), Path("/etc/cron.d") / ("repobackup_" + name),
            Path("/var/lib/repobackup") / name, Path("/var/log/repobackup") / (name + ".log")]


def make_repository(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"{path.name}-{i}") for i in range(1, rows + 1)])
    # sqlite3's context manager commits but does not close.
    sqlite3.connect(path).close()


def rows(path: Path) -> list:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(QUERY).fetchall()
    finally:
        conn.close()


def recap(stdout: str) -> dict:
    """Host -> (ok, changed, unreachable, failed) from the PLAY RECAP."""
    found = re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", stdout, re.M)
    return {host: tuple(int(n) for n in numbers) for host, *numbers in found}


class Fleet:
    """The two-host inventory under tmp_path and a runner for the playbooks."""

    def __init__(self, base: Path):
        self.base = base
        self.inventory = base / "inventory.yml"
        # Three hours ago, every day: due long before the test and not within
        # the 30 minutes' grace, and never the current minute, so cron stays quiet.
        due = (datetime.datetime.now() - datetime.timedelta(hours=3)).strftime("%H:%M")
        self.hosts = {}
        for host, server in SERVERS.items():
            root = base / host / "sqlite"
            root.mkdir(parents=True)
            make_repository(root / "alpha.db", 30)
            make_repository(root / "beta.db", 5)
            self.hosts[host] = {"autobackup_server_name": server, "autobackup_sqlite_root": str(root),
                                "autobackup_destination": str(base / host / "dest"),
                                "autobackup_repositories": ["alpha.db", "beta.db"],
                                "autobackup_times": [due], "autobackup_keep_last": 3}
        ssh_args = f"-o UserKnownHostsFile={SSH_KNOWN_HOSTS} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        connection = {
            LOCAL: {"ansible_connection": "local"},
            SSH: {"ansible_connection": "ssh", "ansible_host": SSH_HOST, "ansible_port": SSH_PORT,
                  "ansible_user": "root", "ansible_ssh_private_key_file": str(SSH_KEY),
                  "ansible_ssh_common_args": ssh_args},
        }
        hosts = {host: dict(connection[host], ansible_python_interpreter=TARGET_PYTHON, **values)
                 for host, values in self.hosts.items()}
        self.inventory.write_text(json.dumps({"all": {"children": {"repository_servers": {"hosts": hosts}}}}),
                                  encoding="utf-8")

    def root(self, host: str) -> Path:
        return Path(self.hosts[host]["autobackup_sqlite_root"])

    def play(self, playbook: str, *extra: str, extra_vars: dict | None = None) -> subprocess.CompletedProcess:
        path = REPO / "site.yml" if playbook == "site" else PLAYBOOKS / f"{playbook}.yml"
        args = ["ansible-playbook", "-i", str(self.inventory), str(path), *extra]
        if extra_vars:
            args += ["-e", json.dumps(extra_vars)]
        # stdin from /dev/null: in-process pytest-ansible tests earlier in the session can leave
        # fd 0 closed, and ansible-playbook's workers then die detaching from it.
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                              cwd=str(self.base), env=dict(os.environ, ANSIBLE_NOCOLOR="1"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    if not SSH_KEY.exists():
        pytest.fail(f"{SSH_KEY} is missing: run scripts/setup-test-env first")
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    done = fleet.play("site")
    assert done.returncode == 0, done.stdout + done.stderr
    yield fleet
    done = fleet.play("site", extra_vars={"autobackup_state": "absent"})
    for name in SERVERS.values():
        for path in server_paths(name)[2:]:
            subprocess.run(["rm", "-rf", str(path)], check=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in SERVERS.values():
        assert not any(path.exists() for path in server_paths(name)[:2])


def table(stdout: str) -> list:
    """The table lines the fleet_status play printed (the debug msg list)."""
    match = re.search(r'TASK \[Show the fleet\].*?"msg": (\[.*?\n    \])', stdout, re.S)
    assert match, stdout
    return json.loads(match.group(1))


def test_fleet_status_flags_exactly_the_missed_server(fleet):
    done = fleet.play("backup_now", "--limit", LOCAL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert recap(done.stdout)[LOCAL][2:] == (0, 0) and SSH not in recap(done.stdout)
    assert re.search(r"fleet_local alpha\.db: ok /\S+/fleet_local/alpha\.db/\S+\.sqlite3", done.stdout), done.stdout
    assert "fleet_local beta.db: ok" in done.stdout

    # The ssh host's server was configured two days ago; its runs since were due and left nothing.
    settings = server_paths(SERVERS[SSH])[0]
    two_days_ago = time.time() - 2 * 86400
    os.utime(settings, (two_days_ago, two_days_ago))

    done = fleet.play("fleet_status")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = table(done.stdout)
    header, rule, *body = lines
    assert header.split()[:3] == ["HOST", "SERVER", "ON/OFF"] and set(rule) <= {"-", " "}
    by_server = {line.split()[1]: line for line in body}
    assert set(by_server) == set(SERVERS.values()), lines
    assert by_server["fleet_ssh"].startswith(SSH) and by_server["fleet_local"].startswith(LOCAL)
    assert by_server["fleet_ssh"].endswith("MISSED"), lines
    assert "MISSED" not in by_server["fleet_local"] and by_server["fleet_local"].endswith("ok"), lines
    assert "every day at" in by_server["fleet_local"]
    # Columns line up: every row has its cells where the header has its titles.
    start = header.index("LAST SUCCESS")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\dZ", by_server["fleet_local"][start:]), lines
    free = header.index("DESTINATION FREE")
    assert re.match(r"local \d+(\.\d+)? [KMGT]?B ", by_server["fleet_local"][free:]), lines
    assert by_server["fleet_ssh"][start:].startswith("never"), lines

    done = fleet.play("fleet_status", extra_vars={"fleet_status_fail_on_missed": True})
    assert done.returncode != 0
    assert "Missed scheduled runs (no success since they were due): sshhost/fleet_ssh." in done.stdout, done.stdout


def test_fleet_status_shows_unreachable_and_failing_hosts(fleet, tmp_path):
    broken = json.loads(fleet.inventory.read_text())
    hosts = broken["all"]["children"]["repository_servers"]["hosts"]
    hosts["gone"] = dict(hosts[SSH], ansible_port=1, autobackup_server_name="fleet_gone")
    # This machine again, declaring a server that has no settings here.
    hosts["ghost"] = dict(hosts[LOCAL], autobackup_server_name="fleet_ghost")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps(broken), encoding="utf-8")
    done = subprocess.run(["ansible-playbook", "-i", str(inventory), str(PLAYBOOKS / "fleet_status.yml")],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, cwd=str(tmp_path))
    lines = table(done.stdout)
    gone = [line for line in lines if line.startswith("gone ")]
    assert len(gone) == 1 and gone[0].endswith("UNREACHABLE"), lines
    assert any(line.startswith("gone: UNREACHABLE: ") for line in lines), lines
    ghost = [line for line in lines if line.startswith("ghost ")]
    assert len(ghost) == 1 and ghost[0].endswith("ERROR"), lines
    assert any(line.startswith("ghost: ERROR: ") and "fleet_ghost" in line for line in lines), lines
    assert any(line.startswith(LOCAL) for line in lines)


def test_fleet_status_shows_off_and_suspended(fleet):
    off = fleet.play("site", "--limit", LOCAL, extra_vars={"autobackup_enabled": False})
    assert off.returncode == 0, off.stdout + off.stderr
    try:
        lines = table(fleet.play("fleet_status", "--limit", LOCAL).stdout)
        assert len(lines) == 3 and lines[2].split()[:3] == [LOCAL, "fleet_local", "off"], lines
        assert lines[2].endswith("OFF"), lines
        suspended = fleet.play("site", "--limit", LOCAL, extra_vars={"autobackup_suspended_until": "2099-01-01"})
        assert suspended.returncode == 0, suspended.stdout + suspended.stderr
        lines = table(fleet.play("fleet_status", "--limit", LOCAL).stdout)
        assert lines[2].split()[2] == "on" and lines[2].endswith("SUSPENDED"), lines
    finally:
        again = fleet.play("site", "--limit", LOCAL)
        assert again.returncode == 0, again.stdout + again.stderr


def test_backup_now_check_mode_and_skip_unchanged(fleet):
    done = fleet.play("backup_now", "--limit", LOCAL, "--check",
                      extra_vars={"backup_now_repositories": ["beta.db"]})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fleet_local beta.db: would_export" in done.stdout and "alpha.db:" not in done.stdout

    unchanged_only = {"backup_now_repositories": ["beta.db"], "backup_now_skip_unchanged": True}
    first = fleet.play("backup_now", "--limit", LOCAL, extra_vars=unchanged_only)
    again = fleet.play("backup_now", "--limit", LOCAL, extra_vars=unchanged_only)
    assert first.returncode == 0 and again.returncode == 0, first.stdout + again.stdout
    assert recap(again.stdout)[LOCAL][1] == 0
    assert "fleet_local beta.db: unchanged" in again.stdout


def test_backup_now_fails_for_a_missing_repository(fleet):
    done = fleet.play("backup_now", "--limit", LOCAL, extra_vars={"backup_now_repositories": ["nope.db"]})
    assert done.returncode != 0
    assert "nope.db" in done.stdout


def test_restore_latest_and_by_path(fleet):
    done = fleet.play("backup_now", "--limit", LOCAL, extra_vars={"backup_now_repositories": ["alpha.db"]})
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = re.search(r"fleet_local alpha\.db: ok (\S+)\.sqlite3", done.stdout).group(1) + ".manifest.json"
    root = fleet.root(LOCAL)

    done = fleet.play("restore", extra_vars={"restore_host": LOCAL, "restore_server_name": "fleet_local",
                                             "restore_latest_of": "alpha.db", "restore_repository": "alpha_copy.db"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert recap(done.stdout)[LOCAL][1] == 1
    assert "+++ after: alpha_copy.db" in done.stdout and "-alpha_copy.db: does not exist" in done.stdout
    assert rows(root / "alpha_copy.db") == rows(root / "alpha.db") and len(rows(root / "alpha.db")) == 30

    # The same backup again into the same, unchanged copy: nothing to do.
    done = fleet.play("restore", "--limit", LOCAL, extra_vars={"restore_latest_of": "alpha.db",
                                                               "restore_repository": "alpha_copy.db"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert recap(done.stdout)[LOCAL][1] == 0

    # A given backup over an existing repository: refused without force, done with it.
    with sqlite3.connect(root / "beta.db") as db:
        db.execute("DELETE FROM items")
    sqlite3.connect(root / "beta.db").close()
    request = {"restore_host": LOCAL, "restore_server_name": "fleet_local", "restore_backup": manifest,
               "restore_repository": "beta.db"}
    done = fleet.play("restore", extra_vars=request)
    assert done.returncode != 0 and rows(root / "beta.db") == []
    done = fleet.play("restore", extra_vars=dict(request, restore_force=True))
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(root / "beta.db") == rows(root / "alpha.db")


@pytest.mark.parametrize("request_vars", [
    {},
    {"restore_latest_of": "alpha.db"},
    {"restore_host": LOCAL},
    {"restore_host": LOCAL, "restore_latest_of": "alpha.db", "restore_backup": "/tmp/x.manifest.json"},
    {"restore_host": LOCAL, "restore_all": True, "restore_latest_of": "alpha.db"},
    {"restore_host": LOCAL, "restore_all": True, "restore_repository": "alpha_copy.db"},
], ids=["nothing", "no host", "no backup", "two backups", "all and one", "all under one name"])
def test_restore_refuses_an_incomplete_request(fleet, request_vars):
    before = sorted(p.name for p in fleet.root(LOCAL).iterdir())
    done = fleet.play("restore", extra_vars=request_vars or None)
    assert done.returncode != 0
    assert "restore.yml needs the target host" in done.stdout, done.stdout
    assert "Restore the repository" not in done.stdout
    assert sorted(p.name for p in fleet.root(LOCAL).iterdir()) == before


def test_restore_all_rebuilds_the_server(fleet):
    """Disaster recovery: every repository of fleet_local backed up, one lost, all restored in one play."""
    done = fleet.play("backup_now", "--limit", LOCAL)
    assert done.returncode == 0, done.stdout + done.stderr
    root = fleet.root(LOCAL)
    kept = rows(root / "alpha.db")
    (root / "alpha.db").unlink()
    done = fleet.play("restore", extra_vars={"restore_host": LOCAL, "restore_server_name": "fleet_local",
                                             "restore_all": True})
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"alpha\.db: ok\s+from /\S+/fleet_local/alpha\.db/\S+\.manifest\.json", done.stdout), done.stdout
    assert rows(root / "alpha.db") == kept
    assert "FAILED" not in done.stdout


def drills_found(stdout: str) -> list:
    """The lines the fleet_status play printed about restore drills."""
    match = re.search(r'TASK \[Show what the restore drills found\].*?"msg": (\[.*?\n    \])', stdout, re.S)
    assert match, stdout
    return json.loads(match.group(1))


def repobackup(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/local/sbin/repobackup", *argv], capture_output=True, text=True, check=False)


def test_fleet_status_shows_restore_drills_never_passed_and_failed_with_the_cause(fleet):
    done = fleet.play("backup_now", "--limit", LOCAL)
    assert done.returncode == 0, done.stdout + done.stderr
    done = fleet.play("fleet_status", "--limit", LOCAL)
    lines = table(done.stdout)
    proven = lines[0].index("PROVEN RESTORABLE")
    assert lines[2][proven:].startswith("never drilled"), lines
    assert "localhost/fleet_local/alpha.db: never drilled" in drills_found(done.stdout)

    drill = repobackup("drill", "--server", "fleet_local")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    done = fleet.play("fleet_status", extra_vars={"fleet_status_fail_on_drills": True})
    assert done.returncode == 0, done.stdout + done.stderr
    by_server = {line.split()[1]: line for line in table(done.stdout)[2:]}
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\dZ", by_server["fleet_local"][proven:]), by_server
    assert "DRILL" not in by_server["fleet_local"] and by_server["fleet_ssh"][proven:].startswith("never drilled")
    found = drills_found(done.stdout)
    assert "sshhost/fleet_ssh/alpha.db: never drilled" in found
    assert not [line for line in found if line.startswith("localhost/")], found

    # The newest backup of alpha.db: its rows cut down, its manifest re-hashed (the checksum is right again).
    status = json.loads(repobackup("status", "--server", "fleet_local", "--json").stdout)
    manifest_path = status["repositories"]["alpha.db"]["last_success"]["backup"]
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    data = Path(manifest_path).parent / manifest["data_file"]
    with sqlite3.connect(data) as db:
        db.execute("DELETE FROM items WHERE id > 3")
    sqlite3.connect(data).close()
    manifest.update(sha256=hashlib.sha256(data.read_bytes()).hexdigest(), size=data.stat().st_size)
    Path(manifest_path).write_text(json.dumps(manifest), encoding="utf-8")
    drill = repobackup("drill", "--server", "fleet_local")
    assert drill.returncode == 1 and "FAILED  alpha.db  " in drill.stdout, drill.stdout + drill.stderr

    done = fleet.play("fleet_status", extra_vars={"fleet_status_fail_on_drills": True})
    assert done.returncode != 0
    by_server = {line.split()[1]: line for line in table(done.stdout)[2:]}
    assert by_server["fleet_local"].endswith("DRILL FAILED"), by_server
    failed = [line for line in drills_found(done.stdout) if line.startswith("localhost/fleet_local/alpha.db: ")]
    assert len(failed) == 1 and "DRILL FAILED at " in failed[0] and manifest_path in failed[0], failed
    assert "Table items has 3 rows in the copy restored from" in failed[0], failed
    assert "Restore drills failed for: localhost/fleet_local/alpha.db;" in done.stdout, done.stdout
    info = json.loads(repobackup("status", "--server", "fleet_local", "--json").stdout)
    assert info["repositories"]["alpha.db"]["drill_state"] == "failed", info
    assert info["repositories"]["beta.db"]["drill_state"] == "ok"
