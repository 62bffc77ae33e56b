# -*- coding: utf-8 -*-
"""The kind contract (kinds.py): every kind keeps it, and the engine knows kinds only through it."""

from __future__ import annotations

import os

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import kinds, settings
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError, SettingsError

import pg_testlib as pg
from pg_testlib import pg_dbs  # noqa: F401  pylint: disable=unused-import
from repobackup_testlib import make_db, numbers


def test_every_kind_is_registered_whole():
    assert kinds.kind_names() == ("git", "postgresql", "sqlite")
    for name in kinds.kind_names():
        cls = kinds.driver_class(name)
        assert issubclass(cls, kinds.RepositoryServer) and cls.kind == name
        assert not cls.__abstractmethods__, "%s leaves %s out" % (name, sorted(cls.__abstractmethods__))
        assert cls.data_suffix.startswith(".") and cls.default_run_as
        assert settings.DEFAULT_RUN_AS[name] == cls.default_run_as
        own = [o.name for o in settings.options(name) if o.kind == name]
        assert own == ["%s_%s" % (name, o.name) for o in cls.kind_options] + \
            ["drill_%s_%s" % (name, o.name) for o in cls.drill_options]
    with pytest.raises(SettingsError, match="kind 'mysql' is not allowed; use one of git, postgresql, sqlite"):
        kinds.driver_class("mysql")


def test_every_kind_keeps_the_restore_check_and_import_signatures():
    """What a drill and an import call, the same on every kind (the engine passes these by name)."""
    import inspect
    for name in kinds.kind_names():
        cls = kinds.driver_class(name)
        check = inspect.signature(cls.check_restorable)
        # No key: the engine hands every kind plaintext (layers.py decodes an encrypted backup first).
        assert list(check.parameters) == ["self", "data_file", "manifest", "target"], name
        assert check.parameters["target"].default is None
        restore = inspect.signature(cls.restore_backup)
        assert list(restore.parameters) == ["self", "data_file", "name", "manifest", "globals_file", "create_roles"]
        assert list(inspect.signature(cls.check_readable).parameters) == ["self", "manifest"]


def test_the_engine_holds_no_table_of_kinds():
    """No per-kind table or name outside the kind modules: the engine asks the contract."""
    source = open(engine_mod.__file__, encoding="utf-8").read()
    for word in ("sqlite", "postgresql", "hasattr(self.server", "DRIVERS", "LEFT_OUT_OF_ALL"):
        assert word not in source, word


def test_sqlite_restored_in_scratch_leaves_the_folder_alone(tmp_path, sqlite_root):
    make_db(sqlite_root / "a.db", range(1, 8))
    driver = kinds.make_driver("sqlite", {"root": str(sqlite_root)})
    driver.scratch = str(tmp_path / "scratch")
    backup = str(tmp_path / "a.sqlite3")
    driver.export("a.db", backup, "keep_connections")
    before = sorted(os.listdir(str(sqlite_root)))
    with driver.restored_in_scratch(backup) as copy:
        assert copy.startswith(driver.scratch) and numbers(copy) == list(range(1, 8))
        assert sorted(os.listdir(str(sqlite_root))) == before
    assert os.listdir(driver.scratch) == []
    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(open(backup, "rb").read()[:1500])
    with pytest.raises(BackupError):
        with driver.restored_in_scratch(str(broken)):
            pass
    assert os.listdir(driver.scratch) == []


@pytest.mark.skipif(not os.path.isdir(pg.PGBIN) or os.geteuid() != 0, reason="needs postgresql-15 and root")
def test_postgresql_restored_in_scratch_is_a_database_no_one_lists(pg_dbs, tmp_path, paths, destination):
    pg.ensure_cluster()
    pg.give_tmp_to(tmp_path, paths, destination, "postgres")
    name = pg_dbs("rbt scratch", "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 9);")
    driver = pg.AsPostgres(kinds.make_driver("postgresql", settings.validate(
        {"kind": "postgresql", "destination": "/x"}).options))
    backup = str(tmp_path / "s.dump")
    driver.export(name, backup, "keep_connections")

    def inside(data_file):
        with driver._driver.restored_in_scratch(data_file) as scratch:  # pylint: disable=protected-access
            listed = driver._driver.list_repositories()  # pylint: disable=protected-access
            return scratch, scratch in listed, pg.psql("SELECT count(*) FROM t;", db=scratch)[0][0]
    scratch, listed, count = pg.privilege.call_as("postgres", inside, backup)
    assert count == "9" and listed is False
    assert scratch not in pg.database_names()


def test_sqlite_side_of_the_registry_in_a_fresh_interpreter(tmp_path):
    """Importing one kind module alone registers every kind, in the documented order."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.reposerver.backup.plugins.module_utils import kind_git\n"
            "from ansible_collections.reposerver.backup.plugins.module_utils import settings\n"
            "print(settings.KINDS)") % str(engine_mod.__file__).rsplit("/ansible_collections/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['sqlite', 'postgresql', 'git']"
