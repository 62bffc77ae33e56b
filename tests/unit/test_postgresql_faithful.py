# -*- coding: utf-8 -*-
"""Faithful PostgreSQL restores and restore checks, against real PostgreSQL 15 clusters (no mock).

A database with an owner, an ACL that denies PUBLIC and has a grant made by a role other than the
owner, ALTER DATABASE and ALTER ROLE ... IN DATABASE settings, a comment, a connection limit and
LATIN1/C encoding is backed up, dropped together with its roles, and imported onto the same cluster
and onto a fresh one (a throwaway cluster made here with pg_createcluster, where nothing but the
backup and its globals exists).  pg_database, pg_db_role_setting, shobj_description, the roles and a
schema and data dump are compared.  Names are unique (``rbtf``): the cluster is shared with the other
PostgreSQL tests, which run in the same group, one after another.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import kind_postgresql as K
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError, RepositoryError
from ansible_collections.reposerver.backup.plugins.module_utils.errors import RestoreCheckFailed
from ansible_collections.reposerver.backup.plugins.module_utils.layout import dump_json

import pg_testlib as pg
from pg_testlib import pg_dbs  # noqa: F401  pylint: disable=unused-import

pytestmark = pytest.mark.skipif(not os.path.isdir(pg.PGBIN) or os.geteuid() != 0,
                                reason="needs Debian's postgresql-15 and root")

FRESH = ("15", "rbt_fresh")
ROLES = ("rbtf_owner", "rbtf_reader", "rbtf_app")
DB = "rbtf props"
LIMIT = 7


cluster, postgres_owns_tmp = pg.cluster_fixtures("module")


def free_port() -> int:
    for port in range(5440, 5500):
        with socket.socket() as probe:
            socket_file = "/var/run/postgresql/.s.PGSQL.%d" % port
            if probe.connect_ex(("127.0.0.1", port)) != 0 and not os.path.exists(socket_file):
                return port
    raise RuntimeError("no free port for a throwaway cluster")


def drop_fresh() -> None:
    pg.run(["pg_dropcluster", "--stop", FRESH[0], FRESH[1]], check=False)


@pytest.fixture
def fresh():
    """A new, empty cluster 15/rbt_fresh on a free port (dropped afterwards): only postgres exists there."""
    drop_fresh()
    port = free_port()
    pg.run(["pg_createcluster", "--port", str(port), "--start-conf", "manual", FRESH[0], FRESH[1]])
    try:
        pg.run(["pg_ctlcluster", FRESH[0], FRESH[1], "start"])
        yield port
    finally:
        drop_fresh()


def q(sql: str, db: str = "postgres", port: int = 5432, **variables) -> list:
    """Rows of ``sql`` as postgres on the cluster at ``port``."""
    args = [pg.PGBIN + "/psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-p", str(port)]
    for key, value in variables.items():
        args += ["-v", "%s=%s" % (key, value)]
    args += ["--dbname=dbname='%s'" % db.replace("'", "\\'"), "-f", "-"]
    out = pg.run(args, input=sql.encode(), env=dict(os.environ, PGCLIENTENCODING="UTF8"), user="postgres",
                 cwd="/").stdout.decode()
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def drop_all(port: int = 5432, db: str = DB, roles=ROLES) -> None:
    q('DROP DATABASE IF EXISTS :"d" WITH (FORCE);', port=port, d=db)
    for role in reversed(roles):
        q('DROP ROLE IF EXISTS :"r";', port=port, r=role)


@pytest.fixture
def props_db():
    """DB with every database-level property, owned by rbtf_owner; its roles and it dropped afterwards."""
    drop_all()
    owner, reader, app = ROLES
    q("CREATE ROLE rbtf_owner LOGIN; CREATE ROLE rbtf_reader NOLOGIN;"
      " CREATE ROLE rbtf_app LOGIN CONNECTION LIMIT 3 CREATEDB; GRANT rbtf_reader TO rbtf_app;")
    q("CREATE DATABASE :\"d\" OWNER rbtf_owner TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'"
      " CONNECTION LIMIT %d;" % LIMIT, d=DB)
    q("REVOKE ALL ON DATABASE :\"d\" FROM PUBLIC;"
      " GRANT CONNECT ON DATABASE :\"d\" TO rbtf_reader;"
      " GRANT CONNECT, TEMPORARY ON DATABASE :\"d\" TO rbtf_app WITH GRANT OPTION;"
      " SET SESSION AUTHORIZATION rbtf_app; GRANT CONNECT ON DATABASE :\"d\" TO %s; RESET SESSION AUTHORIZATION;"
      " ALTER DATABASE :\"d\" SET search_path = '$user', public, 'Odd x';"
      " ALTER DATABASE :\"d\" SET work_mem = '5MB';"
      " ALTER ROLE rbtf_app IN DATABASE :\"d\" SET statement_timeout = '5s';"
      " COMMENT ON DATABASE :\"d\" IS 'the database''s comment';" % pg.CLIENT, d=DB)
    q("SET ROLE rbtf_owner;"
      " CREATE TABLE t (n int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'été ' || g FROM generate_series(1, 10) g;"
      " CREATE TABLE child (id int PRIMARY KEY, n int REFERENCES t(n)); INSERT INTO child VALUES (1, 1), (2, 2);"
      " CREATE VIEW v AS SELECT n FROM t WHERE n > 5; CREATE INDEX t_v ON t (v);"
      " GRANT SELECT ON t TO rbtf_reader;", db=DB)
    yield DB
    drop_all()


def state(db: str = DB, port: int = 5432) -> dict:
    """What a faithful restore must give back: the database's row, settings, comment, roles, schema and data."""
    row = q("SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider,"
            " datconnlimit, datacl::text, datallowconn, datistemplate, shobj_description(oid, 'pg_database')"
            " FROM pg_database WHERE datname = :'d';", port=port, d=db)
    settings_rows = q("SELECT coalesce(pg_get_userbyid(nullif(setrole, 0)), '-'), setconfig::text"
                      " FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = :'d')"
                      " ORDER BY 1;", port=port, d=db)
    roles = q("SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,"
              " rolconnlimit, rolbypassrls, (SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m"
              " JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid) FROM pg_roles r"
              " WHERE rolname LIKE 'rbtf\\_%' ORDER BY 1;", port=port)
    return {"database": row, "settings": settings_rows, "roles": roles,
            "schema": dump(db, port, "--schema-only"), "data": dump(db, port, "--data-only")}


def dump(db: str, port: int, what: str) -> str:
    out = pg.run([pg.PGBIN + "/pg_dump", what, "-p", str(port), "--dbname=dbname='%s'" % db.replace("'", "\\'")],
                 user="postgres", cwd="/").stdout.decode("latin-1")
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict")))


pg_engine = pg.engine_fixture()


def back_up(engine, db: str = DB) -> dict:
    result = engine.export([db])
    assert result["result"] == "ok", result
    assert result["globals"]["result"] == "ok"
    return engine.store.backups(db)[-1]


def rewrite_manifest(manifest: dict, change) -> None:
    """Edit a manifest as a person could, written the way the store writes manifests (it is not signed)."""
    path = manifest["manifest_path"]
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    change(doc)
    with open(path, "wb") as handle:
        handle.write(dump_json(doc))


def nothing_changed(before_dbs, port=5432):
    assert sorted(r[0] for r in q("SELECT datname FROM pg_database;", port=port)) == before_dbs


# -- faithful restores -----------------------------------------------------------------------------

@pytest.mark.parametrize("in_use", ["keep_connections", "disconnect"])
def test_properties_round_trip_on_the_same_cluster(props_db, pg_engine, in_use):
    before = state()
    engine = pg_engine(in_use=in_use)
    manifest = back_up(engine)
    recorded = manifest["database"]
    assert recorded["connection_limit"] == LIMIT  # under disconnect the dump saw 0: the limit before wins
    assert recorded["encoding"] == "LATIN1" and recorded["collate"] == "C" and set(ROLES) <= set(recorded["roles"])
    assert manifest["facts"]["tables"] == {"public.t": 10, "public.child": 2}
    assert "view public.v" in manifest["facts"]["objects"]
    assert manifest["dump_tool"] == "pg_dump" and re.fullmatch(r"15\.\d+", manifest["dump_tool_version"])
    assert manifest["server_version"].startswith("15.") and manifest["engine_version"]
    drop_all()
    done = engine.import_backup(latest_of=DB)
    assert done["changed"] and sorted(done["roles_created"]) == sorted(ROLES)
    assert state() == before


def test_properties_round_trip_onto_a_fresh_cluster(props_db, pg_engine, fresh):
    before = state()
    manifest = back_up(pg_engine(in_use="disconnect"))
    drop_all()
    there = pg_engine(postgresql_port=fresh)
    done = there.import_backup(manifest["manifest_path"])
    assert set(done["roles_created"]) == set(ROLES) | {pg.CLIENT}  # the grantee of a database grant, too
    assert state(port=fresh) == before
    assert q("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = :'r';", port=fresh, r=pg.CLIENT) == [("t",)]


def test_import_all_onto_a_fresh_cluster(props_db, pg_dbs, pg_engine, fresh):
    other = pg_dbs("rbtf other", "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 5);")
    before = state()
    engine = pg_engine()
    result = engine.export([DB, other])
    assert result["result"] == "ok"
    done = pg_engine(postgresql_port=fresh).import_all()
    assert done["result"] == "ok", done
    assert done["globals"]["result"] == "ok" and set(ROLES) <= set(done["globals"]["roles_created"])
    assert {n: r["result"] for n, r in done["repositories"].items()} == {DB: "ok", other: "ok"}
    assert state(port=fresh) == before
    assert q("SELECT count(*) FROM t;", db=other, port=fresh) == [("5",)]
    again = pg_engine(postgresql_port=fresh).import_all()  # the same content again: nothing to do
    assert again["result"] == "ok" and not again["changed"]
    assert {r["result"] for r in again["repositories"].values()} == {"unchanged"}


# -- refusals: one sentence, nothing changed ------------------------------------------------------

def test_missing_roles_refused_by_name_when_creating_is_off(props_db, pg_engine):
    engine = pg_engine()
    back_up(engine)
    drop_all()
    dbs = sorted(r[0] for r in q("SELECT datname FROM pg_database;"))
    planned = engine.import_backup(latest_of=DB, dry_run=True)  # check mode: what would be created, nothing is
    assert planned["changed"] and planned["roles_created"] == sorted(ROLES)
    with pytest.raises(RepositoryError, match="lacks: rbtf_app, rbtf_owner, rbtf_reader;"):
        engine.import_backup(latest_of=DB, dry_run=True, create_roles=False)
    nothing_changed(dbs)
    with pytest.raises(RepositoryError) as caught:
        engine.import_backup(latest_of=DB, create_roles=False)
    text = str(caught.value)
    assert "lacks: rbtf_app, rbtf_owner, rbtf_reader;" in text and text.endswith("nothing was changed.")
    assert text.count(". ") == 0
    nothing_changed(dbs)
    assert q("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'rbtf\\_%';") == [("0",)]


def test_encoding_or_locale_the_cluster_cannot_give_is_refused(props_db, pg_engine):
    engine = pg_engine()
    manifest = back_up(engine)
    rewrite_manifest(manifest, lambda d: d["database"].update(collate="xx_XX.ISO-8859-1", ctype="xx_XX.ISO-8859-1"))
    dbs = sorted(r[0] for r in q("SELECT datname FROM pg_database;"))
    roles = q("SELECT rolname FROM pg_roles ORDER BY 1;")
    with pytest.raises(RepositoryError) as caught:
        engine.import_backup(manifest["manifest_path"], repository="rbtf elsewhere")
    text = str(caught.value)
    assert "needs encoding LATIN1 with locale xx_XX.ISO-8859-1/xx_XX.ISO-8859-1, which the PostgreSQL server" in text
    assert text.endswith("nothing was changed.") and "\n" not in text
    nothing_changed(dbs)
    assert q("SELECT rolname FROM pg_roles ORDER BY 1;") == roles


def test_dump_newer_than_this_pg_restore_is_refused_naming_both(props_db, pg_engine, tmp_path):
    engine = pg_engine()
    manifest = back_up(engine)
    rewrite_manifest(manifest, lambda d: d.update(dump_tool_version="99.1"))
    dbs = sorted(r[0] for r in q("SELECT datname FROM pg_database;"))
    here = K.PostgresqlServer.tool_version("pg_restore")
    with pytest.raises(BackupError) as caught:
        engine.import_backup(manifest["manifest_path"], repository="rbtf newer", force=True)
    assert "written by pg_dump 99.1, which pg_restore %s on this host cannot read" % here in str(caught.value)
    nothing_changed(dbs)
    drv = K.PostgresqlServer(engine.settings.options)
    with pytest.raises(RestoreCheckFailed, match="pg_dump 99.1"):
        pg.privilege.call_as("postgres", drv.check_restorable, manifest["path"], engine.store.load(
            manifest["manifest_path"]))


# -- fail closed --------------------------------------------------------------------------------

def test_dump_that_pg_restore_cannot_read_whole_fails_and_prunes_nothing(pg_dbs, pg_engine, tmp_path, monkeypatch):
    name = pg_dbs("rbtf torn", "CREATE TABLE t (n int, v text);"
                  " INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;")
    engine = pg_engine(keep_last=1)
    first = engine.export([name])
    assert first["result"] == "ok"
    kept = engine.store.backups(name)
    # pg_dump writes a whole archive, then a byte in its last data block is changed: the table of contents
    # (what pg_restore --list reads) is intact, the data is not.
    torn = tmp_path / "pg_dump"
    torn.write_text("#!/bin/sh\n%s \"$@\" || exit $?\nfor a in \"$@\"; do case $a in --file=*) f=${a#--file=};; esac; done\n"
                    "size=$(stat -c %%s \"$f\")\nprintf '\\377\\377\\377\\377' | dd of=\"$f\" bs=1 seek=$((size - 40))"
                    " conv=notrunc status=none\n" % K.tool("pg_dump"))
    torn.chmod(0o755)
    real = K.tool
    monkeypatch.setattr(K, "tool", lambda tool_name: str(torn) if tool_name == "pg_dump" else real(tool_name))
    result = engine.export([name])
    error = result["repositories"][name]["error"]
    assert result["result"] == "failed" and "cannot be read whole by pg_restore" in error
    assert engine.store.backups(name) == kept  # nothing published, nothing pruned


# -- restore checks (what a drill calls) ---------------------------------------------------------------

def check(engine, manifest, data_file=None, **kwargs):
    drv = K.PostgresqlServer(engine.settings.options)
    loaded = engine.store.load(manifest["manifest_path"])
    return pg.privilege.call_as("postgres", drv.check_restorable, data_file or loaded["path"], loaded, **kwargs)


def scratch_dbs(port=5432) -> list:
    return [r[0] for r in q("SELECT datname FROM pg_database WHERE datname LIKE '.repobackup-scratch-%';", port=port)]


def test_check_restorable_passes_on_good_backups_here_and_on_a_drill_cluster(props_db, pg_engine, fresh):
    engine = pg_engine()
    manifest = back_up(engine)
    passed = check(engine, manifest)
    assert passed == ["restore", "properties", "amcheck", "row_counts", "objects"]
    assert scratch_dbs() == []
    # on another cluster: the roles must be there first (a drill never creates any)
    with pytest.raises(RestoreCheckFailed, match="lacks: .*rbtf_app, rbtf_owner, rbtf_reader; a drill never creates"):
        check(engine, manifest, target={"port": fresh})
    assert q("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'rbtf\\_%';", port=fresh) == [("0",)]
    q("CREATE ROLE rbtf_owner; CREATE ROLE rbtf_reader; CREATE ROLE rbtf_app; CREATE ROLE %s;" % pg.CLIENT,
      port=fresh)
    assert check(engine, manifest, target={"port": fresh, "host": "", "service": ""})[:1] == ["restore"]
    assert scratch_dbs(fresh) == [] and scratch_dbs() == []


def test_check_restorable_catches_an_altered_dump_with_its_manifest_rehashed(props_db, pg_engine, tmp_path):
    engine = pg_engine()
    manifest = back_up(engine)
    q("DELETE FROM child WHERE id = 2; DELETE FROM t WHERE n = 10;", db=DB)
    other = str(tmp_path / "other.dump")
    pg.privilege.call_as("postgres", K.PostgresqlServer(engine.settings.options)._dump, DB, other, False)
    shutil.copyfile(other, manifest["path"])
    digest = pg.run(["sha256sum", manifest["path"]]).stdout.split()[0].decode()
    rewrite_manifest(manifest, lambda d: d.update(sha256=digest, size=os.path.getsize(manifest["path"])))
    with pytest.raises(RestoreCheckFailed) as caught:
        check(engine, manifest)
    assert str(caught.value).startswith("Table public.child has 1 rows in the copy restored from ")
    assert str(caught.value).endswith("; the backup recorded 2.")
    assert scratch_dbs() == []
    # bytes changed inside a data block: the restore itself fails, and says so
    data = bytearray(open(other, "rb").read())
    data[-40:-36] = b"\xff\xff\xff\xff"
    with open(manifest["path"], "wb") as handle:
        handle.write(bytes(data))
    with pytest.raises(RestoreCheckFailed, match="cannot be read whole by pg_restore"):
        check(engine, manifest)
    assert scratch_dbs() == []


def test_check_restorable_names_a_missing_role_and_creates_none(props_db, pg_engine):
    engine = pg_engine()
    manifest = back_up(engine)
    q("REVOKE ALL ON t FROM rbtf_reader; REVOKE ALL ON DATABASE :\"d\" FROM rbtf_reader;", db=DB, d=DB)
    q("REVOKE rbtf_reader FROM rbtf_app; DROP ROLE rbtf_reader;")
    with pytest.raises(RestoreCheckFailed, match=r"lacks: rbtf_reader; a drill never creates roles\.$"):
        check(engine, manifest)
    assert q("SELECT count(*) FROM pg_roles WHERE rolname = 'rbtf_reader';") == [("0",)]


EXTENSION_DIR = "/usr/share/postgresql/15/extension"


@pytest.fixture
def own_extension():
    """An extension installed only for this test (control and script file), removed afterwards."""
    files = [os.path.join(EXTENSION_DIR, "rbtf_ext.control"), os.path.join(EXTENSION_DIR, "rbtf_ext--1.0.sql")]
    with open(files[0], "w") as handle:
        handle.write("default_version = '1.0'\nrelocatable = true\ncomment = 'a test extension'\n")
    with open(files[1], "w") as handle:
        handle.write("CREATE FUNCTION rbtf_answer() RETURNS int LANGUAGE sql AS 'SELECT 42';\n")
    try:
        yield files
    finally:
        for path in files:
            if os.path.exists(path):
                os.unlink(path)


def test_check_restorable_names_an_extension_the_cluster_lacks(pg_dbs, pg_engine, own_extension):
    name = pg_dbs("rbtf ext", "CREATE EXTENSION rbtf_ext; CREATE TABLE t AS SELECT rbtf_answer() AS n;")
    engine = pg_engine()
    manifest = back_up(engine, name)
    assert "extension rbtf_ext" in manifest["facts"]["objects"]
    for path in own_extension:
        os.unlink(path)
    with pytest.raises(RestoreCheckFailed, match="needs the extension rbtf_ext, which the PostgreSQL server .* does "
                                                 "not have installed"):
        check(engine, manifest)
    assert scratch_dbs() == []


def test_scratch_of_a_killed_check_is_removed_by_remove_leftovers(pg_engine):
    drv = K.PostgresqlServer(pg_engine().settings.options)
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = "%s%s-%d-%s" % (K.SCRATCH_PREFIX, K.host_tag(), dead.pid, "0123456789ab")
    alive = "%s%s-%d-%s" % (K.SCRATCH_PREFIX, K.host_tag(), os.getpid(), "0123456789ab")
    elsewhere = "%s%s-%d-%s" % (K.SCRATCH_PREFIX, "00000000", dead.pid, "0123456789ab")
    for name in (mine, alive, elsewhere):
        q('CREATE DATABASE :"d";', d=name)
    try:
        removed = pg.privilege.call_as("postgres", drv.remove_leftovers)
        assert [r.split(" ")[1] for r in removed] == [mine]
        assert sorted(scratch_dbs()) == sorted([alive, elsewhere])
    finally:
        for name in (mine, alive, elsewhere):
            q('DROP DATABASE IF EXISTS :"d";', d=name)


def test_icu_locale_round_trip_under_a_new_name(pg_dbs, pg_engine):
    name = "rbtf icu"
    q('DROP DATABASE IF EXISTS :"d";', d=name)
    q("CREATE DATABASE :\"d\" TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'und-u-ks-level2'"
      " LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8';", d=name)
    pg_dbs.made.append(name)
    q("CREATE TABLE t (v text); INSERT INTO t VALUES ('a'), ('B');", db=name)
    engine = pg_engine()
    manifest = back_up(engine, name)
    assert manifest["database"]["locale_provider"] == "icu"
    copy = "rbtf icu copy"
    pg_dbs.made.append(copy)  # dropped afterwards
    engine.import_backup(manifest["manifest_path"], repository=copy)
    locale = "SELECT datlocprovider, daticulocale, datcollate, datctype FROM pg_database WHERE datname = :'d';"
    assert q(locale, d=copy) == q(locale, d=name) == [("i", "und-u-ks-level2", "C.UTF-8", "C.UTF-8")]
