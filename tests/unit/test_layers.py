"""Compressed and encrypted backups (layers.py) of the SQLite kind, with the real age, zstd and sqlite3 programs:
round trips, refusals, bad recipients, rotation, the plaintext scan, a kill during an encrypted export, and
the README's standard-tools commands run as they are written."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, engine_mod, errors, layers, settings  # noqa: F401
from repobackup_testlib import HOST, kill_export_when, make_db, numbers, rehash, sha256, small_tmpfs
from layers_testlib import (Watcher, age_encrypt, age_key, marker, readme_block, readme_file_name, scan,
                            ssh_key, with_marker)


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    return [age_key(folder, "key%d.txt" % n) for n in (1, 2)]


def read(path) -> str:
    return Path(path).read_text()


def backup_files(destination, name: str) -> tuple:
    """(data files, manifests) of repository ``name``, oldest first (by their sequence)."""
    folder = destination / HOST / "main" / name
    manifests = sorted((folder / n for n in os.listdir(folder) if n.endswith(".manifest.json")),
                       key=lambda m: manifest_at(m)["sequence"])
    return [folder / manifest_at(m)["data_file"] for m in manifests], manifests


def manifest_at(path) -> dict:
    return json.loads(Path(path).read_text())


# -- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("compression, encrypted, suffix", [
    ("zstd", False, ".sqlite3.zst"), ("none", True, ".sqlite3.age"), ("zstd", True, ".sqlite3.zst.age")])
def test_a_round_trip_with_each_layer_alone_and_both(make_engine, sqlite_root, destination, keys, compression,
                                                     encrypted, suffix):
    mark = marker()
    db = with_marker(sqlite_root / "app", mark, rows=300)
    options = {"compression": compression, "encrypt_to": [keys[0][1]] if encrypted else []}
    eng = make_engine(**options)
    report = eng.export(["app"])["repositories"]["app"]
    assert report["result"] == "ok", report
    (data,), (manifest_file,) = backup_files(destination, "app")
    assert data.name.endswith(suffix) and not data.name.endswith(".sqlite3" + suffix)
    manifest = manifest_at(manifest_file)
    assert manifest.get("compression") == ("zstd" if compression == "zstd" else None)
    if encrypted:
        assert manifest["encryption"] == {"scheme": "age", "recipients": [keys[0][1]]}
        assert not {"facts", "plain_sha256", "plain_size", "content_sha256"} & set(manifest)
        assert manifest["sealed"].startswith(layers.ARMOR_BEGIN)
    else:  # compressed only: nothing to hide, the facts stay readable
        assert "encryption" not in manifest and "sealed" not in manifest
        assert manifest["plain_sha256"] == sha256(db)
    assert (mark in data.read_bytes().decode("latin-1")) is False
    # verify: the stored bytes without a key; the content too with it
    checked = eng.verify(str(data))
    assert checked["contents_checked"] is (not encrypted)
    eng.identity = read(keys[0][0])
    assert eng.verify(str(data))["contents_checked"] is True
    # imported under another name, byte for byte what was backed up
    done = eng.import_backup(str(data), repository="copy")
    assert done["changed"] and sha256(sqlite_root / "copy") == sha256(db)
    assert len(numbers(sqlite_root / "copy")) == 301
    assert not os.listdir(eng._state("scratch"))  # the decoded copy went with the import


def test_an_ssh_ed25519_recipient_is_read_back_with_the_ssh_private_key(make_engine, sqlite_root, tmp_path):
    private, public = ssh_key(tmp_path)
    make_db(sqlite_root / "app", range(20))
    eng = make_engine(encrypt_to=[public], compression="zstd")
    assert eng.export(["app"])["result"] == "ok"
    manifest = eng.store.backups("app")[-1]
    assert manifest["encryption"]["recipients"] == [" ".join(public.split()[:2])]  # the comment is not kept
    os.unlink(sqlite_root / "app")
    eng.identity = read(private)
    assert eng.import_backup(latest_of="app")["changed"]
    assert numbers(sqlite_root / "app") == list(range(20))


# -- refusals ---------------------------------------------------------------------------------------

def test_no_identity_or_a_wrong_one_is_refused_naming_the_recipients_and_the_live_database_stays(
        make_engine, sqlite_root, keys):
    db = make_db(sqlite_root / "app", range(100))
    eng = make_engine(encrypt_to=[keys[0][1]], compression="zstd")
    assert eng.export(["app"])["result"] == "ok"
    make_db(db, range(100, 150))  # the live database moves on
    before = sha256(db)

    with pytest.raises(errors.BackupError) as refused:
        eng.import_backup(latest_of="app", force=True)
    assert "is encrypted to %s; give its private key" % keys[0][1] in str(refused.value)
    eng.identity = read(keys[1][0])
    with pytest.raises(errors.BackupError) as refused:
        eng.import_backup(latest_of="app", force=True)
    assert ("is encrypted to %s, and the identity given matches none of them; nothing was changed."
            % keys[0][1]) in str(refused.value)
    eng.identity = "AGE-SECRET-KEY-1NOTAKEY\n"  # not a key at all: refused in a sentence, never a crash
    with pytest.raises(errors.BackupError) as refused:
        eng.import_backup(latest_of="app", force=True)
    assert str(refused.value).endswith(".") and "Traceback" not in str(refused.value)
    assert sha256(db) == before and len(numbers(db)) == 150
    assert not os.listdir(eng._state("scratch"))
    eng.identity = read(keys[0][0])
    assert eng.import_backup(latest_of="app", force=True)["replaced"]
    assert numbers(db) == list(range(100))


def bad_recipients(tmp_path) -> dict:
    dummy, good = age_key(tmp_path, "good.txt")
    swapped = good[:-1] + ("q" if good[-1] != "q" else "p")  # one character off: the checksum fails
    return {
        "age1 bad checksum": (swapped, "is not a valid age public key"),
        "ecdsa": (ssh_key(tmp_path, "ecdsa")[1], "ecdsa-sha2-nistp256, which age does not accept"),
        "ssh-rsa 1024": (ssh_key(tmp_path, "rsa", 1024)[1], "the key has 1024 bits; age needs 2048 or more"),
        "garbage": ("not a key at all", "is not a recipient"),
        "age1 too short": ("age1qqqq", "is not a valid age public key"),
        "ssh-ed25519 not base64": ("ssh-ed25519 AAAA***", "the key is not base64"),
    }


def test_bad_recipients_are_refused_in_one_sentence_by_the_settings(tmp_path, destination, sqlite_root):
    for label, (value, why) in bad_recipients(tmp_path).items():
        with pytest.raises(errors.SettingsError) as refused:
            settings.validate({"destination": str(destination), "sqlite_root": str(sqlite_root),
                               "encrypt_to": [value]})
        text = str(refused.value)
        assert why in text and not re.search(r"\. [A-Z]", text) and text.endswith("."), (label, text)
        assert value[:40] in text, (label, text)
    with pytest.raises(errors.SettingsError, match="compression 'gzip' is not allowed; use none or zstd"):
        settings.validate({"destination": str(destination), "compression": "gzip"})
    good = settings.validate({"destination": str(destination), "encrypt_to": [ssh_key(tmp_path, "rsa", 2048)[1]]})
    assert good.encrypt_to[0].startswith("ssh-rsa ")


def test_a_drill_identity_file_readable_by_others_fails_drills_of_encrypted_backups_saying_so(
        make_engine, sqlite_root, keys, destination):
    make_db(sqlite_root / "secret", range(30))
    make_db(sqlite_root / "plain", range(5))
    make_engine(encrypt_to=[keys[0][1]]).export(["secret"])
    make_engine().export(["plain"])
    os.chmod(keys[0][0], 0o644)
    done = make_engine(drill_identity_file=keys[0][0]).drill()
    assert done["repositories"]["plain"]["result"] == "ok"  # a plain backup needs no key
    failed = done["repositories"]["secret"]
    assert failed["result"] == "failed" and "has mode 0644" in failed["error"] and "chmod 600" in failed["error"]
    os.chmod(keys[0][0], 0o600)
    done = make_engine(drill_identity_file=keys[0][0]).drill()
    assert done["result"] == "ok", done
    # without a kept key, a drill of an encrypted backup says which key it needs
    failed = make_engine().drill(["secret"])["repositories"]["secret"]
    assert failed["result"] == "failed" and keys[0][1] in failed["error"]


@pytest.fixture
def small_state(paths):
    """The state folder on a tmpfs of 6 MiB (where a drill decodes and SQLite restores into scratch)."""
    with small_tmpfs(paths.state_root, mode=0o755) as mount:
        yield mount


@pytest.mark.parametrize("encrypted", [False, True], ids=["zstd", "zstd+age"])
def test_a_drill_needs_room_for_the_decoded_plaintext_and_says_so_before_it_starts(
        make_engine, sqlite_root, keys, small_state, encrypted):
    # 3.5 MiB of text that zstd makes about a hundred times smaller: the stored size would pass any check,
    # but decoding (3.5) and restoring (3.5) in the 6 MiB scratch would fill it midway.
    db = sqlite_root / "notes"
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO note (body) VALUES (?)", [("the same line of a note, again " * 30,)] * 4000)
    conn.close()
    options = {"compression": "zstd", "encrypt_to": [keys[0][1]] if encrypted else []}
    done = make_engine(**options).export(["notes"])
    assert done["result"] == "ok", done
    assert done["repositories"]["notes"]["size"] < os.path.getsize(db) // 20

    engine = make_engine(drill_identity_file=keys[0][0], **options)
    failed = engine.drill(["notes"])["repositories"]["notes"]
    scratch = engine._state("scratch")
    assert failed["result"] == "failed"
    assert failed["error"].startswith("Not enough free space for the drill at %s:" % scratch), failed["error"]
    assert "nothing was restored" in failed["error"]
    assert not os.path.exists(scratch) or os.listdir(scratch) == []


def test_manifests_with_bad_or_inconsistent_layers_are_skipped_and_reported_never_a_crash(
        make_engine, sqlite_root, destination, keys):
    db = make_db(sqlite_root / "app", range(10))
    eng = make_engine(encrypt_to=[keys[0][1]])
    for more in (range(10, 20), range(20, 30), range(30, 40)):
        assert eng.export(["app"])["result"] == "ok"
        make_db(db, more)
    datas, manifests = backup_files(destination, "app")
    broken = {
        manifests[1]: lambda m: m["encryption"].update(recipients=["age1notakey"]),
        manifests[2]: lambda m: m.pop("encryption"),  # sealed without encryption
    }
    for path, spoil in broken.items():
        doc = manifest_at(path)
        spoil(doc)
        path.write_text(json.dumps(doc))
    os.unlink(db)
    eng.identity = read(keys[0][0])
    done = eng.import_backup(latest_of="app")  # the newest two are passed over: the first is imported
    assert done["backup"] == str(manifests[0]) and numbers(db) == list(range(10))
    report = eng.export(["app"])["repositories"]["app"]
    assert report["result"] == "ok"
    reasons = " ".join(report["skipped_backups"])
    assert "encryption" in reasons and "sealed and encryption go together" in reasons, report["skipped_backups"]
    assert eng.status()["repositories"]["app"]["backups_kept"] >= 2
    for path in broken:
        with pytest.raises(errors.BackupError, match="is not valid"):
            eng.verify(str(path))
    # encryption recorded but the sealed facts removed: the same
    doc = manifest_at(manifests[0])
    doc.pop("sealed")
    manifests[0].write_text(json.dumps(doc))
    with pytest.raises(errors.BackupError, match="sealed and encryption go together"):
        eng.verify(str(manifests[0]))


def test_data_whose_plaintext_differs_from_the_sealed_sha256_is_refused_at_import(
        make_engine, sqlite_root, destination, keys, tmp_path):
    db = make_db(sqlite_root / "app", range(40))
    eng = make_engine(encrypt_to=[keys[0][1]], compression="zstd")
    assert eng.export(["app"])["result"] == "ok"
    (data,), (manifest_file,) = backup_files(destination, "app")
    other = make_db(tmp_path / "other.db", range(999, 1010))
    data.write_bytes(age_encrypt(Path(other).read_bytes(), keys[0][1], compress=True))  # same key, other content
    rehash(str(manifest_file))  # the stored bytes' checksum agrees again
    make_db(db, range(40, 45))
    before = sha256(db)
    assert eng.verify(str(data))["contents_checked"] is False  # without a key: the stored bytes are right...
    eng.identity = read(keys[0][0])
    with pytest.raises(errors.RepoBackupError, match="recorded for the plaintext"):
        eng.verify(str(data))
    with pytest.raises(errors.RepoBackupError, match="sha256 is not the one its manifest recorded for the plaintext"):
        eng.import_backup(str(data), force=True)  # ...the plaintext is not
    assert sha256(db) == before
    drill = eng.drill(["app"])["repositories"]["app"]
    assert drill["result"] == "failed" and "recorded for the plaintext" in drill["error"]


# -- rotation ---------------------------------------------------------------------------------------

def test_rotation_new_recipients_apply_to_new_backups_and_each_backup_keeps_its_own(
        make_engine, sqlite_root, destination, keys):
    (key_a, public_a), (key_b, public_b) = keys
    db = make_db(sqlite_root / "app", range(10))
    first = make_engine(encrypt_to=[public_a]).export(["app"])["repositories"]["app"]
    make_db(db, range(10, 20))
    second = make_engine(encrypt_to=[public_b], compression="zstd").export(["app"])["repositories"]["app"]
    older, newer = first["backup"], second["backup"]
    assert (first["encrypted_to"], second["encrypted_to"]) == ([public_a], [public_b])  # what each one needs
    assert make_engine().status()["repositories"]["app"]["last"]["encrypted_to"] == [public_b]
    datas, manifests = backup_files(destination, "app")
    assert [manifest_at(m)["encryption"]["recipients"] for m in manifests] == [[public_a], [public_b]]
    assert [str(m) for m in manifests] == [older, newer]

    eng = make_engine(encrypt_to=[public_b])
    for backup, right, wrong, wrong_public in ((older, key_a, key_b, public_a), (newer, key_b, key_a, public_b)):
        eng.identity = read(wrong)
        with pytest.raises(errors.BackupError, match="encrypted to %s, and the identity given" % wrong_public):
            eng.import_backup(backup, repository="copy")
        eng.identity = read(right)
        eng.import_backup(backup, repository="copy", force=True)
    assert numbers(sqlite_root / "copy") == list(range(20))
    listed = {b["manifest_path"]: b["encryption"]["recipients"] for b in eng.store.backups("app")}
    assert listed == {older: [public_a], newer: [public_b]}


# -- the plaintext scan ------------------------------------------------------------------------------

@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control-plain"])
def test_no_plaintext_reaches_the_destination_during_or_after_a_run(make_engine, sqlite_root, destination, keys,
                                                                    encrypted):
    mark = marker()
    with_marker(sqlite_root / "app", mark, rows=200, filler_kb=2048)
    eng = make_engine(encrypt_to=[keys[0][1]] if encrypted else [], compression="zstd" if encrypted else "none")
    with Watcher(mark, destination) as watcher:
        assert eng.export(["app"])["result"] == "ok"
    after = scan(mark, destination)
    if encrypted:
        assert (sorted(watcher.hits), after) == ([], []) and watcher.reads > 0
        assert not scan(mark, eng._state("scratch"))  # the snapshot went at once
    else:  # the positive control: the same scan finds the marker in a plain backup (its data, its manifest's facts)
        assert sorted(os.path.splitext(p)[1] for p in after) == [".json", ".sqlite3"], after
        assert watcher.hits


# -- a kill during an encrypted export --------------------------------------------------------------

def _plain_in_scratch(scratch: str) -> bool:
    try:
        for entry in os.listdir(scratch):
            folder = os.path.join(scratch, entry)
            if any(os.path.getsize(os.path.join(folder, n)) > (1 << 20) for n in os.listdir(folder)):
                return True
    except OSError:
        pass
    return False


def test_sigkill_during_an_encrypted_export_leaves_no_partial_file_no_plaintext_and_the_next_run_cleans_up(
        make_settings, write_settings, sqlite_root, destination, paths, keys):
    mark = marker()
    with_marker(sqlite_root / "big.db", mark, rows=100, filler_kb=48 * 1024)
    config = make_settings(encrypt_to=[keys[0][1]], compression="zstd", keep_last=5)
    write_settings(config)
    engine = engine_mod.Engine(config, paths)  # this host's name, as the child's
    scratch = engine._state("scratch")
    # killed while the snapshot is in the scratch folder, being written or encoded; if it finished first, again
    killed, out, err = kill_export_when(paths, lambda: _plain_in_scratch(scratch),
                                        lambda: shutil.rmtree(destination / engine.host))
    assert killed, "the export always finished before it could be killed: %s %s" % (out, err)

    left = [n for n in os.listdir(scratch) if n.startswith("%d-" % killed)]
    assert left, os.listdir(scratch)
    folder = destination / engine.host / "main" / "big.db"
    published = [n for n in os.listdir(folder) if not n.startswith(".")] if folder.exists() else []
    assert published == []  # no partial file under a backup's name, no manifest
    assert scan(mark, destination) == []

    again = engine.export()
    assert again["result"] == "ok", again
    assert os.listdir(scratch) == []
    assert not [n for n in os.listdir(folder) if n.startswith(".")]
    assert scan(mark, destination) == []
    log = Path(paths.log_file("main")).read_text()
    assert "removed %s" % os.path.join(scratch, left[0]) in log


# -- the README's commands, as written ---------------------------------------------------------------

def test_the_readme_sqlite_commands_restore_an_encrypted_backup_with_the_standard_tools(
        make_engine, sqlite_root, destination, keys, tmp_path):
    db = make_db(sqlite_root / "app", range(250))
    assert make_engine(encrypt_to=[keys[0][1]], compression="zstd").export(["app"])["result"] == "ok"
    (data,), dummy = backup_files(destination, "app")
    block = readme_block(str(REPO_ROOT / "README.md"), "standard-tools-sqlite")
    work = tmp_path / "restore"
    work.mkdir()
    shutil.copy(keys[0][0], work / "key.txt")
    shutil.copy(data, work / readme_file_name(block, ".sqlite3.zst.age"))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=str(work), capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    restored = [n for n in os.listdir(work) if n.endswith(".sqlite3") and n != data.name]
    assert len(restored) == 1
    assert sha256(work / restored[0]) == sha256(db) and numbers(work / restored[0]) == list(range(250))
    assert stat.S_ISREG(os.stat(work / restored[0]).st_mode)
