"""PostgreSQL through site.yml: two clusters on one host are two servers; a stopped server.

The scheduled job runs as the OS user postgres (peer authentication over the
local socket), so the host command is run here exactly as cron runs it.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "/usr/local/sbin/repobackup"
SECOND = ("15", "rbt_second", "5434")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL)


def psql(port: str, sql: str, db: str = "postgres") -> str:
    return sh("runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-p", port, "-d", db,
              "-v", "ON_ERROR_STOP=1", "-c", sql).stdout.strip()


def playbook(tmp_path: Path, host_vars: dict) -> tuple:
    host = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    host.update(host_vars)
    inv = tmp_path / "inventory.yml"
    inv.write_text(json.dumps({"all": {"children": {"repository_servers": {"hosts": {"localhost": host}}}}}))
    done = subprocess.run(["ansible-playbook", "-i", str(inv), str(REPO / "site.yml")], capture_output=True,
                          text=True, check=False, cwd=str(tmp_path), stdin=subprocess.DEVNULL)
    recap = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", done.stdout)
    assert recap, done.stdout + done.stderr
    return int(recap.group(1)), int(recap.group(2)), done.stdout + done.stderr


def run_as_postgres(server: str) -> subprocess.CompletedProcess:
    return sh("runuser", "-u", "postgres", "--", LAUNCHER, "run", "--server", server, check=False)


def drop_databases(port: str) -> None:
    names = psql(port, "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'")
    for name in names.splitlines():
        psql(port, 'DROP DATABASE "%s" WITH (FORCE)' % name)


@pytest.fixture
def second_cluster():
    """The second cluster, which scripts/setup-test-env makes (stopped): started without databases, stopped after."""
    version, name, port = SECOND
    if not Path("/etc/postgresql/%s/%s/postgresql.conf" % (version, name)).exists():
        sh("pg_createcluster", "--port", port, "--start-conf", "manual", version, name)
    sh("pg_ctlcluster", version, name, "start", check=False)
    drop_databases(port)
    yield port
    drop_databases(port)
    sh("pg_ctlcluster", version, name, "stop", "-m", "fast", check=False)


@pytest.fixture
def dest():
    """A destination the postgres user can reach (pytest's own folders are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="rbt-pg-", dir="/tmp"))
    base.chmod(0o755)
    yield base / "backups"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cleanup():
    """Clean-up, not under test: removes the servers' settings, cron files, state and logs (a state absent
    run of the role took seconds)."""
    servers = []
    yield servers
    for server in servers:
        sh("rm", "-rf", "/etc/repobackup/%s.json" % server, "/etc/cron.d/repobackup_" + server,
           "/var/lib/repobackup/" + server, "/var/log/repobackup/%s.log" % server)


def test_two_clusters_are_two_servers(tmp_path, second_cluster, cleanup, dest):
    psql("5432", "DROP DATABASE IF EXISTS rbt_two_main")
    psql("5432", "CREATE DATABASE rbt_two_main")
    psql(second_cluster, "CREATE DATABASE rbt_two_second")
    psql(second_cluster, "CREATE TABLE t (n int); INSERT INTO t VALUES (7)", db="rbt_two_second")
    servers = [{"server_name": "it_pg_main", "kind": "postgresql", "postgresql_port": 5432,
                "repositories": ["rbt_two_main"], "destination": str(dest)},
               {"server_name": "it_pg_second", "kind": "postgresql", "postgresql_port": int(second_cluster),
                "repositories": "all", "destination": str(dest)}]
    cleanup.extend(["it_pg_main", "it_pg_second"])
    try:
        changed, failed, out = playbook(tmp_path, {"autobackup_servers": servers})
        assert failed == 0 and changed > 0, out
        for server in ("it_pg_main", "it_pg_second"):
            done = run_as_postgres(server)
            assert done.returncode == 0, done.stdout + done.stderr
        main_dbs = {Path(p).name for p in glob.glob(str(dest / "*" / "it_pg_main" / "*"))}
        second_dbs = {Path(p).name for p in glob.glob(str(dest / "*" / "it_pg_second" / "*"))}
        assert main_dbs == {"rbt_two_main", "%globals"}
        assert second_dbs == {"rbt_two_second", "%globals"}, "the second cluster's own databases only"
        assert playbook(tmp_path, {"autobackup_servers": servers})[:2] == (0, 0)
    finally:
        psql("5432", "DROP DATABASE IF EXISTS rbt_two_main")


def test_role_applies_while_the_server_is_down_and_run_reports_it(tmp_path, cleanup, dest):
    values = {"autobackup_server_name": "it_pg_down", "autobackup_kind": "postgresql",
              "autobackup_postgresql_host": "127.0.0.1", "autobackup_postgresql_port": 1,
              "autobackup_repositories": ["app"], "autobackup_destination": str(dest)}
    cleanup.append("it_pg_down")
    changed, failed, out = playbook(tmp_path, values)
    assert failed == 0 and changed > 0, out
    assert "cannot be reached" in out or "accepted unchecked" in out, out
    done = run_as_postgres("it_pg_down")
    assert done.returncode == 1
    assert "app" in done.stdout and "cannot be reached" in done.stdout, done.stdout
    assert not list(dest.rglob("*.manifest.json")), "nothing may be published"
    status = json.loads(sh(LAUNCHER, "status", "--server", "it_pg_down", "--json").stdout)
    assert status["server_reachable"] is False and status["missing"] == ["app"]
