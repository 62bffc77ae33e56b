"""reposerver.backup.autobackup_settings with kind postgresql, against the local PostgreSQL cluster."""

from __future__ import annotations

import glob
import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

MODULE = "reposerver.backup.autobackup_settings"
SERVER = "it_pg"
SETTINGS = Path("/etc/repobackup") / (SERVER + ".json")
CRON = Path("/etc/cron.d") / ("repobackup_" + SERVER)
DATABASE = "it_pg_settings_db"


def snapshot() -> dict:
    return {str(p): p.read_bytes() if p.exists() else None for p in (SETTINGS, CRON)}


def psql_as_postgres(sql: str) -> str:
    """Run one statement as the postgres OS user over the local socket."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    psql = bins[-1] if bins else "psql"
    done = subprocess.run(["runuser", "-u", "postgres", "--", psql, "-X", "-At", "-d", "postgres", "-c", sql],
                          cwd="/", capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def cluster():
    """The local cluster as Debian installs it: no role root (the module, run as root, reaches it as
    run_as postgres, like the scheduled job)."""
    try:
        if psql_as_postgres("SELECT 1 FROM pg_roles WHERE rolname = 'root'") == "1":
            for sql in ("REASSIGN OWNED BY root TO postgres", "DROP OWNED BY root", "DROP ROLE root"):
                psql_as_postgres(sql)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail("the local PostgreSQL cluster is not usable: %s" % exc)
    psql_as_postgres('DROP DATABASE IF EXISTS "%s"' % DATABASE)
    psql_as_postgres('CREATE DATABASE "%s"' % DATABASE)
    yield
    psql_as_postgres('DROP DATABASE IF EXISTS "%s"' % DATABASE)


@pytest.fixture
def site(cluster, tmp_path: Path, run_module):
    assert not SETTINGS.exists() and not CRON.exists(), "leftover settings of %s" % SERVER
    args = {"server_name": SERVER, "kind": "postgresql", "destination": str(tmp_path / "dest"),
            "days": ["tue", "sat"], "times": ["02:15"], "keep_last": 5}
    yield args
    run_module(MODULE, server_name=SERVER, state="absent")
    assert not SETTINGS.exists() and not CRON.exists()


def test_check_apply_and_unchanged_rerun(run_module, site):
    before = snapshot()
    checked = run_module(MODULE, check=True, diff=True, **site)
    assert checked["failed"] is False, checked.get("msg")
    assert checked["changed"] is True
    assert snapshot() == before, "check mode changed the host"

    applied = run_module(MODULE, **site)
    assert applied["failed"] is False, applied.get("msg")
    assert applied["changed"] is True
    doc = json.loads(SETTINGS.read_text())
    assert doc["kind"] == "postgresql"
    assert doc["run_as"] == "postgres"
    assert doc["options"] == {"host": "", "port": 5432, "user": "", "service": ""}
    assert "sqlite" not in json.dumps(doc["options"])
    assert applied["missing"] == []
    assert not applied.get("warnings")
    # the settings file's group is the run-as user's, so the job can read it
    assert SETTINGS.stat().st_gid == pwd.getpwnam("postgres").pw_gid
    entries = [line.split() for line in CRON.read_text().splitlines() if "repobackup run" in line]
    assert entries, CRON.read_text()
    for fields in entries:
        assert fields[5] == "postgres", fields
        assert fields[6:] == ["/usr/local/sbin/repobackup", "run", "--server", SERVER, "--scheduled"]

    after = snapshot()
    assert run_module(MODULE, check=True, **site)["changed"] is False
    again = run_module(MODULE, diff=True, **site)
    assert again["changed"] is False
    assert snapshot() == after


def test_connection_options_are_stored(run_module, site):
    conn = {"postgresql_host": "/var/run/postgresql", "postgresql_port": 5432,
            "postgresql_user": "postgres", "postgresql_service": ""}
    result = run_module(MODULE, **dict(site, repositories=[DATABASE], **conn))
    assert result["failed"] is False, result.get("msg")
    doc = json.loads(SETTINGS.read_text())
    assert doc["options"] == {"host": "/var/run/postgresql", "port": 5432, "user": "postgres", "service": ""}
    assert doc["repositories"] == [DATABASE]
    assert result["missing"] == [] and not result.get("warnings")

    service = run_module(MODULE, **dict(site, postgresql_host="db.example.net", postgresql_port=6543,
                                        postgresql_user="backup", postgresql_service="nightly"))
    assert service["failed"] is False, service.get("msg")
    assert json.loads(SETTINGS.read_text())["options"] == \
        {"host": "db.example.net", "port": 6543, "user": "backup", "service": "nightly"}
    # the cron file carries no connection settings
    assert "db.example.net" not in CRON.read_text() and "nightly" not in CRON.read_text()


def test_missing_database_is_accepted_with_a_warning(run_module, site):
    result = run_module(MODULE, **dict(site, repositories=[DATABASE, "it_pg_no_such_db"]))
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is True
    assert result["missing"] == ["it_pg_no_such_db"]
    assert any("it_pg_no_such_db" in w for w in result.get("warnings", []))
    assert not any(DATABASE + "'" in w for w in result.get("warnings", []))
    assert json.loads(SETTINGS.read_text())["repositories"] == [DATABASE, "it_pg_no_such_db"]


@pytest.mark.parametrize("port", [0, 70000])
def test_port_out_of_range_is_refused(run_module, site, port):
    run_module(MODULE, **site)
    before = snapshot()
    result = run_module(MODULE, **dict(site, postgresql_port=port))
    assert result["failed"] is True
    assert "postgresql_port %d" % port in result["msg"], result["msg"]
    assert result["msg"].count(". ") == 0, "one sentence"
    assert snapshot() == before


def test_server_down_still_applies_and_warns(run_module, site):
    down = dict(site, postgresql_host="127.0.0.1", postgresql_port=1, repositories=[DATABASE])
    result = run_module(MODULE, **down)
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is True
    assert result["missing"] == [DATABASE]
    warnings = result.get("warnings", [])
    assert any("cannot be reached" in w and "127.0.0.1 port 1" in w for w in warnings), warnings
    doc = json.loads(SETTINGS.read_text())
    assert doc["options"]["host"] == "127.0.0.1" and doc["options"]["port"] == 1
    assert os.path.exists(CRON)
