"""Encrypted backups over SFTP and of the git kind, with the real age and zstd programs, the test sshd and git:
the upload is encrypted before it leaves (nothing readable in the local staging folder or on the server, even
while a 32 MB export is written and uploaded: a thread reads every file there over and over), import and verify
download and decode with the key, and a git archive round trips as ``.git.tar.age``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import settings
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError
from ansible_collections.reposerver.backup.plugins.module_utils.layout import encode_name

import git_testlib as gt
from repobackup_testlib import HOST, give_tmp_to, numbers, sha256
from sftp_testlib import sftp_dir, sftp_server  # noqa: F401  pylint: disable=unused-import
from layers_testlib import Watcher, age_key, marker, scan, with_marker

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the SFTP account's and git owner's files)")
pytestmark = needs_root


@pytest.fixture
def key(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    return age_key(folder)


@pytest.fixture
def sftp_engine(make_settings, paths, sftp_dir):
    server, root = sftp_dir

    def make(**options):
        raw = {"destination": server.url(str(root)), "sftp_key_file": server.key_file,
               "sftp_host_key": server.host_key, "sftp_timeout": 5}
        raw.update(options)
        return engine_mod.Engine(make_settings(**raw), paths, host=HOST)
    return make


def test_an_encrypted_backup_over_sftp_is_uploaded_encrypted_imported_and_verified_with_the_key(
        sftp_engine, sftp_dir, sqlite_root, key):
    server, root = sftp_dir
    mark = marker()
    db = with_marker(sqlite_root / "app", mark, rows=400)
    engine = sftp_engine(encrypt_to=[key[1]], compression="zstd", sftp_verify_upload=True)
    done = engine.export(["app"])["repositories"]["app"]
    assert done["result"] == "ok" and done["backup"].startswith("sftp://")
    folder = root / HOST / "main" / "app"
    (data,) = [p for p in folder.iterdir() if not p.name.endswith(".manifest.json")]
    assert data.name.endswith(".sqlite3.zst.age")
    assert json.loads((folder / data.name.replace(".sqlite3.zst.age", ".manifest.json")).read_text())[
        "encryption"]["recipients"] == [key[1]]
    data_address = done["backup"].rsplit("/", 1)[0] + "/" + data.name

    assert engine.verify(data_address)["contents_checked"] is False  # downloaded, stored bytes checked, no key
    with pytest.raises(BackupError, match="is encrypted to %s; give its private key" % key[1]):
        engine.import_backup(data_address, repository="copy")
    engine.identity = Path(key[0]).read_text()
    assert engine.verify(data_address)["contents_checked"] is True
    restored = engine.import_backup(latest_of="app", repository="copy")
    assert restored["changed"] and sha256(sqlite_root / "copy") == sha256(db)
    assert numbers(sqlite_root / "copy") == list(range(400)) + [10 ** 6]
    assert os.listdir(engine._state("staging")) == [] and os.listdir(engine._state("scratch")) == []
    assert scan(mark, root, engine._state("staging")) == []


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control-plain"])
def test_nothing_readable_in_the_staging_folder_or_on_the_server_while_a_big_export_is_uploaded(
        sftp_engine, sftp_dir, sqlite_root, key, encrypted):
    server, root = sftp_dir
    mark = marker()
    with_marker(sqlite_root / "big", mark, filler_kb=32 * 1024)
    engine = sftp_engine(encrypt_to=[key[1]] if encrypted else [], compression="zstd" if encrypted else "none")
    staging = engine._state("staging")
    with Watcher(mark, root, staging) as watcher:
        assert engine.export(["big"])["result"] == "ok"
    # the watcher read the files as they were written: in the local staging folder and under a temporary
    # name on the server
    assert [p for p in watcher.staged_seen(1 << 20) if p.startswith(str(root))], sorted(watcher.seen)
    assert [p for p in watcher.staged_seen(1 << 20) if p.startswith(staging)], sorted(watcher.seen)
    after = scan(mark, root, staging)
    if encrypted:
        assert (sorted(watcher.hits), after) == ([], [])
    else:  # the control: the same scans find the marker, in staging and on the server
        assert any(p.startswith(staging) for p in watcher.hits) and any(p.startswith(str(root)) for p in watcher.hits)
        assert sorted(os.path.splitext(p)[1] for p in after) == [".json", ".sqlite3"], after


# -- git -------------------------------------------------------------------------------------------------

@pytest.fixture
def git_root(tmp_path, paths, destination):
    give_tmp_to(tmp_path, paths, destination, gt.OWNER)
    root = tmp_path / "git"
    root.mkdir(mode=0o755)
    gt.chown(root)
    return root


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control-plain"])
def test_a_git_repository_round_trips_as_git_tar_age_and_its_ref_names_stay_sealed(
        git_root, destination, paths, tmp_path, key, encrypted):
    mark = marker()
    repo = gt.bare(git_root, "team/app.git")
    gt.commit_into(repo, tmp_path / "seed", count=3, tag="v1")
    gt.commit_into(repo, tmp_path / "seed", count=1, branch=mark)  # the marker as a branch name: in the refs
    wanted = gt.refs(repo)

    def make(**options):
        raw = {"kind": "git", "git_root": str(git_root), "destination": str(destination),
               "encrypt_to": [key[1]] if encrypted else []}
        raw.update(options)
        return engine_mod.Engine(settings.validate(raw), paths, host=HOST)
    engine = make()
    done = engine.export(["team/app.git"])["repositories"]["team/app.git"]
    assert done["result"] == "ok", done
    folder = destination / HOST / "main" / encode_name("team/app.git")
    (data,) = [p for p in folder.iterdir() if not p.name.endswith(".manifest.json")]
    found = scan(mark, destination)
    if not encrypted:  # the control: a plain archive and its manifest name the branch
        assert data.name.endswith(".git.tar") and found
        return
    assert data.name.endswith(".git.tar.age") and found == []
    with pytest.raises(BackupError, match="is encrypted to %s" % key[1]):
        engine.import_backup(str(data), repository="restored/app.git")
    engine.identity = Path(key[0]).read_text()
    assert engine.verify(str(data))["contents_checked"] is True
    assert engine.import_backup(str(data), repository="restored/app.git")["changed"]
    restored = str(git_root / "restored" / "app.git")
    assert gt.refs(restored) == wanted
    check = gt.run(["git", "--git-dir=" + restored, "fsck", "--full", "--no-dangling"], user=gt.OWNER)
    assert check.returncode == 0, check.stderr
    drill = engine.drill(["team/app.git"])["repositories"]["team/app.git"]
    assert drill["result"] == "ok", drill
