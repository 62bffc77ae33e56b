# -*- coding: utf-8 -*-
"""Manifests and data files are untrusted input: a bad one is a corrupt backup, skipped and reported, never fatal.

Field by field checks of ``parse_manifest``, data files that are no regular file, and two seeded fuzz runs over a
real destination made by real runs of the engine (SQLite, three repositories).  After every mutation: runs carry on
(no exception, every repository backed up, status written), good backups are never pruned, and ``import
latest_of`` never picks a bad one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import stat

import pytest
from repobackup_testlib import make_db, numbers

from ansible_collections.reposerver.backup.plugins.module_utils import store
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError

REPOS = ("a.db", "b.db", "c.db")
REQUIRED = ("format", "kind", "repository", "sha256", "size", "data_file", "start")


# -- the parser, field by field ------------------------------------------------------------------------

def _valid():
    return {"format": 1, "host": "h", "server": "main", "kind": "sqlite", "server_version": "3.40.1",
            "repository": "r", "start": "2026-12-01T01:00:00Z", "end": "2026-12-01T01:00:01Z", "in_use": "disconnect",
            "sessions_ended": None, "size": 10, "sha256": "0" * 64, "engine_version": "1",
            "data_file": "20261201T010000Z.sqlite3", "sequence": 3}


def _parse(doc):
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return store.parse_manifest(data, "/d/h/main/r/20261201T010000Z.manifest.json")


def test_a_valid_manifest_and_one_of_an_older_engine_are_read():
    assert _parse(_valid())["path"] == "/d/h/main/r/20261201T010000Z.sqlite3"
    older = _valid()
    for key in ("sequence", "end", "host", "server", "in_use", "sessions_ended"):
        del older[key]
    assert "sequence" not in _parse(older)
    assert _parse(dict(_valid(), repository=None, content="globals"))["repository"] is None


@pytest.mark.parametrize("key, value, fragment", [
    ("format", True, "format True"),
    ("format", 1.0, "format 1.0"),
    ("kind", "svn", "kind 'svn' is not one of sqlite, postgresql, git"),
    ("kind", ["sqlite"], "kind ['sqlite']"),
    ("repository", "", "repository ''"),
    ("repository", 7, "repository 7"),
    ("repository", "a\0b", "repository 'a\\x00b'"),
    ("sha256", "A" * 64, "64 lowercase hexadecimal"),
    ("sha256", "0" * 63, "64 lowercase hexadecimal"),
    ("sha256", None, "sha256 None"),
    ("size", "4096", "size '4096' is not a whole number of bytes"),
    ("size", True, "size True"),
    ("size", -1, "size -1"),
    ("size", 1.5, "size 1.5"),
    ("size", 2 ** 63, "size 9223372036854775808"),
    ("data_file", "../20261201T010000Z.sqlite3", "outside its folder"),
    ("data_file", "sub/20261201T010000Z.sqlite3", "outside its folder"),
    ("data_file", "..", "outside its folder"),
    ("data_file", ".20261201T010000Z.sqlite3", "outside its folder"),
    ("data_file", "20261201T010000Z.sqlite3\0", "is not a file name"),
    ("data_file", "", "is not a file name"),
    ("data_file", 5, "is not a file name"),
    ("data_file", "20261201T010000Z.manifest.json", "outside its folder"),
    ("data_file", "20261130T010000Z.sqlite3", "not named after its manifest"),
    ("start", "2026-13-01T01:00:00Z", "month must be in 1..12"),
    ("start", "2026-02-30T01:00:00Z", "start '2026-02-30T01:00:00Z' is not an ISO 8601 time in UTC"),
    ("start", "2026-12-01T01:00:00", "is not in UTC"),
    ("start", "2026-12-01T01:00:00+02:00", "is not in UTC"),
    ("start", "9999-12-31T23:59:59Z", "between the years 1970 and 9998"),
    ("start", 20261201, "start 20261201"),
    ("end", "yesterday", "end 'yesterday'"),
    ("sequence", 0, "sequence 0 is not a whole number from 1"),
    ("sequence", True, "sequence True"),
    ("sequence", "3", "sequence '3'"),
    ("sequence", 2 ** 63, "sequence 9223372036854775808"),
    ("host", 5, "host 5 is not a host name"),
    ("server", None, "server None"),
    ("content_sha256", "x", "content_sha256 'x'"),
    ("sessions_ended", -1, "sessions_ended -1"),
    ("in_use", 1, "in_use 1"),
])
def test_every_field_the_engine_uses_is_checked(key, value, fragment):
    with pytest.raises(BackupError) as info:
        _parse(dict(_valid(), **{key: value}))
    assert fragment in str(info.value) and ("is not valid" in str(info.value) or key == "format")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data, fragment", [
    (b"[" * 100000, "cannot be read"),
    (b'{"format": 1, "size": ' + b"9" * 5000 + b"}", "Manifest /d/h/main/r/"),
    (b"null", "not a repobackup manifest"),
    (json.dumps(dict(_valid(), size="x" * 10000)).encode(), "..."),
])
def test_hostile_documents_are_refused_in_one_short_sentence(data, fragment):
    try:
        _parse(data)
    except BackupError as exc:
        assert fragment in str(exc) and len(str(exc)) < 400
    else:
        pytest.fail("accepted")


# -- a real destination, made by real runs ---------------------------------------------------------------

def _sha(path):
    """sha256 of a regular file (never through a link), or None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class Bench:
    """An engine over three SQLite repositories, and what each of its backups held when it was published."""

    def __init__(self, make_engine, sqlite_root, tmp_path, keep_last):
        self.root = sqlite_root
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        for name in REPOS:
            make_db(sqlite_root / name, [0])
        self.engine = make_engine(repositories=list(REPOS), keep_last=keep_last)
        self.rows = {name: [0] for name in REPOS}
        self.published = {name: [] for name in REPOS}  # oldest first: dicts manifest, data, sha256, rows, state
        self.runs = 0

    def run(self):
        """One scheduled run after a change in every repository: it must back each one up and write status."""
        self.runs += 1
        for name in REPOS:
            make_db(self.root / name, [self.runs])
            self.rows[name].append(self.runs)
        status_file = os.path.join(self.engine.state_dir, "status.json")
        if os.path.exists(status_file):
            os.unlink(status_file)
        done = self.engine.run(scheduled=True)
        assert done["result"] == "ok", done
        with open(status_file, encoding="utf-8") as handle:
            status = json.load(handle)
        assert status["last_run"]["result"] == "ok" and status["last_run"]["repositories"] == sorted(REPOS)
        for name in REPOS:
            result = done["repositories"][name]
            assert result["result"] == "ok" and os.path.exists(result["backup"]), result
            self.published[name].append({"manifest": result["backup"], "data": result["data_file_path"],
                                         "sha256": result["sha256"], "rows": list(self.rows[name]),
                                         "state": "good"})
        return done

    def present(self, name):
        """Backups whose manifest is there (a pruned backup's stamp may be taken again by a later one)."""
        return [b for b in self.published[name] if not b.get("pruned") and os.path.lexists(b["manifest"])]

    def latest(self, name, restore=False):
        """``import latest_of``: the backup it picks (dry run, or a real restore checked row by row)."""
        target = "restored.db"
        if restore:
            done = self.engine.import_backup(latest_of=name, repository=target, force=True)
        else:
            done = self.engine.import_backup(latest_of=name, repository=target, force=True, dry_run=True)
        picked = [b for b in self.published[name] if b["manifest"] == done["backup"] and not b.get("pruned")]
        assert len(picked) == 1 and done["sha256"] == picked[0]["sha256"], done
        if restore and done["changed"]:
            assert numbers(self.root / target) == picked[0]["rows"]
        return picked[0]


# -- mutations ---------------------------------------------------------------------------------------------

BAD_TIMES = ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T25:00:00Z", "0000-01-01T00:00:00Z",
             "9999-12-31T23:59:59Z", "2026-01-01", "2026-01-01T00:00:00", "2026-01-01T00:00:00+05:00",
             "yesterday", "", 20260101, None, ["2026-01-01T00:00:00Z"]]
BAD_NAMES = ["../x.sqlite3", "/etc/passwd", "..", ".", "", "a\0b", ".hidden.sqlite3", "sub/x", "x" * 300, None, 3]
# Values no correct parser may accept, per field (a manifest holding one is not a backup at all).
INVALID = {
    "format": [None, True, 2, "1", 1.0, 0, 10 ** 40],
    "kind": [None, 1, "", "svn", "SQLITE", ["sqlite"], {"kind": "sqlite"}],
    "repository": [1, "", "other.db", "../a.db", "a.db\0", [], True],
    "sha256": [None, "", "A" * 64, "g" * 64, "0" * 63, "0" * 65, 123],
    "size": [None, -1, "12", 1.5, True, 2 ** 63, 10 ** 40, [], float("inf"), float("nan")],
    "data_file": BAD_NAMES,
    "start": BAD_TIMES,
    "end": BAD_TIMES,
    "sequence": [0, -1, True, "5", 1.5, None, 2 ** 63, 10 ** 40],
    "host": [1, None, "", [], "h\0"],
    "server": [1, None, "", {}],
    "content_sha256": [1, "", "X" * 64],
    "sessions_ended": [-1, True, "0", 1.5],
    "in_use": [1, None, []],
}
# Anything at all, for any field (some of these are valid somewhere).
GARBAGE = [None, True, False, 0, -1, 1, 1.5, "", "x", [], {}, "1", 2 ** 64, -(2 ** 63), 10 ** 40, float("inf"),
           "ab" * 20000, {"nested": [1, {"deep": None}]}]
WHOLE_FILES = [b"", b"{", b"[]", b"null", b"\xff\xfe\x00", b"[" * 100000, b"{}", b'{"format": 2}', b"\0" * 64,
               b'{"format": 1, "size": ' + b"9" * 5000 + b"}"]


def _load(path):
    with open(path, "rb") as handle:
        return handle.read()


def _save(path, data):
    if os.path.lexists(path):
        _remove(path)
    with open(path, "wb") as handle:
        handle.write(data)


def _document(path):
    """The manifest at ``path`` as a dict, or None when an earlier change left no JSON object there."""
    try:
        doc = json.loads(_load(path))
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _rewrite(path, change):
    doc = _document(path)
    if doc is None:
        _save(path, b"{")  # still not a manifest
        return
    change(doc)
    _save(path, json.dumps(doc).encode())


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _replace_with_dir(path, rng):
    _remove(path)
    os.mkdir(path)
    if rng.random() < 0.5:
        with open(os.path.join(path, "inside"), "wb") as handle:
            handle.write(b"x")


def _replace_with_link(path, target):
    _remove(path)
    os.symlink(target, path)


def _copy_outside(bench, path, rng):
    copy = str(bench.outside / ("copy-%d" % rng.randrange(10 ** 9)))
    shutil.copyfile(path, copy)
    return copy


def invalidate_manifest(bench, rng, name, backup):
    """Make a backup's manifest one that no correct parser may accept; returns what was done."""
    path = backup["manifest"]
    if not os.path.isfile(path) or os.path.islink(path):
        _save(path, b"{")
        return "garbage over a non-file"
    how = rng.choice(["field", "field", "field", "delete", "whole", "dir", "link", "fifo", "neighbour"])
    if how == "field":
        key = rng.choice(sorted(INVALID))
        value = rng.choice(INVALID[key])
        _rewrite(path, lambda doc: doc.__setitem__(key, value))
        return "%s=%r" % (key, value if not isinstance(value, str) else value[:20])
    if how == "delete":
        key = rng.choice(REQUIRED)
        _rewrite(path, lambda doc: doc.pop(key, None))
        return "no %s" % key
    if how == "whole":
        data = rng.choice(WHOLE_FILES)
        _save(path, data)
        return "whole file %r" % data[:10]
    if how == "dir":
        _replace_with_dir(path, rng)
        return "manifest is a folder"
    if how == "link":
        _replace_with_link(path, _copy_outside(bench, path, rng))  # a valid manifest, behind a link
        return "manifest is a link"
    if how == "fifo":
        os.unlink(path)
        os.mkfifo(path)
        return "manifest is a FIFO"
    # Name another backup's data file: pruning this one must never take that one's data with it.
    others = [b for b in bench.present(name) if b is not backup]
    if not others:
        _save(path, b"{")
        return "garbage"
    neighbour = rng.choice(others)
    _rewrite(path, lambda doc: doc.update(data_file=os.path.basename(neighbour["data"]), sha256=neighbour["sha256"]))
    return "names a neighbour's data file"


def damage_data(bench, rng, backup):
    """Make a backup's data file anything but what its manifest recorded; returns (what was done, still counted)."""
    path = backup["data"]
    if not os.path.lexists(path):
        return "already gone", False
    if not os.path.isfile(path) or os.path.islink(path):
        _replace_with_dir(path, rng)
        return "data is a folder", True
    how = rng.choice(["truncate", "flip", "append", "dir", "link", "dangling", "fifo", "delete"])
    if how == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(rng.randrange(os.path.getsize(path)))
    elif how == "flip":
        data = bytearray(_load(path))
        for dummy in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        if _sha_bytes(data) == backup["sha256"]:
            data.append(0)
        _save(path, bytes(data))
    elif how == "append":
        with open(path, "ab") as handle:
            handle.write(b"\0" * rng.randint(1, 4096))
    elif how == "dir":
        _replace_with_dir(path, rng)
    elif how == "link":
        _replace_with_link(path, _copy_outside(bench, path, rng))  # the right bytes, behind a link
    elif how == "dangling":
        _replace_with_link(path, str(bench.outside / "nothing-here"))
    elif how == "fifo":
        os.unlink(path)
        os.mkfifo(path)
    else:
        os.unlink(path)
        return "data deleted", False
    return "data " + how, True


def _sha_bytes(data):
    return hashlib.sha256(data).hexdigest()


def anything(bench, rng, name, backup):
    """Phase one only: any change at all, the harmless ones included (flipped bytes, any value anywhere)."""
    path = backup["manifest"]
    if not os.path.isfile(path) or os.path.islink(path) or rng.random() < 0.4:
        if rng.random() < 0.5:
            return invalidate_manifest(bench, rng, name, backup)
        return damage_data(bench, rng, backup)[0]
    how = rng.choice(["flip", "flip", "any", "drop", "huge"])
    if how == "flip":
        data = bytearray(_load(path))
        for dummy in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        _save(path, bytes(data))
        return "flipped bits"
    if how == "any":
        key = rng.choice(sorted(INVALID) + ["server_version", "engine_version", "extra"])
        value = rng.choice(GARBAGE)
        _rewrite(path, lambda doc: doc.__setitem__(key, value))
        return "%s=any" % key
    if how == "drop":
        key = rng.choice(sorted(INVALID))
        _rewrite(path, lambda doc: doc.pop(key, None))
        return "drop %s" % key
    if _document(path) is None:
        _save(path, b"{")
        return "garbage"
    text = _load(path).decode()
    key = rng.choice(["size", "sequence", "format"])
    _save(path, re.sub(r'("%s": )(-?\d+)' % key, lambda m: m.group(1) + "9" * rng.choice([19, 40, 5000]), text)
          .encode())
    return "huge %s" % key


def _pick(bench, rng, name):
    """A backup to change: the newest half the time (that is what import looks at first)."""
    present = bench.present(name)
    return present[-1] if rng.random() < 0.5 else rng.choice(present)


# -- fuzz: any change, retention never by policy -----------------------------------------------------------

def test_fuzzed_manifests_and_data_files_never_stop_a_run_and_never_win_an_import(make_engine, sqlite_root, tmp_path):
    rng = random.Random(20261203)
    bench = Bench(make_engine, sqlite_root, tmp_path, keep_last=100000)  # nothing goes by policy here
    bench.run()
    bench.run()
    untouched = {b["manifest"] for name in REPOS for b in bench.published[name]}
    mutations = 0
    skipped_reported = 0
    for round_no in range(110):
        for dummy in range(3):
            name = rng.choice(REPOS)
            backup = _pick(bench, rng, name)
            anything(bench, rng, name, backup)
            untouched.discard(backup["manifest"])
            backup["state"] = "touched"
            mutations += 1
        for name in REPOS:  # import never picks a bad one, and never passes over the newest untouched one
            good = [b for b in bench.published[name] if b["manifest"] in untouched]
            try:
                picked = bench.latest(name, restore=round_no % 25 == 0)
            except BackupError as exc:
                assert "no good backup" in str(exc) and not good
                continue
            assert _sha(picked["data"]) == picked["sha256"], picked
            if picked["manifest"] in untouched:
                assert picked is good[-1]
        done = bench.run()
        skipped_reported += sum(len(r.get("skipped_backups", ())) for r in done["repositories"].values())
        for name in REPOS:  # good backups are never pruned: nothing is, by policy, here
            for backup in bench.published[name]:
                if backup["manifest"] in untouched or backup is bench.published[name][-1]:
                    assert os.path.isfile(backup["manifest"]), backup
                    assert _sha(backup["data"]) == backup["sha256"], backup
                    untouched.add(backup["manifest"])
        info = bench.engine.status()
        for name in REPOS:
            success = info["repositories"][name]["last_success"]
            assert success is None or os.path.lexists(success["backup"])
    assert mutations >= 300 and skipped_reported > 0
    with open(bench.engine.paths.log_file("main"), encoding="utf-8") as handle:
        log = handle.read()
    assert "corrupt backup skipped" in log and "internal error" not in log


# -- fuzz: bad neighbours and retention ------------------------------------------------------------------

def _check_retention(bench, keep_last):
    """Per repository: of the backups retention counts (valid manifest, data present: good or damaged), the
    newest ``keep_last`` by publish order are there and the older ones are gone; a backup whose manifest is not
    valid is never removed; the data of every backup that is there and good is whole."""
    for name in REPOS:
        counted = [b for b in bench.published[name] if b["state"] in ("good", "damaged") and not b.get("pruned")]
        for index, backup in enumerate(counted):
            if index < len(counted) - keep_last:
                assert not os.path.lexists(backup["manifest"]), (backup, "should be pruned")
                backup["pruned"] = True
            else:
                assert os.path.lexists(backup["manifest"]), (backup, "pruned but among the newest")
        for backup in bench.published[name]:
            if backup["state"] == "invalid":
                assert os.path.lexists(backup["manifest"]), (backup, "not a backup, yet removed")
                assert backup.get("data_gone") or os.path.lexists(backup["data"]), (backup, "its data removed")
            if backup["state"] == "good" and not backup.get("pruned"):
                assert _sha(backup["data"]) == backup["sha256"], (backup, "a good backup lost its data")


def test_fuzzed_neighbours_never_make_retention_remove_a_good_backup(make_engine, sqlite_root, tmp_path):
    rng = random.Random(9)
    keep_last = 3
    bench = Bench(make_engine, sqlite_root, tmp_path, keep_last=keep_last)
    for dummy in range(keep_last + 1):
        bench.run()
        _check_retention(bench, keep_last)
    mutations = 0
    for round_no in range(110):
        for dummy in range(2):
            name = rng.choice(REPOS)
            backup = _pick(bench, rng, name)
            if rng.random() < 0.5:
                invalidate_manifest(bench, rng, name, backup)
                backup["state"] = "invalid"
            else:
                dummy_what, counted = damage_data(bench, rng, backup)
                backup["data_gone"] = backup.get("data_gone") or not counted
                if backup["state"] != "invalid":
                    backup["state"] = "damaged" if counted else "invalid"
            mutations += 1
        for name in REPOS:
            good = [b for b in bench.published[name] if b["state"] == "good" and not b.get("pruned")]
            if not good:
                with pytest.raises(BackupError, match="no good backup"):
                    bench.latest(name)
            else:
                assert bench.latest(name, restore=round_no % 25 == 0) is good[-1]
        bench.run()
        _check_retention(bench, keep_last)
    assert mutations >= 200


def test_names_that_are_not_utf8_and_links_in_the_folder_are_skipped_and_reported(
        make_engine, sqlite_root, tmp_path):
    bench = Bench(make_engine, sqlite_root, tmp_path, keep_last=2)
    first = bench.run()["repositories"]["a.db"]
    folder = os.fsencode(os.path.dirname(first["backup"]))
    manifest = json.loads(_load(first["backup"]))
    # A manifest, valid but for its name, named after bytes that are not UTF-8; garbage under another such name.
    manifest.update(data_file="\udcff.sqlite3", sequence=10 ** 6)
    with open(os.path.join(folder, b"\xff.manifest.json"), "wb") as handle:
        handle.write(json.dumps(manifest).encode("utf-8", "surrogateescape"))
    shutil.copyfile(first["data_file_path"], os.path.join(folder, b"\xff.sqlite3"))
    with open(os.path.join(folder, b"\xfe.manifest.json"), "wb") as handle:
        handle.write(b"{")
    os.symlink(first["backup"], os.path.join(os.path.dirname(first["backup"]), "20200101T000000Z.manifest.json"))
    done = bench.run()
    skipped = done["repositories"]["a.db"]["skipped_backups"]
    assert len(skipped) == 3 and any("\\xff" in why for why in skipped), skipped
    assert any("symbolic link" in why for why in skipped)
    assert bench.latest("a.db") is bench.published["a.db"][-1]
    status = bench.engine.status()
    assert status["repositories"]["a.db"]["last_success"]["backup"] == bench.published["a.db"][-1]["manifest"]
    for dummy in range(3):
        bench.run()
    assert [m["sequence"] for m in bench.engine.store.backups("a.db")] == [4, 5]  # the lying one never counts
    assert os.path.exists(os.path.join(folder, b"\xff.manifest.json"))  # nor is it removed
