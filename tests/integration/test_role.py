"""The role through site.yml, as an administrator runs it: ansible-playbook against localhost.

Bad inventories leave the host byte-identical; check mode changes nothing; a
second run reports changed=0; one changed variable changes exactly that;
off keeps the schedule; several servers; absent; umask 000.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from hosts_env import paramiko_importable, public_host_key

REPO = Path(__file__).resolve().parents[2]
SERVERS = ("role_it_a", "role_it_b")
SHARED = [Path("/usr/local/lib/repobackup"), Path("/usr/local/sbin/repobackup"),
          Path("/etc/logrotate.d/repobackup")]


def server_paths(name: str) -> list:
    return [Path("/etc/repobackup") / (name + ".json"), Path("/etc/cron.d") / ("repobackup_" + name),
            Path("/var/lib/repobackup") / name, Path("/var/log/repobackup") / (name + ".log")]


def snapshot(*roots: Path) -> dict:
    """Every file and folder under ``roots``: mode, owner and content hash."""
    seen = {}
    for root in roots:
        if not root.exists():
            seen[str(root)] = None
            continue
        walk = [(str(root), [], [])] if root.is_file() else os.walk(root)
        for folder, _dirs, files in walk:
            for path in [folder] + [os.path.join(folder, f) for f in files]:
                st = os.lstat(path)
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) else None
                seen[path] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return seen


def playbook(inventory: dict, tmp_path: Path, *extra: str, umask: int | None = None) -> tuple:
    inv = tmp_path / "inventory.yml"
    inv.write_text(json.dumps(inventory), encoding="utf-8")
    done = subprocess.run(
        ["ansible-playbook", "-i", str(inv), str(REPO / "site.yml"), *extra],
        capture_output=True, text=True, check=False, cwd=str(tmp_path), stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    recap = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", done.stdout)
    assert recap, done.stdout + done.stderr
    return int(recap.group(2)), int(recap.group(4)), done.stdout + done.stderr  # warnings are on stderr


def inventory(**host_vars) -> dict:
    base = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    base.update(host_vars)
    return {"all": {"children": {"repository_servers": {"hosts": {"localhost": base}}}}}


def sample_repos(base: Path) -> dict:
    """Two SQLite repositories under ``base``/sqlite, and the role variables of one server backing them up."""
    root = base / "sqlite"
    root.mkdir()
    for name in ("alpha.db", "beta.db"):
        conn = sqlite3.connect(root / name)
        conn.execute("CREATE TABLE t (n INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.close()
    return {"autobackup_server_name": SERVERS[0], "autobackup_sqlite_root": str(root),
            "autobackup_destination": str(base / "dest"), "autobackup_times": ["02:15"],
            "autobackup_days": ["sat", "sun"]}


def remove_servers(names) -> None:
    """Clean-up, not under test: whatever a test left of these servers (settings, cron file, state, log).

    Plain file removal, as state absent plus the rm of state and log would leave it: a playbook run per
    server took seconds each, after every test (state absent has tests of its own).
    """
    for name in names:
        for path in server_paths(name):
            subprocess.run(["rm", "-rf", str(path)], check=True)


@pytest.fixture
def repos(tmp_path: Path) -> dict:
    yield sample_repos(tmp_path)
    remove_servers(SERVERS)


BAD = [
    ({"autobackup_times": [810]}, "quote it"),
    ({"autobackup_days": ["funday"]}, "funday"),
    ({"autobackup_destination": "relative/dir"}, "relative/dir"),
    ({"autobackup_destination": ""}, "destination is required"),
    ({"autobackup_keep_last": 0}, "keep_last 0"),
    ({"autobackup_server_name": "Bad-Name"}, "Bad-Name"),
    ({"autobackup_repositories": ["../etc"]}, "../etc"),
    ({"autobackup_servers": [{"server_name": "role_it_b", "colour": "red"}]}, "colour"),
    ({"autobackup_keep_daily": -1}, "keep_daily -1"),
    ({"autobackup_servers": [{"server_name": "role_it_b", "keep_weekly": "many"}]}, "keep_weekly"),
    ({"autobackup_destination": "sftp://rbsftp@127.0.0.1:2222/srv/backups"}, "sftp_key_file is required"),
    ({"autobackup_destination": "sftp://rbsftp:hunter2@127.0.0.1/srv/backups", "autobackup_sftp_key_file": "/root/k"},
     "carries a password"),
    ({"autobackup_destination": "sftp://rbsftp@127.0.0.1:2222/srv/backups", "autobackup_sftp_key_file": "/root/k",
      "autobackup_sftp_retries": 11}, "sftp_retries 11"),
    ({"autobackup_destination": "sftp://rbsftp@127.0.0.1:2222/srv/backups", "autobackup_sftp_key_file": "/root/k",
      "autobackup_sftp_host_key": "ssh-ed25519 AAAAnotakey"}, "sftp_host_key"),
    ({"autobackup_destination": "sftp://rbsftp@127.0.0.1:2222/srv/backups", "autobackup_sftp_key_file": "/root/k",
      "autobackup_require_mount": True}, "require_mount true"),
    # A refusal names the value as the inventory wrote it: the flat variable, or the entry of autobackup_servers.
    ({"autobackup_times": []}, "is refused: autobackup_times [] is not allowed"),
    ({"autobackup_servers": [{"server_name": "role_it_b"}, {"server_name": "role_it_c", "times": ["25:00"]}]},
     "is refused: autobackup_servers[1].times entry '25:00' is not allowed"),
    ({"autobackup_servers": [{"server_name": "role_it_b", "kind": "mysql"}]},
     "is refused: value of autobackup_servers[0].kind must be one of"),
    ({"autobackup_servers": [{"server_name": "role_it_b"}], "autobackup_keep_last": 0},
     "is refused: autobackup_keep_last 0 is not allowed"),
    # Control characters: a server name that ends in a newline would break the cron line.
    ({"autobackup_server_name": "role_it_a\n"}, "is refused: autobackup_server_name 'role_it_a"),
    ({"autobackup_run_as": "root\r"}, "is refused: autobackup_run_as 'root"),
    ({"autobackup_host_id": "db1.example.com\n"}, "is refused: autobackup_host_id 'db1.example.com"),
    ({"autobackup_host_id": "db1 eu"}, "is refused: autobackup_host_id 'db1 eu' is not allowed"),
]


def refused_host(index: int) -> str:
    return "refused_%02d" % index


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every inventory of BAD in one ansible-playbook run: one host per case, each this machine.

    One run instead of one per case: the role checks each host on its own, so each host's refusal and
    recap are its case's; the watched paths are compared before and after all of them.
    """
    base = tmp_path_factory.mktemp("refused")
    values = sample_repos(base)
    local = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    hosts = {refused_host(i): {**local, **values, **change} for i, (change, _words) in enumerate(BAD)}
    watched = SHARED + server_paths(SERVERS[0]) + server_paths(SERVERS[1]) + [base / "dest"]
    before = snapshot(*watched)
    inv = base / "inventory.yml"
    inv.write_text(json.dumps({"all": {"children": {"repository_servers": {"hosts": hosts}}}}), encoding="utf-8")
    try:
        done = subprocess.run(["ansible-playbook", "-i", str(inv), str(REPO / "site.yml"), "--forks", "8"],
                              capture_output=True, text=True, check=False, cwd=str(base), stdin=subprocess.DEVNULL)
        after = snapshot(*watched)
    finally:
        remove_servers(SERVERS)
    recaps = {host: (int(changed), int(failed)) for host, changed, failed in re.findall(
        r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", done.stdout, re.M)}
    assert set(recaps) == set(hosts), done.stdout + done.stderr
    return {"out": done.stdout + done.stderr, "recaps": recaps, "before": before, "after": after}


@pytest.mark.parametrize("change,words", BAD, ids=[str(case[0]) for case in BAD])
def test_bad_inventory_leaves_host_byte_identical(refusals, change, words):
    host = refused_host(BAD.index((change, words)))
    out = refusals["out"]
    printed = "\n".join(line for line in out.splitlines() if "[%s]" % host in line)
    changed, failed = refusals["recaps"][host]
    assert failed == 1 and changed == 0, printed
    assert words in printed, printed
    assert "hunter2" not in out, "a password in an sftp:// URL is printed"
    assert refusals["after"] == refusals["before"]


def test_check_apply_idempotent_and_one_change(repos, tmp_path):
    watched = server_paths(SERVERS[0]) + [tmp_path / "dest"]
    before = snapshot(*watched)
    changed, failed, dummy = playbook(inventory(**repos), tmp_path, "--check")
    assert failed == 0 and changed > 0
    assert snapshot(*watched) == before, "check mode changed the host"

    changed, failed, dummy = playbook(inventory(**repos), tmp_path, "--diff")
    assert failed == 0 and changed > 0
    settings = json.loads(server_paths(SERVERS[0])[0].read_text())
    assert settings["schedule"] == {"days": ["sat", "sun"], "times": ["02:15"]}
    assert (tmp_path / "dest").stat().st_mode & 0o777 == 0o750

    applied = snapshot(*watched)
    assert playbook(inventory(**repos), tmp_path, "--check")[:2] == (0, 0)
    assert playbook(inventory(**repos), tmp_path)[:2] == (0, 0)
    assert snapshot(*watched) == applied

    changed, failed, out = playbook(inventory(**dict(repos, autobackup_keep_last=3)), tmp_path, "--diff")
    assert (changed, failed) == (1, 0)
    after = json.loads(server_paths(SERVERS[0])[0].read_text())
    assert after.pop("keep_last") == 3 and settings.pop("keep_last") == 14
    assert after == settings
    assert server_paths(SERVERS[0])[1].read_bytes() == Path(
        [p for p in applied if p.endswith("repobackup_" + SERVERS[0])][0]).read_bytes()


def test_off_keeps_schedule_and_engine_refuses(repos, tmp_path):
    playbook(inventory(**repos), tmp_path)
    cron = server_paths(SERVERS[0])[1]
    on = cron.read_text()
    assert playbook(inventory(**dict(repos, autobackup_enabled=False)), tmp_path)[:2] == (1, 0)
    assert "#disabled# 15 2 * * 0,6 root /usr/local/sbin/repobackup run --server role_it_a" in cron.read_text()
    run = subprocess.run(["/usr/local/sbin/repobackup", "run", "--server", SERVERS[0]],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "skipped: auto-backup is off" in run.stdout
    assert not list((tmp_path / "dest").iterdir())
    assert playbook(inventory(**repos), tmp_path)[:2] == (1, 0)
    assert cron.read_text() == on


def test_two_servers_under_umask_000_then_absent(repos, tmp_path):
    servers = [{"server_name": SERVERS[0]},
               {"server_name": SERVERS[1], "in_use": "disconnect", "times": ["03:00"], "run_as": "nobody",
                "destination": str(tmp_path / "dest_b")}]
    inv = inventory(**dict(repos, autobackup_servers=servers))
    changed, failed, dummy = playbook(inv, tmp_path, umask=0)
    assert failed == 0 and changed > 0
    for name in SERVERS:
        settings, cron, state, log = server_paths(name)
        assert settings.stat().st_mode & 0o777 == 0o640
        assert state.stat().st_mode & 0o777 == 0o750
        assert log.stat().st_mode & 0o777 == 0o640
        assert cron.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "dest_b").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "dest_b").owner() == "nobody"
    assert playbook(inv, tmp_path, umask=0)[:2] == (0, 0)

    gone = [{"server_name": SERVERS[0]}, {"server_name": SERVERS[1], "state": "absent"}]
    changed, failed, dummy = playbook(inventory(**dict(repos, autobackup_servers=gone)), tmp_path)
    assert (changed, failed) == (1, 0)
    assert not server_paths(SERVERS[1])[0].exists() and not server_paths(SERVERS[1])[1].exists()
    assert server_paths(SERVERS[0])[0].exists()


# --- sftp:// destinations, require_mount, retention periods ----------------------------------------

SFTP_URL = "sftp://rbsftp@127.0.0.1:2222/srv/backups"
PARAMIKO_TASK = "Install the SFTP client library for sftp:// destinations"
CREATE_TASK = "Create missing destination folders"


def task_output(out: str, name: str) -> str:
    """The lines a playbook run printed under one task of the role ('' when it did not run)."""
    match = re.search(r"TASK \[reposerver\.backup\.autobackup : %s\][^\n]*\n(.*?)(?=\nTASK \[|\nPLAY RECAP)"
                      % re.escape(name), out, re.S)
    return match.group(1) if match else ""


def test_sftp_destination_installs_paramiko_only_when_missing(repos, tmp_path):
    """No backup runs here: only settings, the package task and idempotence."""
    host_key = public_host_key(tmp_path)
    values = dict(repos, autobackup_destination=SFTP_URL, autobackup_sftp_key_file="/root/.ssh/id_backup",
                  autobackup_sftp_host_key="127.0.0.1 %s" % host_key, autobackup_sftp_verify_upload=True,
                  autobackup_sftp_retries=2, autobackup_sftp_timeout=20, autobackup_keep_weekly=5)
    importable = paramiko_importable()  # scripts/setup-test-env installs python3-paramiko
    changed, failed, out = playbook(inventory(**values), tmp_path)
    assert failed == 0 and changed > 0, out
    installing = task_output(out, PARAMIKO_TASK)
    assert ("skipping: [localhost]" if importable else "changed: [localhost]") in installing, out
    assert paramiko_importable(), "the engine's /usr/bin/python3 cannot import paramiko"
    assert "skipping: [localhost]" in task_output(out, CREATE_TASK), "an sftp:// URL was made a folder"
    assert not (tmp_path / "dest").exists()

    doc = json.loads(server_paths(SERVERS[0])[0].read_text())
    assert doc["destination"] == SFTP_URL and doc["keep_weekly"] == 5
    assert doc["sftp"] == {"key_file": "/root/.ssh/id_backup", "known_hosts": "", "host_key": host_key,
                           "verify_upload": True, "retries": 2, "timeout": 20}

    changed, failed, out = playbook(inventory(**values), tmp_path)
    assert (changed, failed) == (0, 0), out
    assert "skipping: [localhost]" in task_output(out, PARAMIKO_TASK)


def test_local_destination_skips_paramiko(repos, tmp_path):
    changed, failed, out = playbook(inventory(**repos), tmp_path)
    assert failed == 0 and changed > 0, out
    assert "skipping: [localhost]" in task_output(out, PARAMIKO_TASK), out
    assert json.loads(server_paths(SERVERS[0])[0].read_text())["sftp"] is None


def test_require_mount_never_creates_destination_and_warns(repos, tmp_path):
    """Two servers share a destination under a mount point that is not mounted; one requires the mount."""
    share = tmp_path / "mnt" / "share"
    servers = [{"server_name": SERVERS[0], "require_mount": True},
               {"server_name": SERVERS[1], "times": ["03:00"]}]
    values = dict(repos, autobackup_destination=str(share), autobackup_servers=servers,
                  autobackup_keep_daily=7, autobackup_keep_weekly=4, autobackup_keep_monthly=12)
    changed, failed, out = playbook(inventory(**values), tmp_path, "--check")
    assert failed == 0 and not share.exists()

    changed, failed, out = playbook(inventory(**values), tmp_path)
    assert failed == 0 and changed > 0, out
    assert not share.exists() and not share.parent.exists(), "a destination under require_mount was created"
    assert "skipping: [localhost]" in task_output(out, CREATE_TASK), out
    assert "skipping: [localhost]" in task_output(out, PARAMIKO_TASK), out
    warning = task_output(out, "Warn about require_mount destinations that are not mount points now")
    assert "WARNING: server %s: destination %s is not a mount point now" % (SERVERS[0], share) in warning, out
    assert SERVERS[1] + ":" not in warning

    docs = [json.loads(server_paths(name)[0].read_text()) for name in SERVERS]
    assert [d["require_mount"] for d in docs] == [True, False]
    for doc in docs:
        assert (doc["keep_last"], doc["keep_daily"], doc["keep_weekly"], doc["keep_monthly"]) == (14, 7, 4, 12)

    changed, failed, out = playbook(inventory(**values), tmp_path)
    assert (changed, failed) == (0, 0), out
    assert "is not a mount point now" in out


# --- host id: this host's folder at the destination -------------------------------------------------

def repobackup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/local/sbin/repobackup", *args], capture_output=True, text=True, check=False)


def test_host_id_reaches_the_settings_and_names_the_backup_folder(repos, tmp_path):
    """Unset: the host's FQDN (its short name when it has no domain); set: autobackup_host_id, one change."""
    assert playbook(inventory(**repos), tmp_path)[1] == 0
    settings = server_paths(SERVERS[0])[0]
    first = json.loads(settings.read_text())["host_id"]
    short = socket.gethostname().split(".")[0]
    assert first and first.split(".")[0].lower() == short.lower(), first
    assert repobackup("export", "--server", SERVERS[0]).returncode == 0
    first_folder = tmp_path / "dest" / first / SERVERS[0]
    written = sorted(p.name for p in (first_folder / "alpha.db").iterdir())
    assert len(written) == 2, written  # data file and manifest

    cron = server_paths(SERVERS[0])[1].read_bytes()
    values = dict(repos, autobackup_host_id="role-it.example.test")
    assert playbook(inventory(**values), tmp_path, "--check")[:2] == (1, 0)
    assert json.loads(settings.read_text())["host_id"] == first, "check mode changed the settings"
    assert playbook(inventory(**values), tmp_path, "--diff")[:2] == (1, 0)
    assert json.loads(settings.read_text())["host_id"] == "role-it.example.test"
    assert server_paths(SERVERS[0])[1].read_bytes() == cron, "the host id is no business of the cron file"
    assert playbook(inventory(**values), tmp_path)[:2] == (0, 0)

    assert repobackup("export", "--server", SERVERS[0]).returncode == 0
    assert len(list((tmp_path / "dest" / "role-it.example.test" / SERVERS[0] / "alpha.db").iterdir())) == 2
    assert sorted(p.name for p in (first_folder / "alpha.db").iterdir()) == written
    status = json.loads(repobackup("status", "--server", SERVERS[0], "--json").stdout)
    assert status["host"] == "role-it.example.test"
    # The folder of the first run is a legacy one only when it was named by the short host name.
    assert status["legacy_folder"] == (str(first_folder) if first == short else None)


# --- servers the inventory no longer declares ----------------------------------------------------------

def test_a_renamed_server_is_named_then_purged_on_request_and_its_backups_stay(repos, tmp_path):
    """Rename role_it_a to role_it_b in inventory: the old one is warned about, flagged, then purged when asked."""
    declared = Path("/etc/repobackup/role-declared.json")
    saved = declared.read_bytes() if declared.exists() else None
    try:
        assert playbook(inventory(**repos), tmp_path)[1] == 0
        assert repobackup("export", "--server", SERVERS[0]).returncode == 0
        backups = sorted(str(p) for p in (tmp_path / "dest").rglob("*") if p.is_file())
        assert backups

        renamed = dict(repos, autobackup_server_name=SERVERS[1])
        changed, failed, out = playbook(inventory(**renamed), tmp_path)
        assert failed == 0 and changed > 0
        assert "Server %s was applied by the role but the inventory no longer declares it" % SERVERS[0] in out
        assert all(path.exists() for path in server_paths(SERVERS[0])[:2]), "removed without being asked"
        status = json.loads(repobackup("status", "--server", SERVERS[0], "--json").stdout)
        assert status["server"] == SERVERS[0]

        purge = dict(renamed, autobackup_purge_undeclared=True)
        watched = server_paths(SERVERS[0]) + [tmp_path / "dest"]
        before = snapshot(*watched)
        changed, failed, out = playbook(inventory(**purge), tmp_path, "--check", "--diff")
        assert (changed, failed) == (1, 0) and "repobackup_%s" % SERVERS[0] in out
        assert snapshot(*watched) == before, "check mode changed the host"
        assert playbook(inventory(**purge), tmp_path)[:2] == (1, 0)
        settings, cron, state, log = server_paths(SERVERS[0])
        assert not settings.exists() and not cron.exists()
        assert state.is_dir() and log.exists(), "state folder and log stay, as with state absent"
        assert sorted(str(p) for p in (tmp_path / "dest").rglob("*") if p.is_file()) == backups
        assert server_paths(SERVERS[1])[0].exists()
        assert playbook(inventory(**purge), tmp_path)[:2] == (0, 0)
    finally:
        if saved is None:
            declared.unlink(missing_ok=True)
        else:
            declared.write_bytes(saved)
