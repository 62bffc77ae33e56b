# -*- coding: utf-8 -*-
"""SQLite: the facts a backup records, the restore check a drill calls, and failing closed (real SQLite)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import facts as facts_mod
from ansible_collections.reposerver.backup.plugins.module_utils import kind_sqlite as S
from ansible_collections.reposerver.backup.plugins.module_utils.errors import RestoreCheckFailed
from ansible_collections.reposerver.backup.plugins.module_utils.layout import dump_json
from ansible_collections.reposerver.backup.plugins.module_utils.store import sha256_file

from repobackup_testlib import make_db


def shop(path, orders=3):
    """A database with a foreign key, a view, an index and a trigger."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.executescript(
            "CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE \"order\" (id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customer(id));"
            "CREATE INDEX order_customer ON \"order\" (customer);"
            "CREATE VIEW big AS SELECT * FROM \"order\" WHERE id > 1;"
            "CREATE TRIGGER keep AFTER DELETE ON customer BEGIN SELECT 1; END;"
            "INSERT INTO customer VALUES (1, 'a'), (2, 'b');")
        for n in range(1, orders + 1):
            conn.execute("INSERT INTO \"order\" VALUES (?, ?)", (n, 1 + n % 2))
    finally:
        conn.close()
    return str(path)


def rewrite(manifest, change):
    """Edit a manifest as anyone with write access to the destination could (manifests are not signed)."""
    with open(manifest["manifest_path"], encoding="utf-8") as handle:
        doc = json.load(handle)
    change(doc)
    with open(manifest["manifest_path"], "wb") as handle:
        handle.write(dump_json(doc))


def loaded(engine, name):
    return engine.store.backups(name)[-1]


def test_backup_records_facts_and_versions(make_engine, sqlite_root):
    shop(sqlite_root / "shop.db")
    engine = make_engine()
    assert engine.export(["shop.db"])["result"] == "ok"
    manifest = loaded(engine, "shop.db")
    assert manifest["facts"]["tables"] == {"customer": 2, "order": 3}
    assert manifest["facts"]["objects"] == ["index order_customer", "table customer", "table order",
                                            "trigger keep", "view big"]
    assert manifest["dump_tool"] == "sqlite3" and manifest["dump_tool_version"] == sqlite3.sqlite_version
    assert manifest["engine_version"] and manifest["server_version"] == sqlite3.sqlite_version


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_check_restorable_passes_and_leaves_the_live_folder_alone(make_engine, sqlite_root, tmp_path, journal):
    live = shop(sqlite_root / "shop.db")
    sqlite3.connect(live).execute("PRAGMA journal_mode=%s" % journal).fetchall()
    engine = make_engine(in_use="disconnect" if journal == "wal" else "keep_connections")
    assert engine.export(["shop.db"])["result"] == "ok"
    manifest = loaded(engine, "shop.db")
    before = sorted(os.listdir(str(sqlite_root)))
    assert engine.server.check_restorable(manifest["path"], manifest) == [
        "restore", "integrity_check", "foreign_key_check", "row_counts", "objects"]
    assert sorted(os.listdir(str(sqlite_root))) == before
    assert os.listdir(engine.server.scratch) == []


def test_check_restorable_catches_a_copy_altered_and_rehashed(make_engine, sqlite_root):
    live = shop(sqlite_root / "shop.db")
    engine = make_engine()
    engine.export(["shop.db"])
    manifest = loaded(engine, "shop.db")
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("DELETE FROM \"order\" WHERE id = 3")
    conn.close()
    shutil.copyfile(live, manifest["path"])  # a different, intact database under the old manifest
    digest, size = sha256_file(manifest["path"])
    rewrite(manifest, lambda d: d.update(sha256=digest, size=size))
    manifest = loaded(engine, "shop.db")
    assert engine.store.is_good(manifest)  # its checksum is right
    with pytest.raises(RestoreCheckFailed, match=r"^Table order has 2 rows in the copy restored from .*; the "
                                                 r"backup recorded 3\.$"):
        engine.server.check_restorable(manifest["path"], manifest)
    rewrite(manifest, lambda d: d["facts"]["tables"].update(order=2) or d["facts"]["objects"].append("view gone"))
    with pytest.raises(RestoreCheckFailed, match="lacks view gone, which the backup recorded"):
        engine.server.check_restorable(manifest["path"], loaded(engine, "shop.db"))
    assert os.listdir(engine.server.scratch) == []


def test_check_restorable_runs_foreign_key_check(make_engine, sqlite_root):
    live = shop(sqlite_root / "shop.db")
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("INSERT INTO \"order\" VALUES (9, 42)")  # foreign keys are off by default: a dangling row
    conn.close()
    engine = make_engine()
    engine.export(["shop.db"])
    manifest = loaded(engine, "shop.db")
    with pytest.raises(RestoreCheckFailed, match=r"Table order row 9 .* refers to a missing row of customer"):
        engine.server.check_restorable(manifest["path"], manifest)


def test_check_restorable_refuses_a_file_written_by_another_sqlite_major(make_engine, sqlite_root):
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = make_engine()
    engine.export(["a.db"])
    manifest = dict(loaded(engine, "a.db"), dump_tool_version="4.0.0")
    with pytest.raises(RestoreCheckFailed, match="written by SQLite 4.0.0, whose files the SQLite %s"
                       % sqlite3.sqlite_version):
        engine.server.check_restorable(manifest["path"], manifest)


def test_scratch_of_a_killed_check_is_removed_by_the_next_run(make_engine, sqlite_root):
    make_db(sqlite_root / "a.db", range(1, 4))
    engine = make_engine()
    os.makedirs(engine.server.scratch, mode=0o700, exist_ok=True)
    dead = os.path.join(engine.server.scratch, "999999999-drill")  # a pid no process has
    os.mkdir(dead)
    open(os.path.join(dead, "restored.sqlite3"), "wb").close()
    assert engine.export(["a.db"])["result"] == "ok"
    assert not os.path.exists(dead)


def test_snapshot_that_fails_quick_check_is_no_backup_and_prunes_nothing(make_engine, sqlite_root, monkeypatch):
    make_db(sqlite_root / "a.db", range(1, 2000))
    engine = make_engine(keep_last=1)
    assert engine.export(["a.db"])["result"] == "ok"
    kept = engine.store.backups("a.db")
    real = S.SqliteServer._export_online

    def torn(self, source, target):
        real(self, source, target)
        with open(target, "r+b") as handle:  # a page of the table's b-tree overwritten after the copy
            handle.seek(2 * 4096 + 8)
            handle.write(b"\xff" * 64)
    monkeypatch.setattr(S.SqliteServer, "_export_online", torn)
    result = engine.export(["a.db"])
    error = result["repositories"]["a.db"]["error"]
    assert result["result"] == "failed" and "fails SQLite's quick_check" in error, error
    assert engine.store.backups("a.db") == kept


@pytest.mark.parametrize("value, problem", [
    ({"tables": {"t": 1}, "objects": ["table t"]}, None),
    ({"tables": None, "objects": None}, None),
    ([], "is not an object"),
    ({"tables": {"t": -1}}, "not a map of names to row counts"),
    ({"tables": {"t": True}}, "not a map of names to row counts"),
    ({"objects": "table t"}, "not a list of texts"),
])
def test_facts_from_a_manifest_are_checked(value, problem):
    found = facts_mod.facts_problem(value)
    assert found == problem or (problem and problem in found)


def test_host_command_import_all_rebuilds_the_server(make_settings, write_settings, sqlite_root, paths, capsys):
    from ansible_collections.reposerver.backup.plugins.module_utils import cli
    make_db(sqlite_root / "a", [1, 2])
    shop(sqlite_root / "shop.db")
    write_settings(make_settings())
    assert cli.main(["export"], paths) == 0
    for name in ("a", "shop.db"):
        os.unlink(str(sqlite_root / name))
    capsys.readouterr()
    assert cli.main(["import", "--all"], paths) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["ok", "a"], ["ok", "shop.db"]]
    conn = sqlite3.connect(str(sqlite_root / "shop.db"))
    assert conn.execute("SELECT count(*) FROM \"order\"").fetchone() == (3,)
    conn.close()
    assert cli.main(["import", "--all"], paths) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["unchanged", "unchanged"]
    assert cli.main(["import", "--all", "x.manifest.json"], paths) == 2
    assert "name no BACKUP" in capsys.readouterr().err
    assert cli.main(["import"], paths) == 2
    assert "import needs a BACKUP" in capsys.readouterr().err
