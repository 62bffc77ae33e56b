# -*- coding: utf-8 -*-
"""PostgreSQL under overlapping servers and odd databases, against the real 15/main cluster (no mock).

- Two servers on one cluster, both with ``disconnect``, overlapping on one
  database: the original connection limit survives, the second run waits for
  the first (or fails with one sentence), and no run ends another run's pg_dump.
  The overlap is made deterministic by a table lock the test holds: pg_dump
  waits for it inside the export.
- Databases that pg_dump can back up are backed up (SQL_ASCII with bytes that
  are not UTF-8); databases nobody can connect to are left out of ``all`` and
  named in status; a name with the byte 0x1F (psql's field separator here)
  stays one name.

The engine and the drivers run as the OS user ``postgres`` (peer
authentication), as on a real host; database names start with ``rbt hostile``.
"""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import kind_postgresql as K
from ansible_collections.reposerver.backup.plugins.module_utils import privilege, report, settings
from ansible_collections.reposerver.backup.plugins.module_utils.errors import RepoBackupError

import pg_testlib as pg
from pg_testlib import pg_dbs  # noqa: F401  pylint: disable=unused-import
from repobackup_testlib import HOST

pytestmark = pytest.mark.skipif(not os.path.isdir(pg.PGBIN) or os.geteuid() != 0,
                                reason="needs Debian's postgresql-15 and root")

TABLE = ("CREATE TABLE t (n int PRIMARY KEY, v text);"
         " INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g;")
OPTIONS = settings.validate({"kind": "postgresql", "destination": "/x"}).options


@pytest.fixture(scope="module", autouse=True)
def cluster():
    pg.ensure_cluster()
    yield
    pg.start_cluster()


@pytest.fixture
def work(tmp_path, paths, destination):
    """tmp_path, the state folder and the destination belong to ``postgres``, as the role would leave them."""
    pg.for_postgres(tmp_path, paths, destination)
    return tmp_path


@pytest.fixture
def pg_engine(work, paths, destination):
    def make(**options):
        raw = {"kind": "postgresql", "destination": str(destination)}
        raw.update(options)
        return engine_mod.Engine(settings.validate(raw), paths, host=HOST)
    return make


def as_postgres(fn, *args):
    """``fn(*args)`` in a child that is the OS user ``postgres``: how the engine reaches the cluster."""
    return privilege.call_as("postgres", fn, *args)


class Recorder:
    """The engine's pending-repair store, in memory: every record a driver writes, in order."""

    def __init__(self):
        self.written = []
        self.cleared = []

    def write(self, name, record):
        self.written.append(dict(record))

    def clear(self, name):
        self.cleared.append(name)


class Holder:
    """A superuser session (it gets in at CONNECTION LIMIT 0) holding ACCESS EXCLUSIVE on table ``t``:
    every pg_dump of the database waits for it.  Not the engine's: a disconnect run may end it."""

    def __init__(self, name):
        conninfo = "dbname=%s application_name=rbt_hold" % K.quote_conninfo(name)
        self.proc = subprocess.Popen([pg.PGBIN + "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", conninfo],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.proc.stdin.write(b"BEGIN;\nLOCK TABLE t IN ACCESS EXCLUSIVE MODE;\nSELECT 'held';\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line == b"held\n", self.proc.stderr.read()

    def release(self):
        """End the transaction (psql reads the end of its input and quits): the lock is gone."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(60)
        self.proc.stdout.close()
        self.proc.stderr.close()


def dump_waiting(name) -> bool:
    """The engine's pg_dump of ``name`` waits for a lock (the holder's)."""
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = :'n' AND application_name = 'repobackup'"
                       " AND wait_event_type = 'Lock';", n=name)[0][0]) > 0


def waits_for_cluster_lock(name) -> bool:
    """A session waits for an advisory lock keyed by the database's OID (the low 32 bits of the key)."""
    return int(pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                       " AND objid = (SELECT oid FROM pg_database WHERE datname = :'n');", n=name)[0][0]) > 0


def in_thread(fn, *args):
    out = {}

    def body():
        try:
            out["result"] = fn(*args)
        except RepoBackupError as exc:
            out["error"] = str(exc)
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.out = out
    return thread


def archive_ok(path) -> bool:
    try:
        K.PostgresqlServer.verify_file(path)
    except RepoBackupError:
        return False
    return True


# -- two servers, one cluster, one database ----------------------------------------------------------

def both_disconnect(name, folder, second_wait):
    """Server 1 is held inside its pg_dump; server 2 (disconnect_wait ``second_wait``) starts then."""
    first, second = K.PostgresqlServer(OPTIONS, wait=60), K.PostgresqlServer(OPTIONS, wait=second_wait)
    first.pending, second.pending = Recorder(), Recorder()
    holder = {}
    real_dump = first._dump

    def held_dump(db, target, facts=True):
        holder["session"] = Holder(db)  # after the first run ended the sessions, before its pg_dump starts
        return real_dump(db, target, facts)
    first._dump = held_dump
    one = in_thread(first.export, name, folder + "/1.dump", "disconnect")
    pg.wait_for(lambda: dump_waiting(name) or not one.is_alive(), seconds=60)
    seen = {"first_held": one.is_alive(), "limit_during_first": first.connection_limit(name)}
    two = in_thread(second.export, name, folder + "/2.dump", "disconnect")
    if second_wait > 5:
        pg.wait_for(lambda: waits_for_cluster_lock(name) or not two.is_alive(), seconds=60)
    else:
        two.join(60)
    seen.update(second_waited=two.is_alive() or "error" in two.out, first_still_held=dump_waiting(name))
    holder["session"].release()
    one.join(120)
    two.join(120)
    seen.update(first=one.out, second=two.out, limit=first.connection_limit(name),
                first_records=first.pending.written, second_records=second.pending.written,
                second_cleared=second.pending.cleared,
                first_archive=archive_ok(folder + "/1.dump"), second_archive=archive_ok(folder + "/2.dump"))
    return seen


def ended(outcome: dict):
    """The sessions an export ended, from what it returned ("no result" when it failed)."""
    return outcome.get("result", {}).get("sessions_ended", "no result")


@pytest.mark.parametrize("original", [7, -1])
def test_overlapping_disconnect_runs_keep_the_original_limit(pg_dbs, work, original):
    name = pg_dbs("rbt hostile overlap %d" % original, TABLE)
    pg.psql('ALTER DATABASE :"n" CONNECTION LIMIT %d;' % original, n=name)
    seen = as_postgres(both_disconnect, name, str(work), 120)
    assert seen["first_held"] and seen["limit_during_first"] == 0
    assert seen["second_waited"] and seen["first_still_held"]  # the second run did not end the first's pg_dump
    assert ended(seen["first"]) == 0, seen["first"]
    assert "result" in seen["second"], seen["second"]
    # both manifests record the limit from before any run set it to 0
    assert [seen[run]["result"]["database"]["connection_limit"] for run in ("first", "second")] == [original] * 2
    assert seen["first_archive"] and seen["second_archive"]
    assert seen["limit"] == original
    # Each server's pending-repair record holds the true original, and is cleared after.
    assert [r["connection_limit"] for r in seen["first_records"]] == [original]
    assert [r["connection_limit"] for r in seen["second_records"]] == [original]
    assert seen["second_cleared"] == [name]
    assert pg.client_can_connect(name)[0]


def test_second_disconnect_run_gives_up_after_disconnect_wait(pg_dbs, work):
    name = pg_dbs("rbt hostile give up", TABLE)
    pg.psql('ALTER DATABASE :"n" CONNECTION LIMIT 7;', n=name)
    seen = as_postgres(both_disconnect, name, str(work), 1)
    assert seen["first_held"] and seen["first_still_held"]
    error = seen["second"].get("error", "")
    assert "another run" in error and "disconnect_wait" in error and name in error, seen["second"]
    assert seen["second_records"] == []  # it never touched the limit
    assert ended(seen["first"]) == 0 and seen["first_archive"]
    assert seen["limit"] == 7


def disconnect_during_other_dump(name, folder):
    """Server 2's keep_connections pg_dump is running (held) when server 1's disconnect ends sessions."""
    first, second = K.PostgresqlServer(OPTIONS, wait=60), K.PostgresqlServer(OPTIONS, wait=60)
    first.pending = Recorder()
    holder = Holder(name)
    try:
        two = in_thread(second.export, name, folder + "/2.dump", "keep_connections")
        pg.wait_for(lambda: dump_waiting(name) or not two.is_alive(), seconds=60)
        try:
            first_out = {"result": first.export(name, folder + "/1.dump", "disconnect")}
        except RepoBackupError as exc:
            first_out = {"error": str(exc)}
        two.join(120)
    finally:
        holder.release()
    return {"first": first_out, "second": two.out, "limit": first.connection_limit(name),
            "first_archive": archive_ok(folder + "/1.dump"), "second_archive": archive_ok(folder + "/2.dump")}


def test_disconnect_never_ends_another_runs_dump(pg_dbs, work):
    name = pg_dbs("rbt hostile other dump", TABLE)
    pg.psql('ALTER DATABASE :"n" CONNECTION LIMIT 7;', n=name)
    seen = as_postgres(disconnect_during_other_dump, name, str(work))
    assert ended(seen["first"]) == 1, seen  # the holder, a client
    assert ended(seen["second"]) == 0, seen
    assert seen["first_archive"] and seen["second_archive"] and seen["limit"] == 7


def test_repair_of_a_stale_record_leaves_a_limit_set_since(pg_dbs):
    """A record a run left when it crashed while another run's disconnect was active holds 0: putting it
    back after the first run's repair would lock clients out for good."""
    name = pg_dbs("rbt hostile stale", TABLE)
    pg.psql('ALTER DATABASE :"n" CONNECTION LIMIT 7;', n=name)
    drv = pg.AsPostgres(K.PostgresqlServer(OPTIONS, wait=5))
    drv.repair({"kind": "postgresql", "action": "connection_limit", "repository": name, "connection_limit": 0})
    assert drv.connection_limit(name) == 7
    pg.psql('ALTER DATABASE :"n" CONNECTION LIMIT 0;', n=name)
    drv.repair({"kind": "postgresql", "action": "connection_limit", "repository": name, "connection_limit": 7})
    assert drv.connection_limit(name) == 7


# -- databases pg_dump can back up, and those nobody can connect to -------------------------------------

def test_sql_ascii_database_with_bytes_that_are_not_utf8(pg_dbs, pg_engine, work):
    name = "rbt hostile ascii"
    pg.drop_db(name)
    pg.psql("CREATE DATABASE :\"n\" TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C';", n=name)
    pg_dbs.made.append(name)
    pg.psql("CREATE TABLE t (v text); INSERT INTO t VALUES (E'\\xff\\xfe caf\\xe9');", db=name)
    result = pg_engine(repositories=[name]).run()
    assert result["result"] == "ok", result
    path = result["repositories"][name]["data_file_path"]
    sql = pg.run([pg.PGBIN + "/pg_restore", "--file=-", path]).stdout
    assert b"\xff\xfe caf\xe9" in sql


def test_database_without_connections_is_left_out_of_all_and_named(pg_dbs, pg_engine):
    closed = pg_dbs("rbt hostile closed", TABLE)
    pg.psql('ALTER DATABASE :"n" ALLOW_CONNECTIONS false;', n=closed)
    engine = pg_engine()
    plan = engine.plan()
    assert closed not in plan["export"]
    status = engine.status()
    assert closed not in status["covered"] and closed in status["not_covered"]
    assert closed in status["not_connectable"]
    shown = [line for line in report.status_text(status).splitlines() if line.startswith("closed ")]
    assert len(shown) == 1 and closed in shown[0]
    named = pg_engine(repositories=[closed]).status()  # named explicitly: still tried, and still flagged
    assert named["covered"] == [closed] and closed in named["not_connectable"]


def test_names_with_the_field_separator_and_line_breaks(pg_dbs, pg_engine):
    names = [pg_dbs("rbt hostile a\x1fb", TABLE), pg_dbs("rbt hostile line\nbreak|x\tz", TABLE)]
    listed = pg.AsPostgres(K.PostgresqlServer(OPTIONS)).list_repositories()
    assert set(names) <= set(listed) and "rbt hostile a" not in listed and "b" not in listed
    result = pg_engine(repositories=names).run()
    assert result["result"] == "ok", result
    assert sorted(result["repositories"]) == sorted(names)
