# -*- coding: utf-8 -*-
"""Restore drills of the ``postgresql`` kind against the real PostgreSQL 15 clusters (15/main, and
15/rbt_second on port 5434 as a drill cluster), with real clients; no mock.

A drill restores a database's newest good backup into a scratch database (``.repobackup-scratch-...``,
never listed), on the server's own cluster or on the drill cluster, runs amcheck on its btree indexes,
compares the facts the backup recorded, and drops the scratch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import report, settings
from ansible_collections.reposerver.backup.plugins.module_utils.kind_postgresql import SCRATCH_PREFIX

import pg_testlib as pg
from pg_testlib import pg_dbs  # noqa: F401  pylint: disable=unused-import
from repobackup_testlib import HOST, rehash

pytestmark = pytest.mark.skipif(not os.path.isdir(pg.PGBIN) or os.geteuid() != 0,
                                reason="needs Debian's postgresql-15 and root")

COLLECTIONS = str(Path(engine_mod.__file__).parents[5])
SECOND = ("15", "rbt_second", "5434")
TABLE = ("CREATE TABLE t (n int PRIMARY KEY, v text); CREATE INDEX t_v ON t (v);"
         " INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, %d) g;")


cluster, postgres_owns_tmp = pg.cluster_fixtures("module")


@pytest.fixture
def pg_engine(destination, paths, tmp_path):
    def make(**options):
        raw = {"kind": "postgresql", "destination": str(destination), "metrics_file": str(tmp_path / "m.prom")}
        raw.update(options)
        return engine_mod.Engine(settings.validate(raw), paths, host=HOST)
    return make


def scratch_databases(port: str = "5432") -> list:
    return [r[0] for r in second_psql("SELECT datname FROM pg_database;", port)
            if r[0].startswith(SCRATCH_PREFIX)]


def second_psql(sql: str, port: str = SECOND[2]) -> list:
    out = pg.run([pg.PGBIN + "/psql", "-X", "-q", "-A", "-t", "-F", "\t", "-p", port, "-v", "ON_ERROR_STOP=1",
                  "-d", "postgres", "-c", sql], user="postgres", cwd="/").stdout.decode()
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def nice_of(pid: str) -> int:
    with open("/proc/%s/stat" % pid, encoding="ascii") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[16])


def prom(path) -> dict:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return dict(line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))


def test_a_drill_over_a_good_backup_passes_amcheck_and_the_recorded_facts(pg_dbs, pg_engine, tmp_path):
    name = pg_dbs("rbt drill ok", TABLE % 3000)
    pg_dbs("rbt drill other", TABLE % 10)
    engine = pg_engine(repositories=["rbt drill ok", "rbt drill other"])
    backup = engine.export()["repositories"][name]

    done = engine.drill()

    assert done["result"] == "ok"
    drill = done["repositories"][name]
    assert drill["backup"] == backup["backup"] and drill["target"] == "scratch on the server"
    # amcheck ships with Debian's PostgreSQL 15: bt_index_check ran on the restored copy's btree indexes
    assert {"restore", "amcheck", "row_counts", "objects"} <= set(drill["checks"]), drill
    repo = engine.status()["repositories"][name]
    assert repo["drill_state"] == "ok" and repo["proven_restorable"] == backup["time"]
    assert prom(tmp_path / "m.prom")['repobackup_drill_ok{server="main",repository="rbt drill ok"}'] == "1"
    assert scratch_databases() == []
    assert name in pg.database_names() and not [d for d in pg.database_names() if d.startswith(".repobackup")]


def test_an_altered_dump_whose_checksum_is_right_fails_the_drill_naming_the_cause(pg_dbs, pg_engine, tmp_path):
    name = pg_dbs("rbt drill altered", TABLE % 20000)
    engine = pg_engine(repositories=[name])
    backup = engine.export()["repositories"][name]
    data = backup["data_file_path"]
    raw = Path(data).read_bytes()
    middle = int(len(raw) * 0.6)  # inside the table's compressed data; the table of contents stays readable
    Path(data).write_bytes(raw[:middle] + bytes(b ^ 0x5A for b in raw[middle:middle + 64]) + raw[middle + 64:])
    rehash(backup["backup"])

    drill = engine.drill()["repositories"][name]

    assert drill["result"] == "failed" and drill["backup"] == backup["backup"]
    assert "could not uncompress data" in drill["error"], drill["error"]
    info = engine.status()
    assert info["repositories"][name]["drill_state"] == "failed" and info["drill_failures"] == 1
    assert "DRILL FAILED" in report.status_text(info)
    gauges = prom(tmp_path / "m.prom")
    assert gauges['repobackup_drill_ok{server="main",repository="rbt drill altered"}'] == "0"
    assert [k for k in gauges if k.startswith("repobackup_drill_error_info{") and "could not uncompress data" in k]
    assert scratch_databases() == []
    assert pg.psql("SELECT count(*) FROM t;", db=name) == [("20000",)]  # the live database is untouched


@pytest.fixture
def drill_cluster():
    version, name, port = SECOND
    if not os.path.isdir("/etc/postgresql/%s/%s" % (version, name)):
        pytest.skip("scripts/setup-test-env makes the cluster %s/%s" % (version, name))
    pg.run(["pg_ctlcluster", version, name, "start"], check=False)
    for dummy in range(100):
        if pg.run([pg.PGBIN + "/pg_isready", "-q", "-p", port], check=False).returncode == 0:
            break
        time.sleep(0.1)
    second_psql("DROP ROLE IF EXISTS %s;" % pg.CLIENT)
    yield port
    for leftover in scratch_databases(port):
        second_psql('DROP DATABASE "%s" WITH (FORCE);' % leftover)
    second_psql("DROP ROLE IF EXISTS %s;" % pg.CLIENT)
    pg.run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], check=False)


def test_a_drill_cluster_takes_the_restore_and_a_role_it_lacks_fails_the_drill_by_name(
        pg_dbs, pg_engine, drill_cluster):
    name = pg_dbs("rbt drill elsewhere", TABLE % 500)  # its ACL grants CONNECT to the role rbt_client
    engine = pg_engine(repositories=[name], drill_postgresql_port=int(drill_cluster))
    engine.export()

    missing = engine.drill()["repositories"][name]

    assert missing["result"] == "failed" and "port 5432" not in missing["target"]
    assert "port %s" % drill_cluster in missing["target"]
    assert pg.CLIENT in missing["error"] and "never creates roles" in missing["error"], missing["error"]
    assert second_psql("SELECT count(*) FROM pg_roles WHERE rolname = '%s';" % pg.CLIENT) == [("0",)]
    second_psql("CREATE ROLE %s;" % pg.CLIENT)

    drill = engine.drill()["repositories"][name]

    assert drill["result"] == "ok" and "amcheck" in drill["checks"], drill
    assert scratch_databases(drill_cluster) == [] and scratch_databases() == []


DRILL = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.reposerver.backup.plugins.module_utils import cli, layout
sys.exit(cli.main(["drill"], layout.Paths(**json.loads(sys.argv[2]))))
"""


def test_a_drill_killed_with_sigkill_leaves_a_scratch_database_that_the_next_drill_drops_first(
        pg_dbs, destination, paths, write_settings):
    name = pg_dbs("rbt drill killed", TABLE % 400000)
    config = settings.validate({"kind": "postgresql", "destination": str(destination), "repositories": [name]})
    write_settings(config)
    engine = engine_mod.Engine(config, paths)
    assert engine.export()["result"] == "ok"
    proc = subprocess.Popen([sys.executable, "-c", DRILL, COLLECTIONS, json.dumps(dataclasses.asdict(paths))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen = pg.wait_for(lambda: scratch_databases() or proc.poll() is not None, seconds=120, step=0.02)
    assert seen is not True, "the drill ended before its scratch database was seen"
    child = seen[0][len(SCRATCH_PREFIX):].split("-")[1]  # the engine's process as postgres, named in the scratch
    assert nice_of(child) >= 10  # drills run at a lower priority, and so do the client programs they start
    os.killpg(proc.pid, signal.SIGKILL)  # the host command and its engine child (which dies with it)
    proc.wait()
    # Once killed, init reaps the engine child (until then /proc still shows it, as a zombie, and it counts
    # as running).
    pg.wait_for(lambda: not os.path.exists("/proc/%s" % child))
    assert scratch_databases() == seen  # left behind

    drill = engine.drill()["repositories"][name]

    assert drill["result"] == "ok", drill
    assert scratch_databases() == []
    log = Path(paths.log_file("main")).read_text(encoding="utf-8")
    assert "removed database %s" % seen[0] in log


class Client:
    """A client session of the ordinary role inserting one row per statement until stopped."""

    def __init__(self, db: str):
        self.proc = subprocess.Popen([pg.PGBIN + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
                                      pg.client_conninfo(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=pg.client_env())
        self.sent = 0
        self.stop = threading.Event()
        self.proc.stdin.write(b"SELECT pg_backend_pid();\n")
        self.proc.stdin.flush()
        self.backend = self.proc.stdout.readline().decode().strip()
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self):
        while not self.stop.is_set():
            self.proc.stdin.write(b"INSERT INTO w (v) VALUES ('by the client');\n")
            self.proc.stdin.flush()
            self.sent += 1
            time.sleep(0.002)

    def finish(self) -> tuple:
        self.stop.set()
        self.thread.join(timeout=10)
        self.proc.stdin.write(b"SELECT pg_backend_pid();\n")
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out.decode().strip(), err.decode()


def test_a_drill_never_touches_the_live_database_while_a_client_writes(pg_dbs, pg_engine):
    name = pg_dbs("rbt drill live", TABLE % 20000 + " CREATE TABLE w (id serial PRIMARY KEY, v text);"
                  " GRANT INSERT ON w TO %s; GRANT USAGE ON SEQUENCE w_id_seq TO %s;" % (pg.CLIENT, pg.CLIENT))
    before = pg.psql("SELECT oid, datconnlimit FROM pg_database WHERE datname = :'n';", n=name)
    engine = pg_engine(repositories=[name])
    client = Client(name)
    try:
        pg.wait_for(lambda: client.sent > 50)
        assert engine.export()["result"] == "ok"
        for dummy in range(2):
            sent = client.sent
            drill = engine.drill()["repositories"][name]
            assert drill["result"] == "ok", drill
            pg.wait_for(lambda: client.sent > sent + 20)  # the client kept writing across the drill
    finally:
        code, out, err = client.finish()
    assert code == 0, err
    assert out == client.backend  # the same session from start to end: never terminated
    assert pg.psql("SELECT count(*) FROM w;", db=name) == [(str(client.sent),)]  # every insert is there
    assert pg.psql("SELECT oid, datconnlimit FROM pg_database WHERE datname = :'n';", n=name) == before
    assert pg.psql("SELECT count(*) FROM t;", db=name) == [("20000",)]
