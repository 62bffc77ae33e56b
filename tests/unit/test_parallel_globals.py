# -*- coding: utf-8 -*-
"""Parallel exports across repositories (setting ``parallel``) and the PostgreSQL globals per run."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from repobackup_testlib import HOST, make_db, numbers

from ansible_collections.reposerver.backup.plugins.module_utils import engine as E
from ansible_collections.reposerver.backup.plugins.module_utils import kind_sqlite
from ansible_collections.reposerver.backup.plugins.module_utils import settings as S
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError, SettingsError
from ansible_collections.reposerver.backup.plugins.module_utils.layout import encode_name
from ansible_collections.reposerver.backup.plugins.module_utils.store import GLOBALS_DIR

import pg_testlib as pg
from pg_testlib import pg_dbs  # noqa: F401  pylint: disable=unused-import

NAMES = ["r%d" % i for i in range(6)]


# -- the setting --------------------------------------------------------------------------------

def test_parallel_default_is_auto_and_older_documents_read_as_auto(make_settings):
    s = make_settings()
    assert s.parallel == "auto"
    assert s.workers() == max(1, min(4, (os.cpu_count() or 1) // 2))
    doc = s.to_document()
    assert doc["parallel"] == "auto"
    del doc["parallel"]  # a format 1 document written before the setting existed
    assert S.from_document(doc).parallel == "auto"
    assert S.from_document(make_settings(parallel=3).to_document()).workers() == 3


@pytest.mark.parametrize("value, expected", [(1, 1), (16, 16), ("2", 2), ("auto", "auto"), (None, "auto")])
def test_parallel_accepted(make_settings, value, expected):
    assert make_settings(parallel=value).parallel == expected


@pytest.mark.parametrize("value", [0, 17, "many", -1, True, 2.5])
def test_parallel_refused_with_one_sentence(make_settings, value):
    with pytest.raises(SettingsError) as caught:
        make_settings(parallel=value)
    message = str(caught.value)
    assert message.startswith("parallel %r is not allowed" % (value,))
    assert "from 1 to 16 or 'auto'" in message and message.count(".") <= 2 + str(value).count(".")


def test_encode_name_never_makes_the_globals_folder():
    assert encode_name(GLOBALS_DIR) != GLOBALS_DIR
    assert encode_name("%globals") == "%25globals"


# -- parallel exports ----------------------------------------------------------------------------

@pytest.fixture
def timed_export(monkeypatch):
    """Record (name, start, end) of each SQLite export, slowed down a little."""
    spans = []
    lock = threading.Lock()
    original = kind_sqlite.SqliteServer.export

    def export(self, name, target, in_use):
        start = time.monotonic()
        time.sleep(0.3)
        out = original(self, name, target, in_use)
        with lock:
            spans.append((name, start, time.monotonic()))
        return out
    monkeypatch.setattr(kind_sqlite.SqliteServer, "export", export)
    return spans


def overlaps(spans) -> int:
    spans = sorted(spans, key=lambda s: s[1])
    return sum(1 for a, b in zip(spans, spans[1:]) if b[1] < a[2])


def run_with(make_engine, parallel):
    engine = make_engine(parallel=parallel)
    result = engine.run()
    return engine, result


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_results_equal_serial(make_engine, sqlite_root, timed_export, parallel):
    for index, name in enumerate(NAMES):
        make_db(sqlite_root / name, [index, index + 100])
    engine, result = run_with(make_engine, parallel)
    assert result["result"] == "ok" and result["error"] is None
    assert list(result["repositories"]) == NAMES  # the order of the selection, whatever finished first
    for index, name in enumerate(NAMES):
        res = result["repositories"][name]
        assert res["result"] == "ok" and res["error"] is None
        (manifest,) = engine.store.backups(name)
        assert manifest["repository"] == name and manifest["manifest_path"] == res["backup"]
        assert numbers(manifest["path"]) == [index, index + 100]
        E.verify_backup(manifest["path"])
    status = engine.read_status()
    assert status["last_run"]["result"] == "ok" and status["last_run"]["repositories"] == NAMES
    assert status["last_run"]["failed"] == []
    assert all(status["repositories"][n]["last_success"]["result"] == "ok" for n in NAMES)
    log = Path(engine.paths.log_file(engine.settings.server)).read_text()
    assert log.count("run result=ok ok=6 failed=0") == 1
    assert "globals" not in result and "globals" not in status  # sqlite has no globals
    assert len(timed_export) == 6
    if parallel == 1:
        assert overlaps(timed_export) == 0
    else:
        assert overlaps(timed_export) >= 2
        # never more than two at once
        for span in timed_export:
            assert sum(1 for other in timed_export if other[1] <= span[1] < other[2]) <= 2


def test_parallel_failures_and_retention_stay_per_repository(make_engine, sqlite_root, timed_export):
    for index, name in enumerate(NAMES):
        make_db(sqlite_root / name, [index])
    engine = make_engine(parallel=3, keep_last=1)
    assert engine.run()["result"] == "ok"
    (sqlite_root / "r3").write_bytes(b"SQLite format 3\0" + b"\0" * 200)  # damaged: the export fails
    second = engine.export(names=NAMES + ["gone"])
    assert second["result"] == "partial"
    assert [n for n, r in second["repositories"].items() if r["result"] == "failed"] == ["r3", "gone"]
    for name in NAMES:
        assert len(engine.store.backups(name)) == 1  # keep_last 1 pruned the first run's backup
    status = engine.read_status()
    assert status["repositories"]["r3"]["failures"] == 1 and status["repositories"]["r2"]["failures"] == 0


# -- PostgreSQL globals --------------------------------------------------------------------------

needs_pg = pytest.mark.skipif(not os.path.isdir(pg.PGBIN) or os.geteuid() != 0,
                              reason="needs Debian's postgresql-15 and root")


@pytest.fixture
def pg_engine(destination, paths, pg_dbs, tmp_path):
    pg.ensure_cluster()
    pg.for_postgres(tmp_path, paths, destination)

    def make(**options):
        raw = {"kind": "postgresql", "destination": str(destination)}
        raw.update(options)
        return E.Engine(S.validate(raw), paths, host=HOST)
    make.db = lambda name: pg_dbs(name, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    return make


@needs_pg
def test_each_run_saves_the_globals(pg_engine):
    names = [pg_engine.db("rbt glob a"), pg_engine.db("rbt glob b")]
    engine = pg_engine(repositories=names, keep_last=2, parallel=2)
    for dummy in range(3):
        result = engine.run()
        assert result["result"] == "ok", result
        assert result["globals"]["result"] == "ok"
    folder = os.path.join(engine.store.base, GLOBALS_DIR)
    kept = engine.store.backups(None)
    assert len(kept) == 2  # the same retention as the repositories
    manifest = kept[-1]
    assert os.path.dirname(manifest["path"]) == folder
    assert manifest["content"] == "globals" and manifest["repository"] is None
    text = Path(manifest["path"]).read_text()
    assert "CREATE ROLE %s;" % pg.CLIENT in text and "PASSWORD" not in text
    E.verify_backup(manifest["manifest_path"])
    assert engine.store.repositories() == sorted(names)  # the globals folder is no repository
    status = engine.status()
    assert status["globals"]["last_success"]["backup"] == manifest["manifest_path"]
    assert status["last_run"]["globals"] == "ok"
    with pytest.raises(BackupError, match="globals"):
        engine.import_backup(manifest["manifest_path"], repository="rbt glob c")
    for name in names:
        assert len(engine.store.backups(name)) == 2


@needs_pg
def test_a_failed_globals_dump_is_recorded_and_exports_go_on(pg_engine, monkeypatch):
    name = pg_engine.db("rbt glob fail")
    engine = pg_engine(repositories=[name])

    def broken(target):
        raise E.RepositoryError("pg_dumpall --globals-only failed: simulated")
    monkeypatch.setattr(engine.server, "export_globals", broken)
    result = engine.run()
    assert result["repositories"][name]["result"] == "ok"
    assert result["globals"]["result"] == "failed" and "simulated" in result["globals"]["error"]
    assert result["result"] == "partial"
    status = engine.read_status()
    assert status["last_run"]["globals"] == "failed" and status["globals"]["failures"] == 1
    assert "globals error=" in Path(engine.paths.log_file(engine.settings.server)).read_text()
    assert engine.store.backups(None) == []
