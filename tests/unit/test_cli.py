# -*- coding: utf-8 -*-
"""cli.main: the host command's subcommands and exit codes (0 ok, 1 failure, 2 settings)."""

from __future__ import annotations

import json
import os

import pytest
from repobackup_testlib import make_db, numbers

from ansible_collections.reposerver.backup.plugins.module_utils import cli, layout, store
from ansible_collections.reposerver.backup.plugins.module_utils import engine as E


@pytest.fixture
def host_store(destination):
    """The backups the host command writes (it names the host itself)."""
    def of(server="main"):
        return store.BackupStore(str(destination), layout.host_name(), server)
    return of


@pytest.fixture
def configured(make_settings, write_settings, sqlite_root):
    make_db(sqlite_root / "a", [1, 2])
    make_db(sqlite_root / "b", [3])
    write_settings(make_settings(repositories=["a", "b"]))


def run(paths, *argv):
    return cli.main(list(argv), paths)


def test_export_ok(configured, paths, host_store, capsys):
    assert run(paths, "export") == 0
    out = capsys.readouterr().out
    assert out.count("ok      ") == 2
    assert len(host_store().backups("a")) == 1 and len(host_store().backups("b")) == 1


def test_run_ok_and_scheduled(configured, paths, host_store):
    assert run(paths, "run", "--scheduled") == 0
    assert run(paths, "run", "--server", "main") == 0
    assert len(host_store().backups("a")) == 2


def test_export_failure_exit_1(configured, paths, capsys):
    assert run(paths, "export", "a", "ghost") == 1
    out = capsys.readouterr().out
    assert "FAILED  ghost" in out and "ok      a" in out


def test_run_partial_exit_1(make_settings, write_settings, sqlite_root, paths):
    make_db(sqlite_root / "a", [1])
    write_settings(make_settings(repositories=["a", "ghost"]))
    assert run(paths, "run", "--scheduled") == 1


def test_export_dash_h_is_a_repository_name(make_settings, write_settings, sqlite_root, paths, host_store, capsys):
    make_db(sqlite_root / "-h", [7])
    write_settings(make_settings())
    assert run(paths, "export", "--", "-h") == 0
    out = capsys.readouterr().out
    assert "usage" not in out.lower() and "-h" in out
    (manifest,) = host_store().backups("-h")
    assert manifest["repository"] == "-h"
    assert os.path.basename(os.path.dirname(manifest["path"])) == "%2Dh"
    assert numbers(manifest["path"]) == [7]


def test_dash_h_without_separator_is_help(configured, paths, capsys):
    with pytest.raises(SystemExit) as info:
        run(paths, "export", "-h")
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_run_skipped_when_off_is_success(make_settings, write_settings, paths, capsys):
    write_settings(make_settings(enabled=False))
    assert run(paths, "run", "--scheduled") == 0
    assert "skipped: auto-backup is off" in capsys.readouterr().out


def test_run_while_locked_exit_1(configured, make_engine, paths, capsys):
    with make_engine().lock():
        assert run(paths, "run", "--scheduled") == 1
        assert "already running" in capsys.readouterr().out
        assert run(paths, "export", "a") == 1
        assert "in progress" in capsys.readouterr().err
    assert run(paths, "run", "--scheduled") == 0


@pytest.mark.parametrize("doc_change, fragment", [
    (lambda d: d.update(keep_last=0), "keep_last 0"),
    (lambda d: d["schedule"].update(times=[810]), "quote"),
    (lambda d: d.update(format=9), "format 9"),
])
def test_bad_settings_exit_2(make_settings, write_settings, paths, capsys, doc_change, fragment):
    doc = make_settings().to_document()
    doc_change(doc)
    write_settings(doc)
    for argv in (["run", "--scheduled"], ["status"], ["export"], ["list"]):
        assert run(paths, *argv) == 2
        assert fragment in capsys.readouterr().err


def test_no_settings_exit_2(paths, capsys):
    assert run(paths, "status") == 2
    assert "No repository server is configured" in capsys.readouterr().err
    assert run(paths, "status", "--server", "main") == 2
    assert "has no settings" in capsys.readouterr().err


def test_several_servers_need_server_option(make_settings, write_settings, paths, capsys):
    write_settings(make_settings())
    write_settings(make_settings(server_name="db_2"))
    assert run(paths, "status") == 2
    assert "--server" in capsys.readouterr().err
    assert run(paths, "status", "--server", "db_2") == 0
    assert "db_2 (sqlite)" in capsys.readouterr().out


def test_status_text_and_json(configured, paths, capsys):
    assert run(paths, "export") == 0
    capsys.readouterr()
    assert run(paths, "status") == 0
    text = capsys.readouterr().out
    assert "covered      a, b" in text and "next run" in text
    assert run(paths, "status", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["covered"] == ["a", "b"] and info["last_run"]["result"] == "ok"
    assert info["repositories"]["a"]["backups_kept"] == 1


def test_list(make_settings, write_settings, sqlite_root, paths, capsys):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [1])
    write_settings(make_settings(repositories=["a", "ghost"]))
    assert run(paths, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["included", "a"], ["not", "included", "b"], ["missing", "ghost"]]
    os.rename(str(sqlite_root), str(sqlite_root) + ".away")
    assert run(paths, "list") == 1
    assert "unreachable" in capsys.readouterr().err


def test_verify_and_import(configured, paths, host_store, sqlite_root, capsys):
    assert run(paths, "export", "a") == 0
    (manifest,) = host_store().backups("a")
    assert run(paths, "verify", manifest["path"]) == 0
    assert "ok: " in capsys.readouterr().out
    assert run(paths, "import", manifest["path"]) == 0          # same content: nothing to do
    assert "already holds" in capsys.readouterr().out
    make_db(sqlite_root / "a", [3])
    assert run(paths, "import", manifest["path"]) == 1          # changed since, no --force
    assert "--force" in capsys.readouterr().err
    assert numbers(sqlite_root / "a") == [1, 2, 3]
    assert run(paths, "import", manifest["manifest_path"], "--repository", "restored") == 0
    assert numbers(sqlite_root / "restored") == [1, 2]
    assert run(paths, "import", manifest["path"], "--repository", "restored", "--force") == 0
    with open(manifest["path"], "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    assert run(paths, "verify", manifest["path"]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert run(paths, "import", manifest["path"], "--repository", "again") == 1
    assert not (sqlite_root / "again").exists()


def test_verify_needs_no_settings(tmp_path, paths, capsys):
    assert run(paths, "verify", str(tmp_path / "nothing.sqlite3")) == 1
    assert "no manifest" in capsys.readouterr().err


def test_usage_error_exit_2(paths):
    with pytest.raises(SystemExit) as info:
        run(paths, "frobnicate")
    assert info.value.code == 2


def test_engine_helpers_used_by_cli_exist():
    assert callable(E.verify_backup) and callable(E.load_settings)
