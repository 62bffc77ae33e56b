# -*- coding: utf-8 -*-
"""store: publish (data first, manifest last), retention, manifests, checksums."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import layout, store
from ansible_collections.reposerver.backup.plugins.module_utils.errors import BackupError

META = {"kind": "sqlite", "server_version": "3.40.1", "in_use": "keep_connections"}
DESIGN_FIELDS = {"format", "host", "server", "kind", "server_version", "repository", "start", "end",
                 "in_use", "sessions_ended", "size", "sha256", "engine_version"}


def writer(data: bytes, extra=None):
    def export(target):
        with open(target, "wb") as handle:
            handle.write(data)
        return {"sessions_ended": 0} if extra is None else extra
    return export


@pytest.fixture
def bs(tmp_path):
    (tmp_path / "dest").mkdir()
    return store.BackupStore(str(tmp_path / "dest"), "host.example", "main")


@pytest.fixture
def fixed_clock(monkeypatch):
    """Every publish starts in the same second."""
    moment = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(store, "utc_now", lambda: moment)
    return moment


def files(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.parametrize("name", ["plain", "with space", ".hidden", "-h", "日本"])
def test_publish_writes_data_then_manifest(bs, name, monkeypatch):
    data = os.urandom(5000)
    seen = []
    real_write = bs.fs.write_file

    def watching_write(path, payload):
        folder = os.path.dirname(path)
        seen.append(files(folder))
        return real_write(path, payload)

    monkeypatch.setattr(bs.fs, "write_file", watching_write)
    manifest = bs.publish(name, ".sqlite3", writer(data), META)
    folder = bs.repo_dir(name)
    assert folder == os.path.join(bs.destination, "host.example", "main", layout.encode_name(name))
    # When the manifest was written, the data file was already in place, alone.
    assert seen == [[manifest["data_file"]]]
    assert files(folder) == sorted([manifest["data_file"], os.path.basename(manifest["manifest_path"])])
    on_disk = json.loads(open(manifest["manifest_path"], encoding="utf-8").read())
    assert DESIGN_FIELDS <= set(on_disk)
    assert on_disk["format"] == store.MANIFEST_FORMAT
    assert on_disk["host"] == "host.example"
    assert on_disk["server"] == "main"
    assert on_disk["repository"] == name
    assert on_disk["kind"] == "sqlite" and on_disk["server_version"] == "3.40.1"
    assert on_disk["in_use"] == "keep_connections"
    assert on_disk["sessions_ended"] == 0
    assert on_disk["size"] == len(data)
    assert on_disk["sha256"] == hashlib.sha256(data).hexdigest()
    assert on_disk["engine_version"] == layout.VERSION
    assert on_disk["start"] <= on_disk["end"]
    assert on_disk["start"].endswith("Z") and on_disk["end"].endswith("Z")
    assert "path" not in on_disk and "manifest_path" not in on_disk
    with open(manifest["path"], "rb") as handle:
        assert handle.read() == data
    assert manifest["data_file"].endswith(".sqlite3")
    assert store.resolve(manifest["manifest_path"])["sha256"] == on_disk["sha256"]


def test_publish_modes_under_umask_zero(tmp_path):
    old = os.umask(0)
    try:
        (tmp_path / "dest").mkdir(mode=0o750)  # as the role makes it
        bs = store.BackupStore(str(tmp_path / "dest"), "h", "main")
        manifest = bs.publish("r", ".sqlite3", writer(b"x" * 100), META)
    finally:
        os.umask(old)
    for folder in (os.path.dirname(bs.base), bs.base, bs.repo_dir("r")):  # host, server, repository
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750, folder
    assert not stat.S_IMODE(os.stat(bs.destination).st_mode) & 0o002
    for path in (manifest["path"], manifest["manifest_path"]):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path


@pytest.mark.parametrize("partial", [b"", b"half a file", None])
def test_failed_export_leaves_nothing_and_keeps_earlier_backups(bs, partial):
    first = bs.publish("r", ".sqlite3", writer(b"good backup"), META)
    before = {p: open(os.path.join(bs.repo_dir("r"), p), "rb").read() for p in files(bs.repo_dir("r"))}

    def failing(target):
        if partial is not None:
            for path in (target, target + "-journal"):
                with open(path, "wb") as handle:
                    handle.write(partial)
        raise RuntimeError("export broke")

    with pytest.raises(RuntimeError, match="export broke"):
        bs.publish("r", ".sqlite3", failing, META)
    after = {p: open(os.path.join(bs.repo_dir("r"), p), "rb").read() for p in files(bs.repo_dir("r"))}
    assert after == before
    assert [m["data_file"] for m in bs.backups("r")] == [first["data_file"]]


def test_same_second_publishes_get_numbered_stamps(bs, fixed_clock):
    stamps = [os.path.basename(bs.publish("r", ".sqlite3", writer(b"%d" % i), META)["manifest_path"])
              for i in range(4)]
    assert stamps == ["20250304T050607Z.manifest.json", "20250304T050607Z-2.manifest.json",
                      "20250304T050607Z-3.manifest.json", "20250304T050607Z-4.manifest.json"]
    assert [open(m["path"], "rb").read() for m in bs.backups("r")] == [b"0", b"1", b"2", b"3"]


@pytest.mark.parametrize("count, keep", [(5, 2), (5, 1), (3, 3), (2, 5), (12, 10)])
def test_prune_keeps_newest_in_same_second(bs, fixed_clock, count, keep):
    for i in range(count):
        bs.publish("r", ".sqlite3", writer(b"%d" % i), META)
    removed = bs.prune("r", keep)
    kept = [open(m["path"], "rb").read() for m in bs.backups("r")]
    assert kept == [b"%d" % i for i in range(max(0, count - keep), count)]
    assert len(removed) == max(0, count - keep)
    assert len(files(bs.repo_dir("r"))) == 2 * len(kept)


def test_prune_keeps_newest_across_seconds(bs, monkeypatch):
    base = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    order = [3, 0, 2, 0, 1]  # seconds after base, publish order; two in the same second
    for i, offset in enumerate(order):
        monkeypatch.setattr(store, "utc_now", lambda offset=offset: base + dt.timedelta(seconds=offset))
        bs.publish("r", ".sqlite3", writer(b"%d" % i), META)
    bs.prune("r", 3)
    kept = [open(m["path"], "rb").read() for m in bs.backups("r")]
    # The clock went back and forth: the order is the publish order (the manifests' sequence), not the seconds.
    assert kept == [b"2", b"3", b"4"]


def test_prune_removes_leftovers_but_not_unreadable_backups(bs, fixed_clock):
    bs.publish("r", ".sqlite3", writer(b"newest"), META)
    folder = bs.repo_dir("r")

    def put(name, data=b"x"):
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)

    put(".tmp-abc123.sqlite3")
    put(".tmp-abc123.sqlite3-journal")
    put(".tmp-zzz")
    put("20200101T000000Z.sqlite3")                 # data without a manifest: a killed run
    put("20200101T000000Z-2.sqlite3")
    put("20200102T000000Z.sqlite3")                 # manifest unreadable: keep both
    put("20200102T000000Z.manifest.json", b"{not json")
    put("20200103T000000Z.sqlite3")                 # manifest of a newer format: keep both
    put("20200103T000000Z.manifest.json", json.dumps({"format": 99, "data_file": "20200103T000000Z.sqlite3"}).encode())
    put(".nfs000123")                               # hidden, not ours
    removed = bs.prune("r", 1)
    assert sorted(removed) == sorted([".tmp-abc123.sqlite3", ".tmp-abc123.sqlite3-journal", ".tmp-zzz",
                                      "20200101T000000Z.sqlite3", "20200101T000000Z-2.sqlite3"])
    assert files(folder) == sorted([
        ".nfs000123", "20200102T000000Z.sqlite3", "20200102T000000Z.manifest.json",
        "20200103T000000Z.sqlite3", "20200103T000000Z.manifest.json",
        "20250304T050607Z.sqlite3", "20250304T050607Z.manifest.json"])
    assert [m["data_file"] for m in bs.backups("r")] == ["20250304T050607Z.sqlite3"]


def test_prune_of_unknown_repository_is_harmless(bs):
    assert bs.prune("never", 3) == []


def test_backups_ignore_manifest_without_data(bs, fixed_clock):
    first = bs.publish("r", ".sqlite3", writer(b"a"), META)
    second = bs.publish("r", ".sqlite3", writer(b"b"), META)
    os.unlink(first["path"])
    assert [m["data_file"] for m in bs.backups("r")] == [second["data_file"]]


def test_repositories_lists_decoded_names(bs):
    for name in ("b", ".hidden", "日本"):
        bs.publish(name, ".sqlite3", writer(b"x"), META)
    assert bs.repositories() == sorted(["b", ".hidden", "日本"])


# -- check_data, resolve, load_manifest ------------------------------------------------------

@pytest.fixture
def published(bs):
    return bs.publish("r", ".sqlite3", writer(os.urandom(4096)), META)


def test_check_data_ok(published):
    store.check_data(published)


def test_check_data_truncated(published):
    with open(published["path"], "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(BackupError, match="truncated"):
        store.check_data(published)


@pytest.mark.parametrize("offset", [0, 100, 4095])
def test_check_data_flipped_byte(published, offset):
    with open(published["path"], "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(BackupError, match="sha256.*corrupt"):
        store.check_data(published)


def test_check_data_missing(published):
    os.unlink(published["path"])
    with pytest.raises(BackupError, match="missing"):
        store.check_data(published)


@pytest.mark.parametrize("which", ["path", "manifest_path"])
def test_resolve_from_data_or_manifest(published, which):
    manifest = store.resolve(published[which])
    assert manifest["path"] == published["path"]
    assert manifest["manifest_path"] == published["manifest_path"]
    assert manifest["sha256"] == published["sha256"]


def test_resolve_relative_path(published, monkeypatch):
    monkeypatch.chdir(os.path.dirname(published["path"]))
    assert store.resolve(os.path.basename(published["path"]))["path"] == published["path"]


def test_resolve_data_without_manifest(tmp_path):
    data = tmp_path / "20250101T000000Z.sqlite3"
    data.write_bytes(b"x")
    with pytest.raises(BackupError, match="no manifest"):
        store.resolve(str(data))


def test_resolve_manifest_describing_another_file(published):
    other = os.path.join(os.path.dirname(published["path"]), os.path.basename(published["path"]) + ".bak")
    os.link(published["path"], other)
    with pytest.raises(BackupError, match="describes"):
        store.resolve(other)


def _rewrite(path, change):
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    change(doc)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(format=3), "format 3"),
    (lambda d: d.update(format="1"), "format '1'"),
    (lambda d: d.pop("format"), "not a repobackup manifest"),
    (lambda d: d.pop("kind"), "'kind'"),
    (lambda d: d.pop("repository"), "'repository'"),
    (lambda d: d.pop("sha256"), "'sha256'"),
    (lambda d: d.pop("size"), "'size'"),
    (lambda d: d.pop("data_file"), "'data_file'"),
    (lambda d: d.pop("start"), "'start'"),
    (lambda d: d.update(data_file="../other/20250101T000000Z.sqlite3"), "outside its folder"),
    (lambda d: d.update(data_file="sub/x.sqlite3"), "outside its folder"),
    (lambda d: d.update(data_file="/etc/passwd"), "outside its folder"),
])
def test_load_manifest_refusals(published, change, fragment):
    _rewrite(published["manifest_path"], change)
    with pytest.raises(BackupError) as info:
        store.resolve(published["manifest_path"])
    assert fragment in str(info.value)


@pytest.mark.parametrize("content, fragment", [
    (b"{broken", "cannot be read"),
    (b"[1, 2]", "not a repobackup manifest"),
    (b"\xff\xfe", "cannot be read"),
])
def test_load_manifest_unreadable(tmp_path, content, fragment):
    path = tmp_path / "x.manifest.json"
    path.write_bytes(content)
    with pytest.raises(BackupError, match=fragment):
        store.resolve(str(path))


def test_load_manifest_missing(tmp_path):
    with pytest.raises(BackupError, match="does not exist"):
        store.resolve(str(tmp_path / "nope.manifest.json"))


def test_publish_refuses_a_missing_destination(tmp_path):
    """An unmounted share must not fill the local disk under its mount point."""
    bs = store.BackupStore(str(tmp_path / "not-mounted"), "h", "main")
    with pytest.raises(BackupError, match="does not exist"):
        bs.publish("r", ".sqlite3", writer(b"x"), META)
    assert not (tmp_path / "not-mounted").exists()


def test_newest_reads_one_manifest_and_skips_broken_ones(bs, monkeypatch):
    base = dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    for offset in (0, 0, 0, 1):  # three in one second (-2, -3), then the next second, the next year
        monkeypatch.setattr(store, "utc_now", lambda offset=offset: base + dt.timedelta(seconds=offset))
        bs.publish("r", ".sqlite3", writer(os.urandom(100)), META)
    assert bs.newest("nothing") is None
    reads = []
    real_load = bs.load
    monkeypatch.setattr(bs, "load", lambda path: (reads.append(path), real_load(path))[1])
    newest = bs.newest("r")
    assert newest["start"] == "2027-01-01T00:00:00Z" and len(reads) == 1
    # The newest manifest unreadable, then its data gone: the next newest answers, "-3" before "-2".
    with open(newest["manifest_path"], "w", encoding="utf-8") as handle:
        handle.write("{")
    assert os.path.basename(bs.newest("r")["manifest_path"]) == "20261231T235959Z-3.manifest.json"
    os.unlink(bs.newest("r")["path"])
    assert os.path.basename(bs.newest("r")["manifest_path"]) == "20261231T235959Z-2.manifest.json"
    assert bs.newest("r") == bs.backups("r")[-1]
