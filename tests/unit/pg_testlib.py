# -*- coding: utf-8 -*-
"""Helpers for the PostgreSQL tests: a real Debian cluster (15/main), real clients, no mock.

The cluster is as Debian installs it: no superuser role but ``postgres``, no
role ``root`` (``ensure_cluster`` drops one an older test run created).  The
tests' own SQL runs as the OS user ``postgres`` (peer authentication), and the
engine reaches the cluster the way it does on a real host: as its run-as user
``postgres``, whoever started it (``hand_over`` gives that user the folders the
role would give it).  The ordinary role CLIENT (no superuser) logs in over TCP
with a password: it plays the repository's clients.  Test databases start with
``rbt``.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import privilege, settings
from ansible_collections.reposerver.backup.plugins.module_utils.kind_postgresql import aside_names
from repobackup_testlib import HOST, give_tmp_to

CLUSTER = ("15", "main")
PGBIN = "/usr/lib/postgresql/15/bin"
CLIENT = "rbt_client"
CLIENT_PASSWORD = "rbt-client-pw"


def run(args, check=True, **kwargs):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=check, **kwargs)


def cluster_online() -> bool:
    out = run(["pg_lsclusters", "--no-header"]).stdout.decode()
    return any(line.split()[:2] == list(CLUSTER) and "online" in line for line in out.splitlines())


def wait_ready(seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if run([PGBIN + "/pg_isready", "-q"], check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("PostgreSQL %s/%s did not become ready" % CLUSTER)


def start_cluster() -> None:
    if not cluster_online():
        run(["pg_ctlcluster", CLUSTER[0], CLUSTER[1], "start"])
    wait_ready()


def stop_cluster() -> None:
    run(["pg_ctlcluster", CLUSTER[0], CLUSTER[1], "stop", "-m", "fast"])


def ensure_cluster() -> None:
    start_cluster()
    if psql("SELECT 1 FROM pg_roles WHERE rolname = 'root';"):
        psql("REASSIGN OWNED BY root TO postgres;")
        psql("DROP OWNED BY root;")
        psql("DROP ROLE root;")
    if not psql("SELECT 1 FROM pg_roles WHERE rolname = '%s';" % CLIENT):
        psql("CREATE ROLE %s;" % CLIENT)
    psql("ALTER ROLE %s LOGIN NOSUPERUSER PASSWORD '%s';" % (CLIENT, CLIENT_PASSWORD))


def psql(sql: str, db: str = "postgres", **variables) -> list:
    """Rows (tuples of text) of ``sql`` run as ``postgres``; ``variables`` as psql -v (use :'x' / :"x")."""
    args = [PGBIN + "/psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
    for key, value in variables.items():
        args += ["-v", "%s=%s" % (key, value)]
    args += ["--dbname=dbname='%s'" % db.replace("\\", "\\\\").replace("'", "\\'"), "-f", "-"]
    out = run(args, input=sql.encode(), env=dict(os.environ, PGCLIENTENCODING="UTF8"), user="postgres",
              cwd="/").stdout.decode()
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def database_names() -> list:
    return [r[0] for r in psql("SELECT datname FROM pg_database")]


def create_db(name: str, sql: str = "") -> None:
    psql('CREATE DATABASE :"n";', n=name)
    psql('GRANT CONNECT, TEMP ON DATABASE :"n" TO %s;' % CLIENT, n=name)
    if sql:
        psql(sql, db=name)


def drop_db(name: str) -> None:
    psql('DROP DATABASE IF EXISTS :"n" WITH (FORCE);', n=name)


def client_env() -> dict:
    return dict(os.environ, PGPASSWORD=CLIENT_PASSWORD, PGCONNECT_TIMEOUT="5", PGCLIENTENCODING="UTF8")


def client_conninfo(db: str) -> str:
    return "host=127.0.0.1 port=5432 user=%s dbname='%s'" % (CLIENT, db.replace("\\", "\\\\").replace("'", "\\'"))


def client_session(db: str, busy: bool = False) -> subprocess.Popen:
    """A live psql session of the ordinary role: idle (waits on stdin) or busy (a long query)."""
    proc = subprocess.Popen([PGBIN + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", client_conninfo(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=client_env())
    proc.stdin.write(b"SELECT 'ready';\n" + (b"SELECT pg_sleep(120);\n" if busy else b""))
    proc.stdin.flush()
    return proc


def client_can_connect(db: str) -> tuple:
    proc = run([PGBIN + "/psql", "-X", "-At", "-c", "SELECT 1", client_conninfo(db)], check=False,
               env=client_env())
    return proc.returncode == 0, proc.stderr.decode()


def client_sessions(db: str) -> int:
    rows = psql("SELECT count(*) FROM pg_stat_activity WHERE datname = :'n' AND usename = '%s';" % CLIENT, n=db)
    return int(rows[0][0])


def wait_for(predicate, seconds: float = 20, step: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met within %s s" % seconds)


def group_has(pgid: int, program: str) -> bool:
    """A process of group ``pgid`` runs ``program`` (by /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                argv0 = handle.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and os.path.basename(argv0) == program:
            return True
    return False


def pgbench_sums(db: str) -> tuple:
    row = psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches),"
               " (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(delta) FROM pgbench_history),"
               " (SELECT count(*) FROM pgbench_history);", db=db)[0]
    return tuple(int(v or 0) for v in row)


@pytest.fixture
def pg_dbs():
    """``create(name, sql="")`` makes a test database; all are dropped afterwards, with any restore leftovers."""
    made = []

    def create(name, sql=""):
        drop_db(name)
        create_db(name, sql)
        made.append(name)
        return name
    create.made = made
    yield create
    start_cluster()
    for name in made:
        for each in (name,) + aside_names(name):
            drop_db(each)


def for_postgres(tmp_path, paths, destination) -> None:
    """tmp_path belongs to ``postgres`` (the engine and the driver write there as that user), with the
    state folder, log file and destination handed over as the role would."""
    give_tmp_to(tmp_path, paths, destination, "postgres")


class AsPostgres:
    """A driver whose every method runs as the OS user ``postgres`` (the engine's run-as user), as the engine
    itself would call it: the tests run as root, and the cluster has no role ``root``."""

    def __init__(self, driver):
        self._driver = driver

    def __getattr__(self, name):
        attr = getattr(self._driver, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return privilege.call_as("postgres", attr, *args, **kwargs)
        return call


def cluster_fixtures(scope: str = "module") -> tuple:
    """The autouse fixtures of a PostgreSQL test module: the cluster up (and started again after, should a test
    have stopped it), and tmp_path usable by postgres.

    In the module: ``cluster, postgres_owns_tmp = pg.cluster_fixtures()``.
    """

    @pytest.fixture(scope=scope, autouse=True)
    def cluster():
        ensure_cluster()
        yield
        start_cluster()

    @pytest.fixture(autouse=True)
    def postgres_owns_tmp(tmp_path, paths, destination):
        for_postgres(tmp_path, paths, destination)

    return cluster, postgres_owns_tmp


def engine_fixture():
    """The ``pg_engine`` fixture: ``make(**options)`` gives an Engine of a postgresql server with these options.

    In the module: ``pg_engine = pg.engine_fixture()``.
    """

    @pytest.fixture
    def pg_engine(destination, paths):
        def make(**options):
            raw = {"kind": "postgresql", "destination": str(destination)}
            raw.update(options)
            return engine_mod.Engine(settings.validate(raw), paths, host=HOST)
        return make

    return pg_engine
