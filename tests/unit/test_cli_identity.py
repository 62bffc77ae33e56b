# -*- coding: utf-8 -*-
"""The host command's --identity on import, verify and drill, and status showing who backups are encrypted to."""

from __future__ import annotations

import os
import subprocess

import pytest
from repobackup_testlib import make_db, numbers

from ansible_collections.reposerver.backup.plugins.module_utils import cli, layout, store


def _key(folder, name):
    path = folder / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout
    return str(path), public.strip()


@pytest.fixture
def encrypted(make_settings, write_settings, sqlite_root, tmp_path, paths, capsys):
    """Server main with repository a (rows 1..40), backed up once, encrypted to key 1 and compressed."""
    keys = [_key(tmp_path, "key%d.txt" % n) for n in (1, 2)]
    make_db(sqlite_root / "a", range(1, 41))
    write_settings(make_settings(repositories=["a"], encrypt_to=[keys[0][1]], compression="zstd"))
    assert cli.main(["export"], paths) == 0
    capsys.readouterr()
    return keys


def _backup(destination) -> str:
    backups = store.BackupStore(str(destination), layout.host_name(), "main").backups("a")
    assert len(backups) == 1
    return backups[0]["path"]


def test_verify_checks_stored_bytes_without_a_key_and_the_content_with_it(encrypted, destination, paths, capsys):
    data = _backup(destination)
    assert data.endswith(".sqlite3.zst.age")
    assert cli.main(["verify", data], paths) == 0
    out = capsys.readouterr().out
    assert "stored bytes only: it is encrypted to %s" % encrypted[0][1] in out
    assert cli.main(["verify", "--identity", encrypted[0][0], data], paths) == 0
    assert "stored bytes only" not in capsys.readouterr().out
    assert cli.main(["verify", "--identity", encrypted[1][0], data], paths) == 1
    assert "matches none of them" in capsys.readouterr().err


def test_import_and_drill_with_the_key_brought_for_them(encrypted, destination, sqlite_root, paths, capsys):
    data = _backup(destination)
    assert cli.main(["import", data, "--repository", "copy"], paths) == 1
    err = capsys.readouterr().err
    assert "is encrypted to %s; give its private key" % encrypted[0][1] in err
    assert not os.path.exists(sqlite_root / "copy")
    assert cli.main(["import", data, "--repository", "copy", "--identity", encrypted[0][0]], paths) == 0
    assert numbers(sqlite_root / "copy") == list(range(1, 41))
    capsys.readouterr()
    assert cli.main(["drill"], paths) == 1  # no key: the drill fails, naming the recipient
    assert encrypted[0][1] in capsys.readouterr().out
    assert cli.main(["drill", "--identity", encrypted[0][0]], paths) == 0
    assert cli.main(["status"], paths) == 0
    out = capsys.readouterr().out
    assert "layers       encrypted to %s; compression zstd" % encrypted[0][1] in out
    assert "key needed" in out and "(x0." in out


def test_an_identity_file_that_is_a_link_is_refused(encrypted, destination, tmp_path, paths, capsys):
    link = tmp_path / "link.txt"
    link.symlink_to(encrypted[0][0])
    assert cli.main(["verify", "--identity", str(link), _backup(destination)], paths) == 1
    assert "Identity file %s cannot be read: it is a symbolic link." % link in capsys.readouterr().err
