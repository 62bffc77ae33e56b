"""reposerver.backup.repository_export on a real host: check mode, apply, by name, skip_unchanged, failures."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

MODULE = "reposerver.backup.repository_export"
SETTINGS_MODULE = "reposerver.backup.autobackup_settings"
SERVER = "it_export"
STATE = Path("/var/lib/repobackup") / SERVER


def make_db(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()


def files_under(folder: Path) -> dict:
    """Every file below ``folder`` with its bytes: the whole destination at a glance."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def site(tmp_path: Path, run_module):
    """Server it_export: alpha.db and beta.db included, gamma.db present but not included."""
    shutil.rmtree(STATE, ignore_errors=True)
    root = tmp_path / "sqlite"
    root.mkdir()
    for rows, name in enumerate(("alpha.db", "beta.db", "gamma.db"), start=1):
        make_db(root / name, rows)
    dest = tmp_path / "dest"
    dest.mkdir()
    applied = run_module(SETTINGS_MODULE, server_name=SERVER, sqlite_root=str(root), destination=str(dest),
                         repositories=["alpha.db", "beta.db"], keep_last=5)
    assert applied["failed"] is False, applied.get("msg")
    host = applied["settings"]["host_id"]  # this host's folder at the destination (its FQDN by default)
    yield {"root": root, "dest": dest, "host": host, "backups": dest / host / SERVER}
    run_module(SETTINGS_MODULE, server_name=SERVER, state="absent")
    shutil.rmtree(STATE, ignore_errors=True)


def test_check_mode_lists_what_would_be_exported_and_writes_nothing(run_module, site):
    result = run_module(MODULE, check=True, server_name=SERVER)
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is True
    assert result["would_export"] == ["alpha.db", "beta.db"]
    assert sorted(result["backups"]) == ["alpha.db", "beta.db"]
    assert files_under(site["dest"]) == {}


@pytest.mark.parametrize("host", ["localhost", "sshhost"])
def test_apply_publishes_backups_with_manifests(module_runner, site, host):
    result = module_runner(host)(MODULE, server_name=SERVER)
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is True and result["result"] == "ok"
    assert sorted(result["backups"]) == ["alpha.db", "beta.db"]
    for name, backup in result["backups"].items():
        assert backup["result"] == "ok" and backup["error"] is None
        data, manifest = Path(backup["path"]), Path(backup["manifest"])
        assert data.parent == site["backups"] / name
        assert manifest.exists() and manifest.name.endswith(".manifest.json")
        content = data.read_bytes()
        assert hashlib.sha256(content).hexdigest() == backup["sha256"]
        assert len(content) == backup["size"]
        assert backup["duration"] >= 0
        doc = json.loads(manifest.read_text())
        assert doc["repository"] == name and doc["sha256"] == backup["sha256"] and doc["kind"] == "sqlite"
    assert not (site["backups"] / "gamma.db").exists()


def test_repository_not_in_schedule_can_be_exported_by_name(run_module, site):
    result = run_module(MODULE, server_name=SERVER, repositories=["gamma.db"])
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is True
    assert list(result["backups"]) == ["gamma.db"]
    assert Path(result["backups"]["gamma.db"]["manifest"]).exists()
    assert sorted(p.name for p in site["backups"].iterdir()) == ["gamma.db"]


def test_skip_unchanged_publishes_only_new_content(run_module, site):
    first = run_module(MODULE, server_name=SERVER, repositories=["alpha.db"], skip_unchanged=True)
    assert first["changed"] is True and first["backups"]["alpha.db"]["result"] == "ok"
    published = files_under(site["dest"])

    checked = run_module(MODULE, check=True, server_name=SERVER, repositories=["alpha.db"], skip_unchanged=True)
    assert checked["failed"] is False and files_under(site["dest"]) == published

    again = run_module(MODULE, server_name=SERVER, repositories=["alpha.db"], skip_unchanged=True)
    assert again["failed"] is False, again.get("msg")
    assert again["changed"] is False
    assert again["backups"]["alpha.db"]["result"] == "unchanged"
    assert again["backups"]["alpha.db"]["manifest"] == first["backups"]["alpha.db"]["manifest"]
    assert files_under(site["dest"]) == published, "an unchanged repository published files"

    make_db(site["root"] / "alpha.db", 3)
    changed = run_module(MODULE, server_name=SERVER, repositories=["alpha.db"], skip_unchanged=True)
    assert changed["changed"] is True
    assert changed["backups"]["alpha.db"]["result"] == "ok"
    assert changed["backups"]["alpha.db"]["manifest"] != first["backups"]["alpha.db"]["manifest"]
    assert len(list((site["backups"] / "alpha.db").glob("*.manifest.json"))) == 2


def test_without_skip_unchanged_every_run_publishes(run_module, site):
    run_module(MODULE, server_name=SERVER, repositories=["beta.db"])
    again = run_module(MODULE, server_name=SERVER, repositories=["beta.db"])
    assert again["changed"] is True
    assert len(list((site["backups"] / "beta.db").glob("*.manifest.json"))) == 2


def test_missing_repository_fails_and_names_it(run_module, site):
    checked = run_module(MODULE, check=True, server_name=SERVER, repositories=["nope.db"])
    assert checked["failed"] is True and "nope.db" in checked["msg"]
    result = run_module(MODULE, server_name=SERVER, repositories=["alpha.db", "nope.db"])
    assert result["failed"] is True
    assert "nope.db" in result["msg"] and "does not exist" in result["msg"]
    assert "alpha.db" not in result["msg"]
    assert result["backups"]["alpha.db"]["result"] == "ok", "the other results are returned too"
    assert result["backups"]["nope.db"]["result"] == "failed"
    assert Path(result["backups"]["alpha.db"]["manifest"]).exists()


def test_destination_override(run_module, site, tmp_path):
    other = tmp_path / "usb"
    other.mkdir()
    result = run_module(MODULE, server_name=SERVER, repositories=["alpha.db"], destination=str(other))
    assert result["failed"] is False, result.get("msg")
    data = Path(result["backups"]["alpha.db"]["path"])
    assert data.parent == other / site["host"] / SERVER / "alpha.db"
    assert files_under(site["dest"]) == {}


@pytest.mark.parametrize("check", [True, False], ids=["check", "apply"])
def test_destination_that_does_not_exist_fails_and_writes_nothing(run_module, site, tmp_path, check):
    result = run_module(MODULE, check=check, server_name=SERVER, destination=str(tmp_path / "not-mounted"))
    assert result["failed"] is True
    assert "does not exist" in result["msg"]
    assert not (tmp_path / "not-mounted").exists()


def test_relative_destination_is_refused(run_module, site):
    for check in (True, False):
        result = run_module(MODULE, check=check, server_name=SERVER, destination="backups/here")
        assert result["failed"] is True and "'backups/here'" in result["msg"], result["msg"]
    assert files_under(site["dest"]) == {}


def test_unknown_server_fails(run_module):
    result = run_module(MODULE, server_name="it_export_none")
    assert result["failed"] is True and "it_export_none" in result["msg"]
