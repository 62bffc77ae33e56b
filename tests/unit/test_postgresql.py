# -*- coding: utf-8 -*-
"""The ``postgresql`` driver against a real PostgreSQL 15 cluster with real clients (no mock).

Needs Debian's postgresql-15 (scripts/setup-test-env installs it); the session
fixture starts cluster 15/main when it is down.  The cluster is as Debian
installs it (no role ``root``): the engine and the driver reach it as the OS
user ``postgres``, as on a real host, while the tests run as root.
Every test makes its own ``rbt*`` databases and drops them afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import kind_postgresql as K
from ansible_collections.reposerver.backup.plugins.module_utils import settings
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError, RepositoryError
from ansible_collections.reposerver.backup.plugins.module_utils.layout import encode_name
from ansible_collections.reposerver.backup.plugins.module_utils.store import check_data

import pg_testlib as pg
from pg_testlib import pg_dbs  # noqa: F401  pylint: disable=unused-import
from repobackup_testlib import HOST

pytestmark = pytest.mark.skipif(not os.path.isdir(pg.PGBIN) or os.geteuid() != 0,
                                reason="needs Debian's postgresql-15 and root")

COLLECTIONS = str(Path(engine_mod.__file__).parents[5])
ODD_NAMES = ["-h", "rbt A b", "rbt it's", 'rbt "q" \\ x', "rbt.dot.Caps", "rbtÉté ñ"]


cluster, postgres_owns_tmp = pg.cluster_fixtures("session")


pg_engine = pg.engine_fixture()


def server(wait=30):
    return pg.AsPostgres(K.PostgresqlServer(settings.validate({"kind": "postgresql", "destination": "/x"}).options,
                                            wait=wait))


TABLE = "CREATE TABLE t (n int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, %d) g;"


def rows(db):
    return pg.psql("SELECT count(*), sum(n) FROM t;", db=db)[0]


# -- names, listing, export, restore ------------------------------------------------------------

def test_odd_names_list_export_and_restore(pg_dbs, pg_engine, destination):
    for index, name in enumerate(ODD_NAMES):
        pg_dbs(name, TABLE % (index + 1))
    drv = server()
    listed = drv.list_repositories()
    assert set(ODD_NAMES) <= set(listed) and "template0" not in listed and "template1" not in listed
    assert all(drv.exists(n) for n in ODD_NAMES) and not drv.exists("rbt missing") and not drv.exists("-H")
    engine = pg_engine(repositories=ODD_NAMES)
    result = engine.run()
    assert result["result"] == "ok", result
    for index, name in enumerate(ODD_NAMES):
        res = result["repositories"][name]
        assert res["data_file_path"].endswith(".dump")
        assert os.path.dirname(res["data_file_path"]).endswith("/" + encode_name(name))
        with open(res["data_file_path"], "rb") as handle:
            assert handle.read(5) == b"PGDMP"
        copy = pg_dbs(name + " copy")
        pg.drop_db(copy)
        done = engine.import_backup(res["backup"], repository=copy)
        assert done["changed"] and rows(copy) == rows(name) == (str(index + 1), str((index + 1) * (index + 2) // 2))
    assert os.path.isdir(str(destination))
    asides = {a for n in ODD_NAMES for a in K.aside_names(n + " copy")}  # this test's own (tests run in parallel)
    assert not asides & set(pg.database_names())


def test_all_leaves_out_postgres_and_templates(pg_dbs, pg_engine):
    pg_dbs("rbt all one")
    chosen = engine_mod.selection(pg_engine().settings, server().list_repositories())
    assert "rbt all one" in chosen["covered"]
    assert "postgres" not in chosen["covered"] and "postgres" in chosen["not_covered"]
    named = engine_mod.selection(pg_engine(repositories=["postgres"]).settings, server().list_repositories())
    assert named["covered"] == ["postgres"]


def test_content_hash_ignores_dump_times_and_names(pg_dbs, tmp_path):
    pg_dbs("rbt hash", TABLE % 50)
    drv = server()
    first, second = str(tmp_path / "1.dump"), str(tmp_path / "2.dump")
    drv.export("rbt hash", first, "keep_connections")
    time.sleep(1.1)
    drv.export("rbt hash", second, "keep_connections")
    assert drv.content_hash(first) == drv.content_hash(second) == drv.live_content_hash("rbt hash")
    drv.restore(first, pg_dbs("rbt hash other"))
    assert drv.live_content_hash("rbt hash other") == drv.content_hash(first)
    pg.psql("UPDATE t SET v = 'changed' WHERE n = 7;", db="rbt hash")
    assert drv.live_content_hash("rbt hash") != drv.content_hash(first)


def test_import_same_backup_again_is_unchanged(pg_dbs, pg_engine):
    pg_dbs("rbt again", TABLE % 10)
    engine = pg_engine(repositories=["rbt again"])
    backup = engine.run()["repositories"]["rbt again"]["backup"]
    done = engine.import_backup(backup)
    assert done["changed"] is False and done["before"]["exists"]
    pg.psql("DELETE FROM t WHERE n > 5;", db="rbt again")
    with pytest.raises(RepositoryError, match="exists; add --force"):
        engine.import_backup(backup)
    assert engine.import_backup(backup, force=True)["replaced"] is True
    assert rows("rbt again") == ("10", "55")


def test_dump_that_claims_success_but_writes_nothing_fails(pg_dbs, pg_engine, tmp_path, monkeypatch):
    pg_dbs("rbt empty dump", TABLE % 3)
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    real = K.tool
    monkeypatch.setattr(K, "tool", lambda name: str(fake) if name == "pg_dump" else real(name))
    engine = pg_engine(repositories=["rbt empty dump"])
    result = engine.run()
    res = result["repositories"]["rbt empty dump"]
    assert result["result"] == "failed" and "wrote no archive that pg_restore reads whole" in res["error"]
    assert engine.store.backups("rbt empty dump") == []
    assert engine.status()["repositories"]["rbt empty dump"]["last"]["error"] == res["error"]


def test_verify_file_refuses_foreign_and_truncated(tmp_path, pg_dbs):
    pg_dbs("rbt verify", TABLE % 2000)
    good = str(tmp_path / "good.dump")
    server().export("rbt verify", good, "keep_connections")
    K.PostgresqlServer.verify_file(good)
    foreign = tmp_path / "foreign.dump"
    foreign.write_bytes(b"-- plain SQL\n")
    with pytest.raises(BackupError, match="PGDMP"):
        K.PostgresqlServer.verify_file(str(foreign))
    cut = tmp_path / "cut.dump"
    cut.write_bytes(Path(good).read_bytes()[:60])
    with pytest.raises(BackupError, match="cannot be read whole by pg_restore"):
        K.PostgresqlServer.verify_file(str(cut))


def test_globals_without_passwords(tmp_path):
    target = str(tmp_path / "globals.sql")
    server().export_globals(target)
    text = Path(target).read_text()
    assert "CREATE ROLE %s;" % pg.CLIENT in text and "PASSWORD" not in text


# -- keep_connections: pgbench overlaps the export -----------------------------------------------

def test_keep_connections_snapshot_under_pgbench(pg_dbs, pg_engine):
    name = pg_dbs("rbt bench")
    pg.run([pg.PGBIN + "/pgbench", "-q", "-i", "-s", "1", name], user="postgres", cwd="/")
    bench = subprocess.Popen([pg.PGBIN + "/pgbench", "-n", "-c", "4", "-T", "8", name], user="postgres", cwd="/",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pg.wait_for(lambda: pg.pgbench_sums(name)[4] > 100)
        result = pg_engine(repositories=[name]).run()
        assert bench.poll() is None, "pgbench must run until after the export"
        assert result["result"] == "ok", result
        assert result["repositories"][name]["sessions_ended"] == 0
    finally:
        out, err = bench.communicate(timeout=30)
    assert bench.returncode == 0, err
    copy = pg_dbs("rbt bench restored")
    pg.drop_db(copy)
    server().restore(result["repositories"][name]["data_file_path"], copy)
    accounts, branches, tellers, history, count = pg.pgbench_sums(copy)
    assert count > 100 and accounts == branches == tellers == history
    assert pg.pgbench_sums(name)[4] > count  # pgbench went on writing after the snapshot


# -- disconnect --------------------------------------------------------------------------------------

def test_disconnect_keeps_clients_out_and_lets_them_back(pg_dbs, pg_engine, monkeypatch):
    name = pg_dbs("rbt dis'connect", TABLE % 100)
    pg.psql('ALTER DATABASE :"n" CONNECTION LIMIT 7;', n=name)
    idle, busy = pg.client_session(name), pg.client_session(name, busy=True)
    seen = {}
    try:
        pg.wait_for(lambda: pg.client_sessions(name) == 2)
        real_dump = K.PostgresqlServer._dump

        def watching_dump(self, db, target, facts=True):
            # Runs in the engine's process (as postgres): it reports through a file.
            Path(report).write_text(json.dumps({
                "sessions": pg.client_sessions(db), "connect": pg.client_can_connect(db),
                "limit": self.connection_limit(db), "pending": os.listdir(engine.state_dir + "/pending")}))
            return real_dump(self, db, target, facts)
        monkeypatch.setattr(K.PostgresqlServer, "_dump", watching_dump)
        engine = pg_engine(repositories=[name], in_use="disconnect")
        report = os.path.join(engine.state_dir, "seen.json")
        result = engine.run()
        seen.update(json.loads(Path(report).read_text()))
    finally:
        for proc in (idle, busy):
            proc.kill()
            proc.communicate()
    assert result["result"] == "ok", result
    assert seen["sessions"] == 0 and seen["limit"] == 0 and seen["connect"][0] is False
    assert "too many connections" in seen["connect"][1]
    assert seen["pending"] == [encode_name(name) + ".json"]
    assert result["repositories"][name]["sessions_ended"] == 2
    manifest = json.loads(Path(result["repositories"][name]["backup"]).read_text())
    assert manifest["sessions_ended"] == 2 and manifest["in_use"] == "disconnect"
    assert server().connection_limit(name) == 7
    assert pg.client_can_connect(name)[0]
    assert engine.status()["pending_repairs"] == []


def test_disconnect_restores_unlimited_exactly(pg_dbs, pg_engine):
    name = pg_dbs("rbt unlimited", TABLE % 5)
    result = pg_engine(repositories=[name], in_use="disconnect").run()
    assert result["result"] == "ok" and result["repositories"][name]["sessions_ended"] == 0
    assert server().connection_limit(name) == -1


CHILD = r"""
import dataclasses, json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.reposerver.backup.plugins.module_utils import engine, layout, settings
job = json.loads(sys.argv[2])
eng = engine.Engine(settings.validate(job["settings"]), layout.Paths(**job["paths"]), host=job["host"])
if job["op"] == "export":
    eng.export(job["names"])
else:
    eng.import_backup(job["backup"], repository=job["repository"], force=True)
"""


def start_child(op, paths, raw, **job):
    job.update(op=op, settings=raw, paths=dataclasses.asdict(paths), host=HOST)
    return subprocess.Popen([sys.executable, "-c", CHILD, COLLECTIONS, json.dumps(job)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_group_during(child, program, connected_to=None):
    """SIGKILL the child's process group while it runs ``program`` (connected to that database)."""
    def busy():
        return pg.group_has(child.pid, program) and (
            connected_to is None or int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = :'n';",
                                                n=connected_to)[0][0]) > 0)
    try:
        pg.wait_for(lambda: busy() or child.poll() is not None, seconds=60, step=0.01)
        assert child.poll() is None, child.communicate()
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.communicate()


def test_killed_disconnect_export_is_repaired_first(pg_dbs, pg_engine, paths, destination):
    name = pg_dbs("rbt killed export")
    pg.run([pg.PGBIN + "/pgbench", "-q", "-i", "-s", "5", name], user="postgres", cwd="/")
    pg.psql('ALTER DATABASE :"n" CONNECTION LIMIT 7;', n=name)
    raw = {"kind": "postgresql", "destination": str(destination), "repositories": [name], "in_use": "disconnect"}
    kill_group_during(start_child("export", paths, raw, names=[name]), "pg_dump")
    engine = pg_engine(repositories=[name], in_use="disconnect")
    # The run died while clients were kept out: they still are, and status says why, read only.
    assert server().connection_limit(name) == 0 and not pg.client_can_connect(name)[0]
    status = engine.status()
    assert status["pending_repairs"] == [encode_name(name) + ".json"]
    assert server().connection_limit(name) == 0 and engine.store.backups(name) == []
    result = engine.export([name])
    assert result["repaired"] == [name] and result["result"] == "ok", result
    assert server().connection_limit(name) == 7 and pg.client_can_connect(name)[0]
    assert engine.status()["pending_repairs"] == []
    assert len(engine.store.backups(name)) == 1


def test_simulated_crash_repaired_by_run(pg_dbs, pg_engine):
    name = pg_dbs("rbt crash", TABLE % 3)
    engine = pg_engine(repositories=[name])
    pg.AsPostgres(engine.server.pending).write(name, {"kind": "postgresql", "action": "connection_limit",
                                                      "repository": name, "connection_limit": 3})
    server().set_connection_limit(name, 0)
    assert engine.status()["pending_repairs"] and server().connection_limit(name) == 0
    result = engine.run()
    assert result["repaired"] == [name] and result["result"] == "ok"
    assert server().connection_limit(name) == 3


# -- server stopped ------------------------------------------------------------------------------------

def test_server_stopped_fails_per_repository_and_publishes_nothing(pg_dbs, pg_engine):
    names = [pg_dbs("rbt down one", TABLE % 4), pg_dbs("rbt down two", TABLE % 5)]
    engine = pg_engine(repositories=names)
    assert engine.run()["result"] == "ok"
    before = {n: engine.store.backups(n) for n in names}
    try:
        pg.stop_cluster()
        result = engine.run()
        status = engine.status()
    finally:
        pg.start_cluster()
    assert result["result"] == "failed"
    for name in names:
        res = result["repositories"][name]
        assert res["result"] == "failed" and "cannot be reached" in res["error"]
        assert engine.store.backups(name) == before[name]
        for manifest in before[name]:
            check_data(manifest)
    assert status["server_reachable"] is False
    assert not [e for n in names for e in os.listdir(engine.store.repo_dir(n)) if e.startswith(".tmp-")]
    again = engine.run()
    assert again["result"] == "ok" and all(len(engine.store.backups(n)) == 2 for n in names)


# -- restore ---------------------------------------------------------------------------------------------

def test_restore_swaps_over_a_connected_database(pg_dbs, tmp_path):
    name = pg_dbs("rbt swap", TABLE % 10)
    dump = str(tmp_path / "a.dump")
    drv = server()
    drv.export(name, dump, "keep_connections")
    pg.psql("DELETE FROM t; ALTER DATABASE :\"n\" CONNECTION LIMIT 9;", db=name, n=name)
    client = pg.client_session(name)
    try:
        pg.wait_for(lambda: pg.client_sessions(name) == 1)
        drv.restore(dump, name)
    finally:
        client.kill()
        client.communicate()
    assert rows(name) == ("10", "55") and drv.connection_limit(name) == 9
    assert not set(K.aside_names(name)) & set(pg.database_names())


def test_failed_restore_leaves_database_untouched(pg_dbs, tmp_path):
    name = pg_dbs("rbt keep", TABLE % 10)
    other = pg_dbs("rbt other", "CREATE ROLE rbt_gone; CREATE TABLE u (x int); ALTER TABLE u OWNER TO rbt_gone;")
    dump = str(tmp_path / "o.dump")
    drv = server()
    drv.export(other, dump, "keep_connections")
    pg.psql("DROP TABLE u; DROP ROLE rbt_gone;", db=other)  # the owner the dump names no longer exists
    with pytest.raises(RepositoryError, match="repository is unchanged"):
        drv.restore(dump, name)
    assert rows(name) == ("10", "55")
    assert not set(K.aside_names(name)) & set(pg.database_names())


def test_restore_killed_midway_keeps_database_and_next_cleans_up(pg_dbs, pg_engine, paths, destination):
    source = pg_dbs("rbt big")
    pg.run([pg.PGBIN + "/pgbench", "-q", "-i", "-s", "5", source], user="postgres", cwd="/")
    engine = pg_engine(repositories=[source])
    backup = engine.run()["repositories"][source]["backup"]
    name = pg_dbs("rbt victim", TABLE % 10)
    raw = {"kind": "postgresql", "destination": str(destination)}
    scratch = K.aside_names(name)[0]
    kill_group_during(start_child("import", paths, raw, backup=backup, repository=name), "pg_restore", scratch)
    assert rows(name) == ("10", "55")
    assert scratch in pg.database_names() and scratch not in server().list_repositories()
    done = engine.import_backup(backup, repository=name, force=True)
    assert done["replaced"] and scratch not in pg.database_names()
    assert pg.pgbench_sums(name) == pg.pgbench_sums(source)
