# -*- coding: utf-8 -*-
"""Hosts that share a short host name share nothing at the destination (issue 9, item 7).

Folders are named by the host id (settings ``host_id``, default the FQDN), so two
hosts called ``db1`` in different domains keep apart: retention counts each host's
own backups, and ``import latest_of`` restores only this host's data.  Folders that
engines before host ids wrote under the short name stay readable by path, and are
never pruned nor picked from.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import layout, report, settings, store
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError
from repobackup_testlib import make_db, numbers

UTC = dt.timezone.utc
EU, US = "db1.eu.example.com", "db1.us.example.com"


def files_below(folder) -> dict:
    """Every file below ``folder`` and its bytes."""
    found = {}
    for where, _dirs, names in os.walk(str(folder)):
        for name in names:
            path = os.path.join(where, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, str(folder))] = handle.read()
    return found


@pytest.fixture
def two_hosts(tmp_path, destination):
    """Two hosts named db1, each with its own SQLite folder holding a.db, and one shared destination."""
    hosts = {}
    for host_id, rows in ((EU, range(1, 4)), (US, range(100, 105))):
        root = tmp_path / host_id / "sqlite"
        root.mkdir(parents=True)
        make_db(root / "a.db", rows)
        paths = layout.Paths(settings_dir=str(tmp_path / host_id / "etc"), cron_dir=str(tmp_path / host_id / "cron"),
                             state_root=str(tmp_path / host_id / "state"), log_dir=str(tmp_path / host_id / "log"))
        values = settings.validate({"destination": str(destination), "sqlite_root": str(root), "host_id": host_id,
                                    "keep_last": 1})
        hosts[host_id] = {"engine": engine_mod.Engine(values, paths), "root": root}  # host comes from the settings
    return hosts


def at(monkeypatch, moment):
    monkeypatch.setattr(store, "utc_now", lambda: moment)


def test_two_hosts_with_one_short_name_keep_their_own_folders_retention_and_latest(
        two_hosts, destination, monkeypatch):
    eu, us = two_hosts[EU]["engine"], two_hosts[US]["engine"]
    assert (eu.host, us.host) == (EU, US)
    base = dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    for hour, each in enumerate((eu, us, us, us)):
        at(monkeypatch, base + dt.timedelta(hours=hour))
        assert each.export()["result"] == "ok"
    assert sorted(os.listdir(str(destination))) == [EU, US]
    # keep_last 1 each: the US runs never pruned the EU backup, whose newest is still the only one.
    assert [m["host"] for m in eu.store.backups("a.db")] == [EU]
    assert [m["host"] for m in us.store.backups("a.db")] == [US]
    assert len(eu.store.backups("a.db")) == 1 and len(us.store.backups("a.db")) == 1

    done = eu.import_backup(latest_of="a.db", repository="restored.db")
    assert done["changed"] and done["backup"].startswith(str(destination / EU / "main" / "a.db") + "/")
    assert numbers(two_hosts[EU]["root"] / "restored.db") == [1, 2, 3]
    assert eu.status()["host"] == EU and eu.status()["legacy_folder"] is None


def test_latest_of_skips_another_hosts_backup_in_this_hosts_folder_but_takes_it_by_path(two_hosts, monkeypatch):
    """A copy of US's newer backup lying in EU's folder is not EU's: latest_of passes it over."""
    eu, us = two_hosts[EU]["engine"], two_hosts[US]["engine"]
    base = dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    at(monkeypatch, base)
    assert eu.export()["result"] == "ok"
    at(monkeypatch, base + dt.timedelta(hours=1))
    theirs = us.export()["repositories"]["a.db"]
    folder = eu.store.repo_dir("a.db")
    copy_manifest = os.path.join(folder, os.path.basename(theirs["backup"]))
    shutil.copy(theirs["data_file_path"], folder)
    shutil.copy(theirs["backup"], copy_manifest)
    assert eu.store.backups("a.db")[-1]["host"] == US  # the newest there is the other host's

    done = eu.import_backup(latest_of="a.db", repository="mine.db")
    assert os.path.dirname(done["backup"]) == folder and done["backup"] != copy_manifest
    assert numbers(two_hosts[EU]["root"] / "mine.db") == [1, 2, 3]

    by_path = eu.import_backup(copy_manifest, repository="theirs.db")
    assert by_path["changed"] and numbers(two_hosts[EU]["root"] / "theirs.db") == [100, 101, 102, 103, 104]


@pytest.fixture
def legacy(make_settings, paths, sqlite_root, destination, monkeypatch):
    """Three backups of a.db written the old way: under the short host name, manifests naming only it."""
    make_db(sqlite_root / "a.db", range(1, 6))
    short = layout.short_host_name()
    old = engine_mod.Engine(make_settings(keep_last=10), paths, host=short)
    base = dt.datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
    for day in range(3):
        at(monkeypatch, base + dt.timedelta(days=day))
        assert old.export()["result"] == "ok"
    folder = destination / layout.encode_name(short) / "main"
    assert len(old.store.backups("a.db")) == 3 and old.store.base == str(folder)
    return {"folder": folder, "files": files_below(folder), "backups": old.store.backups("a.db")}


def test_a_legacy_short_name_folder_is_never_pruned_nor_picked_but_imports_by_path(
        make_settings, paths, sqlite_root, legacy, monkeypatch):
    host_id = layout.short_host_name() + ".example.test"
    engine = engine_mod.Engine(make_settings(keep_last=1, host_id=host_id), paths)
    assert engine.host == host_id and engine.store.base != str(legacy["folder"])

    # No backup of this host yet: latest_of does not reach into the legacy folder.
    with pytest.raises(BackupError, match="has no good backup"):
        engine.import_backup(latest_of="a.db", repository="x.db")
    assert not (sqlite_root / "x.db").exists()

    base = dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    for hour in range(3):
        at(monkeypatch, base + dt.timedelta(hours=hour))
        assert engine.export()["result"] == "ok"
    assert len(engine.store.backups("a.db")) == 1, "retention of the new folder works"
    assert files_below(legacy["folder"]) == legacy["files"], "the legacy folder was touched"

    status = engine.status()
    assert status["legacy_folder"] == str(legacy["folder"])
    assert "legacy       %s" % legacy["folder"] in report.status_text(status)
    assert json.loads(json.dumps(status))["legacy_folder"] == str(legacy["folder"])

    latest = engine.import_backup(latest_of="a.db", repository="latest.db")
    assert latest["backup"].startswith(engine.store.base + "/")
    oldest = legacy["backups"][0]["manifest_path"]
    by_path = engine.import_backup(oldest, repository="old.db")
    assert by_path["changed"] and by_path["backup"] == oldest
    assert numbers(sqlite_root / "old.db") == [1, 2, 3, 4, 5]
    assert files_below(legacy["folder"]) == legacy["files"]


def test_without_an_fqdn_the_short_name_folder_is_this_hosts_own(make_settings, paths, sqlite_root, legacy):
    """host_id equal to the short name: that folder is the current one, not a legacy one."""
    engine = engine_mod.Engine(make_settings(host_id=layout.short_host_name()), paths)
    assert engine.store.base == str(legacy["folder"])
    assert engine.status()["legacy_folder"] is None
    assert engine.import_backup(latest_of="a.db", repository="b.db")["changed"]


def test_an_unset_host_id_is_resolved_when_the_engine_runs(make_settings, paths):
    """Settings written before host ids (no host_id) run as this host's FQDN (as far as it is known)."""
    engine = engine_mod.Engine(make_settings(), paths)
    assert engine.settings.host_id == "" and engine.host == layout.host_name()
