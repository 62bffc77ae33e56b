"""Encrypted and compressed backups through the modules on a real host: autobackup_settings refuses a bad
recipient before anything changes and reports what it needs, repository_export writes only ciphertext, and
repository_import restores with the key given as a file or as text (never shown), refusing without it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sqlite_rows import rows_of, write_rows

SETTINGS_MODULE = "reposerver.backup.autobackup_settings"
EXPORT = "reposerver.backup.repository_export"
IMPORT = "reposerver.backup.repository_import"
INFO = "reposerver.backup.autobackup_info"
SERVER = "it_encrypted"
STATE = Path("/var/lib/repobackup") / SERVER
SETTINGS_FILE = Path("/etc/repobackup") / (SERVER + ".json")


def age_key(folder: Path, name: str) -> tuple:
    path = folder / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout
    return path, public.strip()


@pytest.fixture
def site(tmp_path: Path, run_module):
    shutil.rmtree(STATE, ignore_errors=True)
    root = tmp_path / "sqlite"
    root.mkdir()
    write_rows(root / "alpha.db", ["secret-row-%d" % n for n in range(50)])
    dest = tmp_path / "dest"
    dest.mkdir()
    key, public = age_key(tmp_path, "key.txt")
    other, dummy = age_key(tmp_path, "other.txt")
    yield {"root": root, "dest": dest, "key": key, "public": public, "other": other}
    run_module(SETTINGS_MODULE, server_name=SERVER, state="absent")
    shutil.rmtree(STATE, ignore_errors=True)


def test_a_bad_recipient_is_refused_in_one_sentence_and_nothing_is_written(run_module, site):
    result = run_module(SETTINGS_MODULE, server_name=SERVER, sqlite_root=str(site["root"]),
                        destination=str(site["dest"]), encrypt_to=[site["public"][:-1] + "q"])
    assert result["failed"] is True
    assert result["msg"].startswith("encrypt_to entry 'age1") and "not a valid age public key" in result["msg"]
    assert not SETTINGS_FILE.exists()
    result = run_module(SETTINGS_MODULE, server_name=SERVER, sqlite_root=str(site["root"]),
                        destination=str(site["dest"]), compression="gzip")
    assert result["failed"] is True and "compression" in result["msg"] and "zstd" in result["msg"]
    assert not SETTINGS_FILE.exists()


def test_export_and_import_with_the_key_as_a_file_or_as_text(run_module, site):
    applied = run_module(SETTINGS_MODULE, server_name=SERVER, sqlite_root=str(site["root"]),
                         destination=str(site["dest"]), encrypt_to=[site["public"]], compression="zstd")
    assert applied["failed"] is False, applied.get("msg")
    assert applied["missing_programs"] == []  # the test machine has age and zstd
    again = run_module(SETTINGS_MODULE, server_name=SERVER, sqlite_root=str(site["root"]),
                       destination=str(site["dest"]), encrypt_to=[site["public"]], compression="zstd")
    assert again["changed"] is False

    exported = run_module(EXPORT, server_name=SERVER, repositories=["alpha.db"])
    assert exported["failed"] is False, exported.get("msg")
    backup = exported["backups"]["alpha.db"]
    data = Path(backup["path"])
    assert data.name.endswith(".sqlite3.zst.age")
    for path in site["dest"].rglob("*"):
        if path.is_file():
            assert b"secret-row-" not in path.read_bytes(), path

    info = run_module(INFO, server_name=SERVER)
    assert info["failed"] is False, info.get("msg")
    (server,) = info["servers"]
    text = json.dumps(server)
    assert site["public"] in text and '"compression": "zstd"' in text

    refused = run_module(IMPORT, server_name=SERVER, latest_of="alpha.db", repository="restored.db")
    assert refused["failed"] is True
    assert refused["msg"] == ("Backup %s is encrypted to %s; give its private key (--identity FILE, or the module "
                              "options identity_file or identity)." % (backup["manifest"], site["public"]))
    wrong = run_module(IMPORT, server_name=SERVER, latest_of="alpha.db", repository="restored.db",
                       identity_file=str(site["other"]))
    assert wrong["failed"] is True and "matches none of them" in wrong["msg"]
    assert not (site["root"] / "restored.db").exists()

    by_file = run_module(IMPORT, server_name=SERVER, latest_of="alpha.db", repository="restored.db",
                         identity_file=str(site["key"]))
    assert by_file["failed"] is False, by_file.get("msg")
    assert rows_of(site["root"] / "restored.db") == rows_of(site["root"] / "alpha.db")

    secret = site["key"].read_text()
    by_text = run_module(IMPORT, server_name=SERVER, latest_of="alpha.db", repository="again.db", identity=secret)
    assert by_text["failed"] is False, by_text.get("msg")
    assert rows_of(site["root"] / "again.db") == rows_of(site["root"] / "alpha.db")
    assert "AGE-SECRET-KEY" not in json.dumps(by_text)
    log = Path("/var/log/repobackup") / (SERVER + ".log")
    if log.exists():
        assert "AGE-SECRET-KEY" not in log.read_text()
