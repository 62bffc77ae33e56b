# -*- coding: utf-8 -*-
"""layout: the safe, reversible name encoding and careful file writes."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import layout

NAMES = [
    "plain", "with space", "it's", 'say "hi"', "a.b.c", ".hidden", "-h", "--force", "..", ".", "...",
    "Capital", "MiXeD_Case-1", "é", "日本", "naïve café", "100%", "%41", "a%2Fb", "tab\there", "new\nline",
    "back\\slash", "colon:semi;", "~user", "*?[glob]", "emoji \U0001F600", "a+b@c", "-", "_",
]


@pytest.mark.parametrize("name", NAMES)
def test_encode_decode_round_trip(name):
    encoded = layout.encode_name(name)
    assert layout.decode_name(encoded) == name
    assert "/" not in encoded and "\0" not in encoded
    assert not encoded.startswith(".") and not encoded.startswith("-")
    assert encoded not in ("", ".", "..")
    assert encoded.isascii() and encoded.isprintable()


@pytest.mark.parametrize("name, encoded", [
    ("plain", "plain"),
    ("Capital", "Capital"),
    ("a.b-c_d+e@f", "a.b-c_d+e@f"),
    (".hidden", "%2Ehidden"),
    ("-h", "%2Dh"),
    ("a-h", "a-h"),
    ("with space", "with%20space"),
    ("100%", "100%25"),
    ("é", "%C3%A9"),
    ("a/b", "a%2Fb"),
])
def test_encode_known_values(name, encoded):
    assert layout.encode_name(name) == encoded


def test_encoding_is_injective_over_the_samples():
    encoded = [layout.encode_name(n) for n in NAMES]
    assert len(set(encoded)) == len(NAMES)


def test_encoded_names_are_usable_file_names(tmp_path):
    for name in NAMES:
        path = tmp_path / layout.encode_name(name)
        path.write_text(name, encoding="utf-8")
    found = {layout.decode_name(p.name) for p in tmp_path.iterdir()}
    assert found == set(NAMES)


def test_paths_layout(tmp_path):
    p = layout.Paths(settings_dir="/s", cron_dir="/c", state_root="/v", log_dir="/l")
    assert p.settings_file("main") == "/s/main.json"
    assert p.cron_file("main") == "/c/repobackup_main"
    assert "." not in os.path.basename(p.cron_file("db_2"))
    assert p.state_dir("main") == "/v/main"
    assert p.log_file("main") == "/l/main.log"
    default = layout.Paths()
    assert default.settings_file("main") == "/etc/repobackup/main.json"
    assert default.cron_file("main") == "/etc/cron.d/repobackup_main"


@pytest.fixture
def umask_zero():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_makedirs_exact_mode_under_umask_zero(tmp_path, umask_zero):
    target = tmp_path / "a" / "b" / "c"
    layout.makedirs(str(target), 0o750)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    for parent in (tmp_path / "a", tmp_path / "a" / "b"):  # missing parents stay traversable
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o755
    layout.makedirs(str(target), 0o700)  # existing folders are left as they are
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755])
def test_makedirs_single_level(tmp_path, umask_zero, mode):
    layout.makedirs(str(tmp_path / "x"), mode)
    assert stat.S_IMODE(os.stat(tmp_path / "x").st_mode) == mode


def test_atomic_write_mode_and_content(tmp_path, umask_zero):
    path = tmp_path / "f.json"
    layout.atomic_write(str(path), b"one", mode=0o640)
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    layout.atomic_write(str(path), b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layout.os, "replace", broken_replace)
    with pytest.raises(OSError):
        layout.atomic_write(str(path), b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


# -- host ids: the FQDN, not the short name that several hosts may share -----------------------------

@pytest.mark.parametrize("hostname, fqdn, expected", [
    ("db1", "db1.eu.example.com", "db1.eu.example.com"),
    ("db1", "DB1.eu.example.com.", "DB1.eu.example.com"),  # a trailing root dot names the same host
    ("db1.us.example.com", "localhost", "db1.us.example.com"),  # the host name is already the FQDN
    ("db1", "localhost", "db1"),  # hostname on a loopback line after "localhost" (/etc/hosts)
    ("db1", "localhost.localdomain", "db1"),  # the RHEL loopback line: not this host's name
    ("db1", "db1", "db1"),  # no domain known
    ("db1", "other.example.com", "db1"),  # a reverse lookup that names another host
    ("db1", "db10.example.com", "db1"),
    ("", "whatever.example.com", "localhost"),
])
def test_host_name_is_the_fqdn_when_one_names_this_host(hostname, fqdn, expected):
    assert layout.host_name(hostname, fqdn) == expected


def test_this_hosts_id_is_a_valid_host_id_and_starts_with_the_short_name():
    from ansible_collections.reposerver.backup.plugins.module_utils import settings
    found = layout.host_name()
    assert settings.check_host_id(found) == found
    assert found.split(".")[0].lower() == layout.short_host_name().lower()


def test_a_zombie_counts_as_gone_for_leftovers(tmp_path):
    """A run killed and not yet reaped by its parent leaves scratch the next run may remove."""
    child = subprocess.Popen(["sleep", "60"])
    (tmp_path / ("%d-x" % child.pid)).mkdir()
    assert layout.process_alive(str(child.pid))
    assert layout.remove_dead_scratch(str(tmp_path)) == []
    child.kill()
    deadline = time.monotonic() + 10
    while layout.process_alive(str(child.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open("/proc/%d/stat" % child.pid).read().split(") ")[1][0] == "Z", "not reaped yet: a zombie"
    assert layout.remove_dead_scratch(str(tmp_path)) == [str(tmp_path / ("%d-x" % child.pid))]
    child.wait()
    assert not layout.process_alive(str(child.pid))
