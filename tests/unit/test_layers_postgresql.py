"""Encrypted backups of the ``postgresql`` kind against the real PostgreSQL 15 cluster, with the real age, zstd,
pg_dump and pg_restore: a round trip under another name with the roles rebuilt from the encrypted globals,
drills with a key handed over and with the kept drill key, the plaintext scan (pg_dump compresses table data,
not its table of contents: a table COMMENT holds the marker), and the README's standard-tools commands run as
written by the postgres OS user."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError
from ansible_collections.reposerver.backup.plugins.module_utils.layout import encode_name
from ansible_collections.reposerver.backup.plugins.module_utils.store import GLOBALS_DIR

import pg_testlib as pg
from pg_testlib import pg_dbs  # noqa: F401  pylint: disable=unused-import
from repobackup_testlib import HOST
from layers_testlib import Watcher, age_key, marker, readme_block, readme_file_name, scan

pytestmark = pytest.mark.skipif(not os.path.isdir(pg.PGBIN) or os.geteuid() != 0,
                                reason="needs Debian's postgresql-15 and root")

cluster, postgres_owns_tmp = pg.cluster_fixtures("module")
pg_engine = pg.engine_fixture()


def orders_sql(mark: str, rows: int = 500) -> str:
    """Tables ``orders`` and ``customers`` (rows of md5 text), the marker in a COMMENT and in a table's name."""
    return ("CREATE TABLE customers (id int PRIMARY KEY, name text);"
            " CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, note text);"
            " INSERT INTO customers SELECT g, md5(g::text) FROM generate_series(1, 100) g;"
            " INSERT INTO orders SELECT g, 1 + g %% 100, md5(g::text) FROM generate_series(1, %d) g;"
            " COMMENT ON TABLE orders IS '%s';"
            ' CREATE TABLE "%s" (v text);' % (rows, mark, mark))


@pytest.fixture
def key(tmp_path):
    """(identity file owned by postgres, mode 0600; its public key)."""
    folder = tmp_path / "keys"
    folder.mkdir()
    found = age_key(folder)
    shutil.chown(found[0], "postgres", "postgres")
    os.chmod(found[0], 0o600)
    return found


def count(db: str, table: str = "orders") -> int:
    return int(pg.psql('SELECT count(*) FROM "%s";' % table, db=db)[0][0])


def tables(db: str) -> list:
    return sorted(r[0] for r in pg.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public';", db=db))


def folder_of(destination, name) -> Path:
    return destination / HOST / "main" / (name if name == GLOBALS_DIR else encode_name(name))


def test_an_encrypted_round_trip_under_another_name_rebuilds_roles_from_the_encrypted_globals(
        pg_dbs, pg_engine, destination, key):
    role = "rbtl_owner_%s" % os.urandom(4).hex()
    mark = marker()
    source = pg_dbs("rbtl enc", "CREATE ROLE %s; %s ALTER TABLE orders OWNER TO %s;" % (role, orders_sql(mark), role))
    copy = pg_dbs("rbtl enc copy")
    pg.drop_db(copy)
    try:
        engine = pg_engine(repositories=[source], encrypt_to=[key[1]], compression="zstd")
        done = engine.export()
        assert done["result"] == "ok", done
        (data,) = [p for p in folder_of(destination, source).iterdir() if not p.name.endswith(".manifest.json")]
        assert data.name.endswith(".dump.age")  # pg_dump compresses its own: no zstd
        (globals_data,) = [p for p in folder_of(destination, GLOBALS_DIR).iterdir()
                           if not p.name.endswith(".manifest.json")]
        assert globals_data.name.endswith(".sql.zst.age")
        manifest = json.loads(data.with_name(data.name[:-len(".dump.age")] + ".manifest.json").read_text())
        assert manifest["encryption"]["recipients"] == [key[1]] and "compression" not in manifest
        assert not {"facts", "database", "plain_sha256"} & set(manifest)
        assert scan(mark, destination) == [] and scan(role, destination) == []  # roles are sealed too

        assert engine.verify(str(data))["contents_checked"] is False
        pg.drop_db(source)
        pg.psql("DROP ROLE %s;" % role)
        with pytest.raises(BackupError, match="is encrypted to %s; give its private key" % key[1]):
            engine.import_backup(latest_of=source, repository=copy)
        assert copy not in pg.database_names()

        engine.identity = Path(key[0]).read_text()
        assert engine.verify(str(data))["contents_checked"] is True
        restored = engine.import_backup(latest_of=source, repository=copy)
        assert restored["changed"] and role in restored["roles_created"]  # read from the .sql.zst.age globals
        assert count(copy) == 500 and count(copy, "customers") == 100
        assert pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'orders';", db=copy) == [(role,)]
        assert pg.psql("SELECT obj_description('orders'::regclass);", db=copy) == [(mark,)]
        assert not os.listdir(engine._state("scratch"))
    finally:
        pg.drop_db(copy)
        pg.drop_db(source)
        pg.psql("DROP ROLE IF EXISTS %s;" % role)


def test_drills_of_encrypted_backups_with_the_key_handed_over_and_with_the_kept_drill_key(pg_dbs, pg_engine, key):
    name = pg_dbs("rbtl drill", orders_sql(marker(), rows=300))
    engine = pg_engine(repositories=[name], encrypt_to=[key[1]])
    assert engine.export()["result"] == "ok"

    failed = engine.drill()["repositories"][name]
    assert failed["result"] == "failed" and "is encrypted to %s" % key[1] in failed["error"]

    engine.identity = Path(key[0]).read_text()
    handed = engine.drill()["repositories"][name]
    assert handed["result"] == "ok", handed

    kept = pg_engine(repositories=[name], encrypt_to=[key[1]], drill_identity_file=key[0]).drill()
    assert kept["repositories"][name]["result"] == "ok", kept
    assert set(handed["checks"]) == set(kept["repositories"][name]["checks"])  # the same checks, facts included


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control-plain"])
def test_no_plaintext_reaches_the_destination_while_pg_dump_writes_or_after(
        pg_dbs, pg_engine, destination, key, encrypted):
    mark = marker()
    name = pg_dbs("rbtl scan", orders_sql(mark, rows=60000))
    engine = pg_engine(repositories=[name], encrypt_to=[key[1]] if encrypted else [],
                       compression="zstd" if encrypted else "none")
    with Watcher(mark, destination) as watcher:
        assert engine.export()["result"] == "ok"
    after = scan(mark, destination)
    if encrypted:
        assert (sorted(watcher.hits), after) == ([], []) and watcher.reads > 0
        assert scan(mark, engine._state("scratch")) == []  # a FIFO, nothing on a disk
    else:  # the control: the same scan finds the comment in the dump's table of contents, and the manifest's facts
        assert sorted(os.path.splitext(p)[1] for p in after) == [".dump", ".json"], after
        assert any(p.endswith(".dump") for p in watcher.hits)


def as_postgres(script: str, cwd: Path, *args) -> subprocess.CompletedProcess:
    """``script`` run by ``bash -euo pipefail`` as the postgres OS user in ``cwd`` (``args``: $0, $1...)."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script, *args], cwd=str(cwd), user="postgres",
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PGCLIENTENCODING": "UTF8"},
                          capture_output=True, text=True, check=False)


def test_the_readme_postgresql_commands_restore_an_encrypted_backup_whole_and_one_table(
        pg_dbs, pg_engine, destination, key, tmp_path):
    name = pg_dbs("rbtl readme", orders_sql(marker(), rows=2000))
    engine = pg_engine(repositories=[name], encrypt_to=[key[1]])
    assert engine.export()["result"] == "ok"
    (data,) = [p for p in folder_of(destination, name).iterdir() if p.name.endswith(".dump.age")]
    block = readme_block(str(REPO_ROOT / "README.md"), "standard-tools-postgresql")
    work = tmp_path / "restore"
    work.mkdir()
    shutil.copy(key[0], work / "key.txt")
    stored = work / readme_file_name(block, ".dump.age")
    shutil.copy(data, stored)
    for path in (work, work / "key.txt", stored):
        shutil.chown(str(path), "postgres", "postgres")
    made = [w for line in block.splitlines() if line.startswith("createdb ") for w in line.split()[1:]]
    assert made, block
    for db in made:
        pg_dbs.made.append(db)
        pg.drop_db(db)

    done = as_postgres(block, work)
    assert done.returncode == 0, done.stderr
    whole, single = made
    assert count(whole) == 2000 and count(whole, "customers") == 100 and len(tables(whole)) == 3
    assert tables(single) == ["orders"] and count(single) == 2000
    assert sorted(os.listdir(work)) == sorted(["key.txt", stored.name])  # the README removes the plaintext dump

    # What the README says of a dump pg_dump wrote into a pipe: pg_restore reading it from a pipe does not restore
    # in parallel, nor take its entries out of the archive's order; from a file it does both.
    pipe_db, file_db = pg_dbs("rbtl pipe jobs"), pg_dbs("rbtl file jobs")
    decrypt = "age -d -i key.txt %s" % stored.name
    piped = as_postgres(decrypt + ' | pg_restore --jobs=2 --dbname="$0"', work, pipe_db)
    assert piped.returncode != 0 and "parallel restore from standard input is not supported" in piped.stderr
    listing = as_postgres("age -d -i key.txt -o app.dump %s && pg_restore --list app.dump" % stored.name, work)
    assert listing.returncode == 0, listing.stderr
    listing = listing.stdout
    data_entries = [line for line in listing.splitlines() if " TABLE DATA " in line]
    assert len(data_entries) == 3
    (work / "reordered.list").write_text("\n".join(reversed(data_entries)) + "\n")
    shutil.chown(str(work / "reordered.list"), "postgres", "postgres")
    reordered = as_postgres(decrypt + " | pg_restore --use-list=reordered.list --file=/dev/null", work)
    assert reordered.returncode != 0 and "out-of-order restore request" in reordered.stderr
    from_file = as_postgres('pg_restore --jobs=2 --dbname="$0" app.dump && '
                            'pg_restore --use-list=reordered.list --file=/dev/null app.dump', work, file_db)
    assert from_file.returncode == 0, from_file.stderr
    assert count(file_db) == 2000
    # one table from the pipe works: its data comes in the archive's order
    one = as_postgres(decrypt + " | pg_restore --table=orders --file=-", work)
    assert one.returncode == 0 and "COPY public.orders" in one.stdout


CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.reposerver.backup.plugins.module_utils import engine, layout, settings
job = json.loads(sys.argv[2])
engine.Engine(settings.validate(job["settings"]), layout.Paths(**job["paths"]), host=job["host"]).export()
"""


def staged_under(folder: Path) -> list:
    return [p for p in folder.rglob("*") if p.is_file() and "/.tmp-" in str(p)] if folder.exists() else []


def test_sigkill_while_pg_dump_streams_into_age_leaves_no_partial_file_no_plaintext_and_the_next_run_cleans_up(
        pg_dbs, pg_engine, destination, paths, key):
    mark = marker()
    name = pg_dbs("rbtl killed", orders_sql(mark, rows=400000))
    raw = {"kind": "postgresql", "destination": str(destination), "repositories": [name], "encrypt_to": [key[1]]}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(engine_mod.__file__).parents[5]),
                              json.dumps({"settings": raw, "paths": dataclasses.asdict(paths), "host": HOST})],
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = folder_of(destination, name)
    try:  # killed while pg_dump writes into the FIFO and age into the staged file
        pg.wait_for(lambda: (pg.group_has(child.pid, "pg_dump") and staged_under(folder)
                             and max(p.stat().st_size for p in staged_under(folder)) > 64 << 10)
                    or child.poll() is not None, seconds=60, step=0.005)
        assert child.poll() is None, child.communicate()
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.communicate()
    engine = pg_engine(repositories=[name], encrypt_to=[key[1]])
    scratch = engine._state("scratch")
    left = os.listdir(scratch)
    assert left and all(stat.S_ISFIFO(os.lstat(p).st_mode) for p in Path(scratch, left[0]).iterdir())
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []  # nothing published
    assert scan(mark, destination) == []

    assert engine.export()["result"] == "ok"
    assert os.listdir(scratch) == [] and staged_under(folder) == []
    assert scan(mark, destination) == []
    assert "removed %s" % os.path.join(scratch, left[0]) in Path(paths.log_file("main")).read_text()
