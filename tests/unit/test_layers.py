"""Compressed and encrypted backups (layers.py): round trips through the engine, refusals, what the manifest
shows, with the real age and zstd programs."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import cli, engine_mod, errors, layers, settings  # noqa: F401
from repobackup_testlib import make_db, numbers


def _key(tmp_path, name):
    path = tmp_path / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return str(path), public


@pytest.fixture
def keys(tmp_path):
    return [_key(tmp_path, "key%d" % n) for n in (1, 2)]


def test_sqlite_round_trip_encrypted_and_compressed(make_engine, sqlite_root, destination, keys):
    make_db(sqlite_root / "app", rows=range(500))
    eng = make_engine(encrypt_to=[keys[0][1]], compression="zstd")
    report = eng.export(["app"])
    assert report["repositories"]["app"]["result"] == "ok", report
    folder = destination / os.listdir(destination)[0] / "main" / "app"
    names = sorted(os.listdir(folder))
    data = [n for n in names if not n.endswith(".manifest.json")]
    assert len(data) == 1 and data[0].endswith(".sqlite3.zst.age"), names
    manifest = json.loads((folder / names[-1] if names[-1].endswith("manifest.json") else folder / names[0]).read_text())
    assert manifest["compression"] == "zstd"
    assert manifest["encryption"] == {"scheme": "age", "recipients": [keys[0][1]]}
    assert "facts" not in manifest and "content_sha256" not in manifest and "plain_sha256" not in manifest
    assert manifest["sealed"].startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    # restore under another name, with the key as text
    os.unlink(sqlite_root / "app")
    eng = make_engine(encrypt_to=[keys[0][1]], compression="zstd")
    with pytest.raises(errors.BackupError, match="is encrypted to age1"):
        eng.import_backup(latest_of="app")
    eng.identity = open(keys[1][0]).read()
    with pytest.raises(errors.BackupError, match="matches none of them"):
        eng.import_backup(latest_of="app")
    eng.identity = open(keys[0][0]).read()
    done = eng.import_backup(latest_of="app")
    assert done["changed"]
    assert len(numbers(sqlite_root / "app")) == 500
