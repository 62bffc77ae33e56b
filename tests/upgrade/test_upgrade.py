"""Upgrade of the collection, end to end: the previous release applied, backed up, then the working tree over it.

The previous release is built from git (tag 0.1.0, commit 54581ca) and applied with ansible-playbook to this
host: an sqlite server and a postgresql server (PostgreSQL 15 as Debian installs it), each backed up by the
engine that release installs, and a ``disconnect`` run of the postgresql server killed with SIGKILL while it
holds its clients off, which leaves a pending repair. Then the working tree's collection, its version bumped
here so that it always differs from the base, is applied over it, and what an upgrade promises is checked.
Last, the old release is applied again: it refuses the newer files by name and destroys nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_TAG, BASE_COMMIT = "0.1.0", "54581ca"
LAUNCHER = Path("/usr/local/sbin/repobackup")
ENGINE_ROOT = Path("/usr/local/lib/repobackup")
SERVERS = ("upg_lite", "upg_pg")
DB, PG_PORT, LIMIT = "upg_db", "5432", 7


def sh(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, **kw)
    if check and done.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (argv, done.returncode, done.stdout, done.stderr))
    return done


def psql(sql: str) -> str:
    return sh("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-At", "-p", PG_PORT, "-d", "postgres",
              "-v", "ON_ERROR_STOP=1", "-c", sql).stdout.strip()


def repobackup(*args, check=True) -> subprocess.CompletedProcess:
    return sh(LAUNCHER, *args, check=check)


def cron_run(server: str) -> list:
    """The command line cron runs for ``server``, as its cron file says (user and command)."""
    line = next(line for line in Path("/etc/cron.d/repobackup_" + server).read_text().splitlines()
                if line and not line.startswith("#") and " run --server " in line)
    fields = line.split()
    return ["runuser", "-u", fields[5], "--"] + fields[6:]


def scheduled(server: str) -> None:
    """One scheduled run, as cron starts it (0.1.0 typed as root does not become the run-as user)."""
    sh(*cron_run(server))


def base_ref() -> str:
    for ref in (BASE_TAG, BASE_COMMIT):
        if sh("git", "-C", REPO, "rev-parse", "--verify", "-q", ref + "^{commit}", check=False).returncode == 0:
            return ref
    pytest.fail("The previous release (tag %s, commit %s) is not in this clone's history: clone with full history."
                % (BASE_TAG, BASE_COMMIT))


def build(source: Path, work: Path, name: str) -> Path:
    """ansible-galaxy collection build + install: the collections path of one release."""
    dist, installed = work / ("dist-" + name), work / ("collections-" + name)
    sh("ansible-galaxy", "collection", "build", "--force", "--output-path", dist, cwd=source)
    tarball = next(dist.glob("reposerver-backup-*.tar.gz"))
    sh("ansible-galaxy", "collection", "install", "--force", "-p", installed, tarball)
    return installed


def bumped(version: str) -> str:
    major, minor, patch = version.split(".")
    return "%s.%s.%d" % (major, minor, int(patch) + 1)


def working_tree_copy(work: Path) -> tuple:
    """The working tree's tracked files, with the version bumped in galaxy.yml and the engine."""
    target = work / "new-src"
    names = sh("git", "-C", REPO, "ls-files", "-z").stdout.split("\0")
    for name in filter(None, names):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    galaxy = target / "galaxy.yml"
    old = re.search(r"^version: (\S+)$", galaxy.read_text(), re.M).group(1)
    new = bumped(old)
    galaxy.write_text(galaxy.read_text().replace("version: " + old, "version: " + new))
    layout = target / "plugins" / "module_utils" / "layout.py"
    text = layout.read_text()
    assert 'VERSION = "%s"' % old in text
    layout.write_text(text.replace('VERSION = "%s"' % old, 'VERSION = "%s"' % new))
    return target, new


def apply(collections: Path, inventory: Path, work: Path) -> tuple:
    """site.yml of that release: (changed, failed, output)."""
    site = collections / "ansible_collections" / "reposerver" / "backup" / "site.yml"
    play = work / "site.yml"
    shutil.copy(site if site.exists() else REPO / "site.yml", play)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_HOME=str(work / "ansible-home"))
    done = sh("ansible-playbook", "-i", inventory, play, check=False, env=env, cwd=work)
    recap = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", done.stdout)
    assert recap, done.stdout + done.stderr
    return int(recap.group(1)), int(recap.group(2)), done.stdout + done.stderr


def backups(dest: Path, server: str, repository: str) -> list:
    """Manifests of one repository's backups, oldest first (stamps sort by time)."""
    return sorted(p for p in dest.glob("*/%s/%s/*.json" % (server, repository)) if not p.name.startswith("."))


def sqlite_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]


def connection_limit() -> int:
    return int(psql("SELECT datconnlimit FROM pg_database WHERE datname = '%s'" % DB))


def kill_during_disconnect(state: Path) -> None:
    """Start the old engine's run of upg_pg and SIGKILL it while it holds clients off (limit 0, record written)."""
    pending = state / "pending"
    command = cron_run("upg_pg")
    user, argv = command[2], command[4:]
    # Started as that user directly (not through runuser, whose child would escape the kill).
    env = {"PATH": "/usr/bin:/bin", "HOME": "/var/lib/postgresql"}
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           user=user, group=user, extra_groups=[], cwd="/", env=env)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and run.poll() is None:
            if pending.is_dir() and os.listdir(pending) and connection_limit() == 0:
                os.killpg(run.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        run.wait()
    assert run.returncode == -signal.SIGKILL, "the old run ended before it could be killed in its disconnect window"
    sh("pkill", "-KILL", "-f", "pg_dump.*%s" % DB, check=False)  # its pg_dump, a child in the same session


@pytest.fixture(scope="module")
def work():
    base = Path(tempfile.mkdtemp(prefix="repobackup-upgrade-", dir="/var/tmp"))
    base.chmod(0o755)  # postgres (the run-as user of upg_pg) reaches its destination through it
    yield base
    for name in SERVERS:
        for path in (Path("/etc/repobackup") / (name + ".json"), Path("/etc/cron.d") / ("repobackup_" + name),
                     Path("/var/lib/repobackup") / name, Path("/var/log/repobackup") / (name + ".log")):
            sh("rm", "-rf", path)
    for db in (DB, DB + "_restored"):
        psql("DROP DATABASE IF EXISTS %s" % db)
    shutil.rmtree(base, ignore_errors=True)


def fqdn_differs() -> bool:
    """Whether this host's default host id (its FQDN) differs from the short name 0.1.0 named its folder by."""
    name = socket.gethostname()
    return "." in name or socket.getfqdn(name).lower().startswith(name.lower() + ".")


def inventory(work: Path) -> Path:
    # 0.1.0 wrote under the short host name; where the FQDN differs, the host id keeps that folder (README,
    # "Renaming, removing and upgrading"), otherwise the default host id is the same folder.
    # A flat variable: 0.1.0 ignores it, where it would refuse an unknown key in autobackup_servers.
    same_folder = {"autobackup_host_id": socket.gethostname().split(".")[0]} if fqdn_differs() else {}
    servers = [
        {"server_name": "upg_lite", "kind": "sqlite", "sqlite_root": str(work / "sqlite"),
         "destination": str(work / "dest_lite"), "keep_last": 3, "times": ["03:00"]},
        {"server_name": "upg_pg", "kind": "postgresql", "repositories": [DB], "in_use": "disconnect",
         "destination": str(work / "dest_pg"), "keep_last": 3, "times": ["03:30"]},
    ]
    host = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
            "autobackup_servers": servers, **same_folder}
    path = work / "inventory.json"
    path.write_text(json.dumps({"all": {"children": {"repository_servers": {"hosts": {"localhost": host}}}}}))
    return path


def test_upgrade_from_the_previous_release_then_downgrade(work):
    # -- the previous release, applied and used ------------------------------------------------------------
    ref = base_ref()
    base_src = work / "base-src"
    base_src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
    old_collections = build(base_src, work, "base")
    new_src, new_version = working_tree_copy(work)
    new_collections = build(new_src, work, "new")

    (work / "sqlite").mkdir()
    with sqlite3.connect(work / "sqlite" / "alpha.db") as conn:
        conn.execute("CREATE TABLE t (n INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    psql("DROP DATABASE IF EXISTS %s" % DB)
    psql("CREATE DATABASE %s CONNECTION LIMIT %d" % (DB, LIMIT))
    sh("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", PG_PORT, "-d", DB, "-v", "ON_ERROR_STOP=1", "-c",
       "CREATE TABLE big AS SELECT g AS n, md5(g::text) AS t FROM generate_series(1, 1500000) g")
    inv = inventory(work)
    changed, failed, out = apply(old_collections, inv, work)
    assert failed == 0 and changed > 0, out
    assert "/usr/local/lib/repobackup/0.1.0" in LAUNCHER.read_text()

    for dummy in range(2):
        scheduled("upg_lite")
        time.sleep(1.1)  # one backup a second keeps the stamps apart
    scheduled("upg_pg")
    old_lite = backups(work / "dest_lite", "upg_lite", "alpha.db")
    old_pg = backups(work / "dest_pg", "upg_pg", DB)
    assert len(old_lite) == 2 and len(old_pg) == 1
    assert all(json.loads(p.read_text())["format"] == 1 for p in old_lite + old_pg)
    old_status = json.loads(repobackup("status", "--server", "upg_lite", "--json").stdout)
    old_success = old_status["repositories"]["alpha.db"]["last_success"]["time"]
    kill_during_disconnect(Path("/var/lib/repobackup/upg_pg"))
    assert connection_limit() == 0, "the killed run left its clients locked out, as a crash does"

    # -- the working tree over it --------------------------------------------------------------------------
    changed, failed, out = apply(new_collections, inv, work)
    assert failed == 0 and changed > 0, out
    assert apply(new_collections, inv, work)[:2] == (0, 0), "a second apply changes nothing"
    assert "/usr/local/lib/repobackup/%s" % new_version in LAUNCHER.read_text()
    assert "/usr/local/sbin/repobackup run --server upg_lite" in Path("/etc/cron.d/repobackup_upg_lite").read_text()
    assert repobackup("--version").stdout.strip() == "repobackup " + new_version
    assert sorted(p.name for p in ENGINE_ROOT.iterdir()) == [new_version], "an upgrade leaves one engine"

    # The pending repair the old engine wrote is carried out by the new one, first (its first run; an import would do it too).
    assert connection_limit() == 0
    scheduled("upg_pg")
    assert connection_limit() == LIMIT
    assert not os.listdir("/var/lib/repobackup/upg_pg/pending")

    # Old backups: listed, verified and imported by the new engine; status keeps its history.
    status = json.loads(repobackup("status", "--server", "upg_lite", "--json").stdout)
    assert status["repositories"]["alpha.db"]["last_success"]["time"] == old_success
    assert status["repositories"]["alpha.db"]["backups_kept"] == 2
    for manifest in old_lite + old_pg:
        repobackup("verify", manifest)
    repobackup("import", old_lite[0], "--server", "upg_lite", "--repository", "restored.db")
    assert sqlite_rows(work / "sqlite" / "restored.db") == 100
    (work / "sqlite" / "restored.db").unlink()
    repobackup("import", old_pg[0], "--server", "upg_pg", "--repository", DB + "_restored")
    rows = sh("runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-p", PG_PORT, "-d", DB + "_restored", "-c",
              "SELECT count(*) FROM big").stdout.strip()
    assert rows == "1500000"

    # Retention counts old and new backups together: keep_last 3 of 2 old and 2 new.
    for dummy in range(2):
        time.sleep(1.1)
        scheduled("upg_lite")
    kept = backups(work / "dest_lite", "upg_lite", "alpha.db")
    assert len(kept) == 3 and old_lite[0] not in kept and old_lite[1] in kept
    new_lite = [p for p in kept if p not in old_lite]
    assert all(json.loads(p.read_text())["format"] == 2 for p in new_lite)

    # -- downgrade: the old engine refuses the newer files by name and destroys nothing ---------------------
    newer = {p.name.split(".")[0] for p in new_lite}
    everything = {p: p.read_bytes() for p in (work / "dest_lite").rglob("*") if p.name.split(".")[0] in newer}
    assert len(everything) == 2 * len(new_lite)
    changed, failed, out = apply(old_collections, inv, work)
    assert failed == 0, out
    refused = repobackup("verify", new_lite[-1], check=False)
    assert refused.returncode != 0
    assert "has format 2; this engine reads format 1" in refused.stdout + refused.stderr
    scheduled("upg_lite")  # its own backups go on
    for path, data in everything.items():
        assert path.read_bytes() == data, "the old engine changed or removed %s" % path

    # Back to the working tree, which reads everything again.
    assert apply(new_collections, inv, work)[1] == 0
    for manifest in backups(work / "dest_lite", "upg_lite", "alpha.db"):
        repobackup("verify", manifest)
