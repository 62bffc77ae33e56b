"""reposerver.backup.repository_import on a real host: check/diff, new name, idempotence, force, bad backups, latest_of."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sqlite_rows import rows_of, write_rows

MODULE = "reposerver.backup.repository_import"
EXPORT = "reposerver.backup.repository_export"
SETTINGS_MODULE = "reposerver.backup.autobackup_settings"
SERVER = "it_import"
STATE = Path("/var/lib/repobackup") / SERVER


@pytest.fixture
def site(tmp_path: Path, run_module):
    """Server it_import with alpha.db (rows a, b) and one backup of it."""
    shutil.rmtree(STATE, ignore_errors=True)
    root = tmp_path / "sqlite"
    root.mkdir()
    write_rows(root / "alpha.db", ["a", "b"])
    dest = tmp_path / "dest"
    dest.mkdir()
    applied = run_module(SETTINGS_MODULE, server_name=SERVER, sqlite_root=str(root), destination=str(dest))
    assert applied["failed"] is False, applied.get("msg")
    info = {"root": root, "live": root / "alpha.db"}
    info["backup"] = export(run_module)
    yield info
    run_module(SETTINGS_MODULE, server_name=SERVER, state="absent")
    shutil.rmtree(STATE, ignore_errors=True)


def export(run_module) -> dict:
    """Back alpha.db up now; the backup's data file and manifest paths."""
    result = run_module(EXPORT, server_name=SERVER, repositories=["alpha.db"])
    assert result["failed"] is False, result.get("msg")
    backup = result["backups"]["alpha.db"]
    return {"data": Path(backup["path"]), "manifest": Path(backup["manifest"])}


def edit_manifest(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_check_mode_changes_nothing_and_diff_shows_what_replaces_what(run_module, site):
    write_rows(site["live"], ["changed since"])
    live = site["live"].read_bytes()
    result = run_module(MODULE, check=True, diff=True, server_name=SERVER,
                        backup=str(site["backup"]["manifest"]), force=True)
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is True and result["replaced"] is True
    assert site["live"].read_bytes() == live, "check mode touched the repository"
    diff = result["diff"]
    assert diff["before"].startswith("alpha.db: exists, content sha256 ")
    assert result["before"]["content_sha256"] in diff["before"]
    assert diff["after"].startswith("alpha.db: from backup %s taken " % site["backup"]["manifest"])
    assert result["after"]["content_sha256"] in diff["after"]
    assert result["before"]["content_sha256"] != result["after"]["content_sha256"]


def test_check_mode_predicts_refusal_without_force(run_module, site):
    write_rows(site["live"], ["changed since"])
    result = run_module(MODULE, check=True, server_name=SERVER, backup=str(site["backup"]["manifest"]))
    assert result["failed"] is True, "check mode says it would work, the real run refuses"
    assert "exists" in result["msg"]


def test_import_into_a_new_name_then_again_is_unchanged(run_module, site):
    target = site["root"] / "restored.db"
    checked = run_module(MODULE, check=True, diff=True, server_name=SERVER,
                         backup=str(site["backup"]["data"]), repository="restored.db")
    assert checked["changed"] is True and not target.exists()
    assert checked["diff"]["before"] == "restored.db: does not exist\n"

    result = run_module(MODULE, server_name=SERVER, backup=str(site["backup"]["data"]), repository="restored.db")
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is True and result["replaced"] is False
    assert result["repository"] == "restored.db"
    assert result["backup"] == str(site["backup"]["manifest"])
    assert rows_of(target) == ["a", "b"]
    restored = target.read_bytes()

    for check in (True, False):
        again = run_module(MODULE, check=check, server_name=SERVER, backup=str(site["backup"]["data"]),
                           repository="restored.db")
        assert again["failed"] is False, again.get("msg")
        assert again["changed"] is False
    assert target.read_bytes() == restored


def test_existing_repository_is_kept_without_force_and_replaced_with_it(run_module, site):
    write_rows(site["live"], ["changed since"])
    live = site["live"].read_bytes()
    refused = run_module(MODULE, server_name=SERVER, backup=str(site["backup"]["manifest"]))
    assert refused["failed"] is True
    assert "'alpha.db' exists" in refused["msg"] and "force" in refused["msg"]
    assert site["live"].read_bytes() == live

    forced = run_module(MODULE, server_name=SERVER, backup=str(site["backup"]["manifest"]), force=True)
    assert forced["failed"] is False, forced.get("msg")
    assert forced["changed"] is True and forced["replaced"] is True
    assert rows_of(site["live"]) == ["a", "b"]

    again = run_module(MODULE, server_name=SERVER, backup=str(site["backup"]["manifest"]), force=True)
    assert again["changed"] is False


def test_unchanged_repository_needs_no_force(run_module, site):
    """The live repository already holds the backup's content: nothing to do, nothing refused."""
    result = run_module(MODULE, server_name=SERVER, backup=str(site["backup"]["manifest"]))
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is False


def flip_byte(backup: dict) -> None:
    data = bytearray(backup["data"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    backup["data"].write_bytes(bytes(data))


def truncate(backup: dict) -> None:
    data = backup["data"].read_bytes()
    backup["data"].write_bytes(data[: len(data) // 2])


def wrong_checksum(backup: dict) -> None:
    edit_manifest(backup["manifest"], sha256="0" * 64)


def other_kind(backup: dict) -> None:
    edit_manifest(backup["manifest"], kind="postgresql")


def other_format(backup: dict) -> None:
    edit_manifest(backup["manifest"], format=3)


def no_manifest(backup: dict) -> None:
    backup["manifest"].unlink()


def not_a_manifest(backup: dict) -> None:
    backup["manifest"].write_text('{"hello": "world"}')


BAD_BACKUPS = [
    (flip_byte, "corrupt"),
    (truncate, "truncated"),
    (wrong_checksum, "corrupt"),
    (other_kind, "of kind 'postgresql', but server it_import is of kind 'sqlite'"),
    (other_format, "has format 3; this engine reads formats 1 to 2"),
    (no_manifest, "has no manifest"),
    (not_a_manifest, "is not a repobackup manifest"),
]


@pytest.mark.parametrize("spoil,words", BAD_BACKUPS, ids=[case[0].__name__ for case in BAD_BACKUPS])
@pytest.mark.parametrize("check", [False, True], ids=["apply", "check"])
def test_bad_backup_is_refused_and_live_repository_unchanged(run_module, site, spoil, words, check):
    write_rows(site["live"], ["changed since"])
    live = site["live"].read_bytes()
    spoil(site["backup"])
    path = site["backup"]["manifest"] if spoil is not no_manifest else site["backup"]["data"]
    result = run_module(MODULE, check=check, server_name=SERVER, backup=str(path), force=True)
    assert result["failed"] is True
    assert words in result["msg"], result["msg"]
    assert site["live"].read_bytes() == live
    assert sorted(p.name for p in site["root"].iterdir()) == ["alpha.db"], "leftovers beside the repositories"


def test_latest_of_picks_the_newest_good_backup(run_module, site):
    write_rows(site["live"], ["second"])
    second = export(run_module)
    write_rows(site["live"], ["third"])
    third = export(run_module)

    result = run_module(MODULE, server_name=SERVER, latest_of="alpha.db", repository="latest.db")
    assert result["failed"] is False, result.get("msg")
    assert result["backup"] == str(third["manifest"])
    assert rows_of(site["root"] / "latest.db") == ["third"]

    flip_byte(third)
    result = run_module(MODULE, server_name=SERVER, latest_of="alpha.db", repository="latest.db", force=True)
    assert result["failed"] is False, result.get("msg")
    assert result["backup"] == str(second["manifest"]), "a corrupt newest backup is skipped"
    assert result["changed"] is True
    assert rows_of(site["root"] / "latest.db") == ["second"]


def test_latest_of_without_backups_fails(run_module, site):
    result = run_module(MODULE, server_name=SERVER, latest_of="never.db")
    assert result["failed"] is True and "'never.db' has no good backup" in result["msg"]


@pytest.mark.parametrize("args,words", [
    ({}, "one of the following is required: backup, latest_of, all"),
    ({"all": True, "repository": "x.db"}, "mutually exclusive"),
    ({"backup": "/x.manifest.json", "latest_of": "alpha.db"}, "mutually exclusive"),
])
def test_backup_or_latest_of(run_module, site, args, words):
    result = run_module(MODULE, server_name=SERVER, **args)
    assert result["failed"] is True and words in result["msg"], result["msg"]


def test_all_rebuilds_every_repository_of_the_server(run_module, site):
    """Disaster recovery in one task: the folder emptied, every repository comes back from its newest backup."""
    write_rows(site["root"] / "beta.db", ["x", "y", "z"])
    result = run_module(EXPORT, server_name=SERVER, repositories=["beta.db"])
    assert result["failed"] is False, result.get("msg")
    for path in site["root"].iterdir():
        path.unlink()
    check = run_module(MODULE, check=True, server_name=SERVER, all=True)
    assert check["failed"] is False and check["changed"] is True, check.get("msg")
    assert list(site["root"].iterdir()) == [], "check mode restored something"
    done = run_module(MODULE, server_name=SERVER, all=True)
    assert done["failed"] is False, done.get("msg")
    assert done["changed"] is True and done["result"] == "ok"
    assert {name: one["result"] for name, one in done["repositories"].items()} == {"alpha.db": "ok", "beta.db": "ok"}
    assert rows_of(site["live"]) == ["a", "b"] and rows_of(site["root"] / "beta.db") == ["x", "y", "z"]
    again = run_module(MODULE, server_name=SERVER, all=True)
    assert again["failed"] is False and again["changed"] is False
    write_rows(site["live"], ["changed since"])
    kept = run_module(MODULE, server_name=SERVER, all=True)  # an existing, different repository needs force
    assert kept["failed"] is True and "'alpha.db' exists; add --force" in kept["msg"]
    assert kept["repositories"]["beta.db"]["result"] == "unchanged" and rows_of(site["live"]) == ["changed since"]
