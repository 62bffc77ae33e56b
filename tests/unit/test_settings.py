# -*- coding: utf-8 -*-
"""S.validate / Settings / from_document: accepted forms, refusals, round trip."""

from __future__ import annotations

import datetime
import json
import os

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import settings as S
from ansible_collections.reposerver.backup.plugins.module_utils.errors import SettingsError

BASE = {"destination": "/srv/backups"}


def valid(**options):
    raw = dict(BASE)
    raw.update(options)
    return S.validate(raw)


def refused(**options):
    raw = dict(BASE)
    raw.update(options)
    with pytest.raises(SettingsError) as info:
        S.validate(raw)
    return str(info.value)


def test_defaults():
    s = S.validate({"destination": "/srv/backups"})
    assert s.server == "main"
    assert s.kind == "sqlite"
    assert s.enabled is True
    assert s.suspended_until is None
    assert s.repositories == "all"
    assert s.exclude == []
    assert s.days == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert s.times == ["01:00"]
    assert s.destination == "/srv/backups"
    assert s.in_use == "keep_connections"
    assert s.keep_last == 14
    assert s.run_as == "root"
    assert s.disconnect_wait == 30
    assert s.options == {"root": "/var/lib/reposerver/sqlite"}


# -- accepted forms and normalisation --------------------------------------------------

@pytest.mark.parametrize("times, expected", [
    (["13:30"], ["13:30"]),
    (["7:05"], ["07:05"]),
    (["0:00"], ["00:00"]),
    ([" 23:59 "], ["23:59"]),
    (["23:59", "00:00", "23:59"], ["00:00", "23:59"]),
    (["13:30", "01:00", "7:05", "07:05"], ["01:00", "07:05", "13:30"]),
    (("02:00", "01:00"), ["01:00", "02:00"]),
    (None, ["01:00"]),
])
def test_times_accepted_sorted_deduplicated_padded(times, expected):
    assert valid(times=times).times == expected


@pytest.mark.parametrize("days, expected", [
    (["sun", "mon"], ["mon", "sun"]),
    (["fri", "wed", "mon", "wed"], ["mon", "wed", "fri"]),
    (["Monday", "FRIDAY", "sunday"], ["mon", "fri", "sun"]),
    ([" Tue ", "THU"], ["tue", "thu"]),
    (["sat", "sun"], ["sat", "sun"]),
    (None, ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
])
def test_days_accepted_and_ordered(days, expected):
    assert valid(days=days).days == expected


@pytest.mark.parametrize("name", ["main", "a", "db_2", "x" * 32, "0", "_"])
def test_server_names_accepted(name):
    assert valid(server_name=name).server == name


@pytest.mark.parametrize("names", [
    ["plain"], ["with space", "it's \"quoted\""], [".hidden", "-h", "a.b.c"], ["Capital", "é", "日本"],
    ["100%", "..."],
])
def test_repository_names_accepted(names):
    s = valid(repositories=names, exclude=names)
    assert s.repositories == names
    assert s.exclude == names


def test_repository_list_deduplicated_in_order():
    assert valid(repositories=["b", "a", "b"]).repositories == ["b", "a"]


@pytest.mark.parametrize("value, expected", [
    ("/srv/backups", "/srv/backups"),
    ("/srv/backups/", "/srv/backups"),
    ("/srv//x/../backups", "/srv/backups"),
    ("/mnt/nfs share/backups", "/mnt/nfs share/backups"),
])
def test_destination_normalised(value, expected):
    assert valid(destination=value).destination == expected


@pytest.mark.parametrize("value, expected", [
    ("2026-12-24", "2026-12-24T00:00"),
    ("2026-12-24T08:00", "2026-12-24T08:00"),
    ("2026-12-24 08:00", "2026-12-24T08:00"),
    ("2026-12-24T08:00:00", "2026-12-24T08:00"),
    ("2026-12-24T08:00:00.250", "2026-12-24T08:00"),
    (" 2026-12-24 ", "2026-12-24T00:00"),
    (datetime.date(2026, 12, 24), "2026-12-24T00:00"),
    (datetime.datetime(2026, 12, 24, 8, 15), "2026-12-24T08:15"),
    (None, None),
    ("", None),
])
def test_suspended_until_accepted(value, expected):
    s = valid(suspended_until=value)
    assert s.suspended_until == expected
    if expected:
        assert s.suspended_until_datetime() == datetime.datetime.fromisoformat(expected)


def test_suspended_until_with_offset_is_converted_to_local_time():
    s = valid(suspended_until="2026-12-24T08:00Z")
    moment = datetime.datetime(2026, 12, 24, 8, 0, tzinfo=datetime.timezone.utc).astimezone()
    assert s.suspended_until == moment.replace(tzinfo=None).isoformat(timespec="minutes")


@pytest.mark.parametrize("value, expected", [(1, 1), (14, 14), ("5", 5), (100000, 100000)])
def test_keep_last_accepted(value, expected):
    assert valid(keep_last=value).keep_last == expected


@pytest.mark.parametrize("value", ["keep_connections", "disconnect", None])
def test_in_use_accepted(value):
    assert valid(in_use=value).in_use == (value or "keep_connections")


def test_kind_options():
    s = valid(sqlite_root="/data/repos/")
    assert s.options == {"root": "/data/repos"}


# -- refusals: one sentence that names the value and what is allowed ---------------------

@pytest.mark.parametrize("options, fragments", [
    ({"days": ["mon", "funday"]}, ["days entry 'funday'", "mon, tue, wed, thu, fri, sat or sun"]),
    ({"days": ["mo"]}, ["days entry 'mo'"]),
    ({"days": [3]}, ["days entry 3"]),
    ({"days": []}, ["days []", "non-empty list"]),
    ({"days": "mon"}, ["days 'mon'", "non-empty list"]),
    ({"times": ["25:00"]}, ["times entry '25:00'", '"HH:MM"', "00:00 to 23:59"]),
    ({"times": ["24:00"]}, ["times entry '24:00'"]),
    ({"times": ["12:60"]}, ["times entry '12:60'"]),
    ({"times": ["7pm"]}, ["times entry '7pm'", '"HH:MM"']),
    ({"times": ["1230"]}, ["times entry '1230'"]),
    ({"times": ["12:3"]}, ["times entry '12:3'"]),
    ({"times": [""]}, ["times entry ''"]),
    ({"times": [810]}, ["times entry 810", "quote", "810"]),
    ({"times": [13.5]}, ["times entry 13.5", "quote"]),
    ({"times": [True]}, ["times entry True", "quote"]),
    ({"times": []}, ["times []", "non-empty list"]),
    ({"times": "01:00"}, ["times '01:00'", "list"]),
    ({"times": [None]}, ["times entry None"]),
    ({"destination": "backups"}, ["destination 'backups'", "absolute path"]),
    ({"destination": "./backups"}, ["destination './backups'", "absolute path"]),
    ({"destination": ""}, ["destination is required"]),
    ({"destination": None}, ["destination is required"]),
    ({"destination": "sftp://backup@nas/srv"}, ["sftp_key_file", "required", "sftp://"]),
    ({"destination": "sftp://backup:secret@nas/srv"}, ["carries a password", "sftp://backup:***@nas/srv"]),
    ({"destination": "sftp://nas/srv"}, ["sftp://nas/srv", "sftp://user@host[:port]/absolute/path"]),
    ({"destination": "sftp://b@nas:70000/srv"}, ["port 70000", "1 to 65535"]),
    ({"destination": "sftp://b@nas/srv", "sftp_key_file": "id_ed25519"}, ["sftp_key_file 'id_ed25519'", "absolute path"]),
    ({"destination": "sftp://b@nas/srv", "sftp_key_file": "/k", "sftp_host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoo"},
     ["sftp_host_key", "not a ssh-ed25519 key"]),
    ({"destination": "sftp://b@nas/srv", "sftp_key_file": "/k", "sftp_host_key": "ed25519 xyz"}, ["sftp_host_key", "TYPE BASE64"]),
    ({"destination": "sftp://b@nas/srv", "sftp_key_file": "/k", "sftp_retries": 11}, ["sftp_retries 11", "0 to 10"]),
    ({"destination": "sftp://b@nas/srv", "sftp_key_file": "/k", "require_mount": True}, ["require_mount", "no mount point"]),
    ({"destination": "/srv", "require_mount": "yes"}, ["require_mount 'yes'", "true or false"]),
    ({"destination": "/srv", "keep_daily": -1}, ["keep_daily -1", "0 to 100000"]),
    ({"destination": "/srv", "keep_monthly": "many"}, ["keep_monthly 'many'", "whole number"]),
    ({"in_use": "kill"}, ["in_use 'kill'", "keep_connections or disconnect"]),
    ({"in_use": "Disconnect"}, ["in_use 'Disconnect'"]),
    ({"server_name": "Main"}, ["server_name 'Main'", "a-z, 0-9 and _"]),
    ({"server_name": "my-server"}, ["server_name 'my-server'"]),
    ({"server_name": "x" * 33}, ["server_name '%s'" % ("x" * 33), "1 to 32"]),
    ({"server_name": ""}, ["server_name ''"]),
    ({"server_name": "a.b"}, ["server_name 'a.b'"]),
    ({"server_name": None}, ["server_name None"]),
    ({"repositories": ["ok", "a//b"]}, ["'a//b'", "not a repository name", "'/'"]),
    ({"repositories": ["/a"]}, ["'/a'", "not a repository name"]),
    ({"repositories": ["a/../b"]}, ["'a/../b'", "not a repository name"]),
    ({"repositories": ["a\0b"]}, ["'a\\x00b'", "NUL"]),
    ({"repositories": [".."]}, ["'..'", "not a repository name"]),
    ({"repositories": ["."]}, ["'.'", "not a repository name"]),
    ({"repositories": [""]}, ["''", "non-empty"]),
    ({"repositories": [3]}, ["3", "not a repository name"]),
    ({"repositories": "some"}, ["repositories 'some'", "'all'"]),
    ({"exclude": ["x/"]}, ["exclude entry 'x/'"]),
    ({"exclude": "x"}, ["exclude 'x'", "list"]),
    ({"keep_last": 0}, ["keep_last 0", "whole number from 1"]),
    ({"keep_last": -1}, ["keep_last -1", "whole number from 1"]),
    ({"keep_last": "-1"}, ["keep_last -1"]),
    ({"keep_last": True}, ["keep_last True", "whole number"]),
    ({"keep_last": 1.5}, ["keep_last 1.5"]),
    ({"keep_last": "many"}, ["keep_last 'many'"]),
    ({"keep_last": 100001}, ["keep_last 100001"]),
    ({"disconnect_wait": 0}, ["disconnect_wait 0"]),
    ({"suspended_until": "tomorrow"}, ["suspended_until 'tomorrow'", "ISO 8601"]),
    ({"suspended_until": "2026-13-01"}, ["suspended_until '2026-13-01'", "ISO 8601"]),
    ({"suspended_until": "2026-12-24T25:00"}, ["suspended_until '2026-12-24T25:00'"]),
    ({"suspended_until": "24.12.2026"}, ["suspended_until '24.12.2026'"]),
    ({"suspended_until": 20261224}, ["suspended_until 20261224", "ISO 8601"]),
    ({"suspended_until": True}, ["suspended_until True"]),
    # ISO forms that only some Pythons' fromisoformat() read: refused on every Python alike.
    ({"suspended_until": "20261224"}, ["suspended_until '20261224'", "ISO 8601"]),
    ({"suspended_until": "2026-W52-4"}, ["suspended_until '2026-W52-4'"]),
    ({"suspended_until": "2026-12-24T0800"}, ["suspended_until '2026-12-24T0800'"]),
    ({"suspended_until": "2026-12-24T08:00+0100"}, ["suspended_until '2026-12-24T08:00+0100'"]),
    ({"suspended_until": "2026-12-24T08:00:00.5"}, ["suspended_until '2026-12-24T08:00:00.5'"]),
    ({"suspended_until": "2026-12-24T08"}, ["suspended_until '2026-12-24T08'"]),
    ({"enabled": "yes"}, ["enabled 'yes'", "true or false"]),
    ({"enabled": 1}, ["enabled 1"]),
    ({"kind": "mysql"}, ["kind 'mysql'", "not supported", "sqlite, postgresql"]),
    ({"kind": "postgresql", "postgresql_port": 70000}, ["postgresql_port 70000", "1 to 65535"]),
    ({"kind": "postgresql", "postgresql_host": "a\nb"}, ["postgresql_host 'a\\nb'"]),
    ({"run_as": "Bad User"}, ["run_as 'Bad User'"]),
    ({"sqlite_root": "relative/dir"}, ["sqlite_root 'relative/dir'", "absolute path"]),
    ({"drill_times": ["25:00"]}, ["drill_times entry '25:00'", '"HH:MM"']),
    ({"drill_times": [430]}, ["drill_times entry 430", "quote"]),
    ({"drill_times": "04:30"}, ["drill_times '04:30'", "list"]),
    ({"drill_days": []}, ["drill_days []", "non-empty list"]),
    ({"drill_days": ["someday"]}, ["drill_days entry 'someday'", "mon, tue"]),
    ({"drill_max_age_days": 0}, ["drill_max_age_days 0", "1 to 3650"]),
    ({"drill_max_age_days": "week"}, ["drill_max_age_days 'week'", "whole number"]),
    ({"kind": "postgresql", "drill_postgresql_port": 70000}, ["drill_postgresql_port 70000", "0 to 65535"]),
    ({"kind": "postgresql", "drill_postgresql_host": "a\nb"}, ["drill_postgresql_host 'a\\nb'"]),
])
def test_refusals_name_the_value(options, fragments):
    message = refused(**options)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert message.count("\n") == 0


# -- the stored document ---------------------------------------------------------------------

ROUND_TRIP_CASES = [
    {},
    {"server_name": "db_2", "enabled": False, "suspended_until": "2030-01-02T03:04",
     "repositories": ["a b", "é", ".hidden"], "exclude": ["x"], "days": ["sun", "wed"],
     "times": ["7:05", "23:00"], "destination": "/mnt/nas/backups", "in_use": "disconnect",
     "keep_last": 3, "run_as": "backup", "disconnect_wait": 5, "sqlite_root": "/data/sqlite"},
    {"repositories": "all", "exclude": ["big", "scratch"], "suspended_until": "2031-05-06"},
    {"kind": "postgresql", "postgresql_host": "/run/postgresql", "postgresql_port": "5433",
     "postgresql_user": "backup", "postgresql_service": "main", "in_use": "disconnect"},
]


@pytest.mark.parametrize("options", ROUND_TRIP_CASES)
def test_document_round_trip(options):
    s = valid(**options)
    doc = s.to_document()
    assert doc["format"] == S.FORMAT
    assert doc["schedule"] == {"days": s.days, "times": s.times}
    again = S.from_document(doc)
    assert again == s
    assert again.to_document() == doc


@pytest.mark.parametrize("doc, fragment", [
    ({"format": 3, "server": "main", "destination": "/x"}, "format 3"),
    ({"format": "1", "server": "main", "destination": "/x"}, "format '1'"),
    ({"server": "main", "destination": "/x"}, "format None"),
    (["format", 1], "not a JSON object"),
])
def test_unknown_document_refused(doc, fragment):
    with pytest.raises(SettingsError) as info:
        S.from_document(doc)
    assert fragment in str(info.value)


@pytest.mark.parametrize("group, value", [("schedule", ["mon"]), ("options", "root"), ("sftp", 1),
                                          ("options", ["/srv"])])
def test_a_document_whose_groups_are_not_objects_is_refused_in_one_sentence(group, value):
    """schedule, options and sftp hold settings by key: anything else is a damaged document, not a crash."""
    doc = valid().to_document()
    doc[group] = value
    with pytest.raises(SettingsError) as info:
        S.from_document(doc)
    assert str(info.value) == "The settings document's %s is %r, not a JSON object." % (group, value)


def test_document_values_are_validated_again():
    doc = valid().to_document()
    doc["schedule"]["times"] = ["25:00"]
    with pytest.raises(SettingsError, match="25:00"):
        S.from_document(doc)


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKGtfIOxXhn0i1PO0S4Q2qajDn5Sq6+4UtQyRnLfz+Db"


@pytest.mark.parametrize("given, url", [
    ("sftp://bk@nas.example/srv/backups/", "sftp://bk@nas.example/srv/backups"),
    ("sftp://bk@10.0.0.1:22/a/../b", "sftp://bk@10.0.0.1/b"),
    ("sftp://bk@[::1]:2222/x", "sftp://bk@[::1]:2222/x"),
])
def test_sftp_destinations_are_normalised(given, url):
    s = S.validate({"destination": given, "sftp_key_file": "/etc/repobackup/id_ed25519"})
    assert s.destination == url
    assert s.destination_kind() == "sftp"
    assert s.sftp == {"key_file": "/etc/repobackup/id_ed25519", "known_hosts": "", "host_key": "",
                      "verify_upload": False, "retries": 3, "timeout": 30}


def test_sftp_url_parts_and_known_hosts_name():
    assert S.parse_sftp_url("sftp://bk@nas:2222/srv") == S.SftpUrl("bk", "nas", 2222, "/srv")
    assert S.parse_sftp_url("sftp://bk@nas:2222/srv").known_hosts_name() == "[nas]:2222"
    assert S.parse_sftp_url("sftp://bk@nas/srv").known_hosts_name() == "nas"


@pytest.mark.parametrize("given", [HOST_KEY, HOST_KEY + " root@nas", "[nas]:2222 " + HOST_KEY])
def test_pinned_host_key_forms(given):
    s = S.validate({"destination": "sftp://bk@nas:2222/srv", "sftp_key_file": "/k", "sftp_host_key": given})
    assert s.sftp["host_key"] == HOST_KEY


def test_new_options_round_trip_through_the_document():
    s = S.validate({"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k", "sftp_host_key": HOST_KEY,
                    "sftp_verify_upload": True, "sftp_retries": 0, "keep_daily": 7, "keep_weekly": 4,
                    "keep_monthly": 12})
    assert S.from_document(s.to_document()) == s
    local = S.validate({"destination": "/srv", "require_mount": True, "sftp_key_file": "/ignored"})
    assert local.sftp is None and local.require_mount and local.destination_kind() == "local"
    assert S.from_document(local.to_document()) == local
    assert local.retention() == {"keep_last": 14, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}


def test_older_documents_without_the_new_fields_still_read():
    doc = S.validate({"destination": "/srv"}).to_document()
    for key in ("keep_daily", "keep_weekly", "keep_monthly", "require_mount", "sftp"):
        doc.pop(key)
    s = S.from_document(doc)
    assert (s.keep_daily, s.require_mount, s.sftp) == (0, False, None)


# -- control characters: every pattern is matched whole (a final newline broke the cron line) ----

# Where each validated string goes, and a good value to spoil. The refused ones are used as given
# (file names, user names, command lines, libpq); a newline, tab or NUL in them is always a mistake.
SFTP = {"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k"}
USED_AS_GIVEN = [
    ("server_name", "main", {}),
    ("run_as", "backup", {}),
    ("host_id", "db1.eu.example.com", {}),
    ("destination", "/srv/backups", {}),
    ("destination", "sftp://bk@nas/srv", {"sftp_key_file": "/k"}),
    ("metrics_file", "/var/lib/node/repobackup.prom", {}),
    ("sqlite_root", "/var/lib/reposerver/sqlite", {}),
    ("postgresql_host", "db.example.net", {"kind": "postgresql"}),
    ("postgresql_user", "backup", {"kind": "postgresql"}),
    ("postgresql_service", "nightly", {"kind": "postgresql"}),
    ("sftp_key_file", "/root/.ssh/id_ed25519", SFTP),
    ("sftp_known_hosts", "/etc/ssh/ssh_known_hosts", SFTP),
]
SPOILERS = [("ends in \\n", lambda v: v + "\n"), ("ends in \\r", lambda v: v + "\r"),
            ("ends in \\r\\n", lambda v: v + "\r\n"), ("holds \\t", lambda v: v[:2] + "\t" + v[2:]),
            ("holds NUL", lambda v: v[:2] + "\0" + v[2:]), ("ends in NUL", lambda v: v + "\0"),
            ("holds DEL", lambda v: v[:2] + "\x7f" + v[2:])]


@pytest.mark.parametrize("option, good, extra", USED_AS_GIVEN, ids=["%s=%s" % (c[0], c[1]) for c in USED_AS_GIVEN])
@pytest.mark.parametrize("how, spoil", SPOILERS, ids=[s[0] for s in SPOILERS])
def test_control_characters_are_refused_in_values_used_as_given(option, good, extra, how, spoil):
    options = dict(extra)
    options[option] = good
    valid(**options)  # the good value passes
    options[option] = spoil(good)
    message = refused(**options)
    assert repr(spoil(good)) in message, message  # names the value, escaped
    assert "\n" not in message and "\r" not in message and "\0" not in message


@pytest.mark.parametrize("value", ["main\n", "main\r", "ma\tin", "main\0"])
def test_a_server_name_with_a_control_character_never_reaches_the_cron_file_or_a_path(value):
    with pytest.raises(SettingsError, match="server_name"):
        S.check_server_name(value)
    doc = valid().to_document()
    doc["server"] = value
    with pytest.raises(SettingsError, match="server_name"):
        S.from_document(doc)


@pytest.mark.parametrize("option, given, stored", [
    ("times", ["01:00\n"], ["01:00"]),
    ("times", ["\t13:30\r\n"], ["13:30"]),
    ("days", ["mon\n", "\tfri\r"], ["mon", "fri"]),
    ("suspended_until", "2026-12-24\n", "2026-12-24T00:00"),
    ("suspended_until", "2026-12-24T08:00\r", "2026-12-24T08:00"),
])
def test_normalised_values_lose_surrounding_whitespace_and_are_stored_clean(option, given, stored):
    s = valid(**{option: given})
    assert getattr(s, option) == stored
    assert not any(S.has_control(json_text) for json_text in _strings(s.to_document()))


@pytest.mark.parametrize("option, value, fragment", [
    ("times", ["01:\t00"], "times entry '01:\\t00'"),
    ("times", ["01:00\0"], "times entry '01:00\\x00'"),
    ("times", ["01\n:00"], "times entry '01\\n:00'"),
    ("times", ["\uff11\uff12:\uff13\uff10"], "times entry"),  # full-width digits are not 0-9
    ("days", ["mo\nn"], "days entry 'mo\\nn'"),
    ("days", ["mon\0"], "days entry 'mon\\x00'"),
    ("suspended_until", "2026-12-24\t08:00", "suspended_until '2026-12-24\\t08:00'"),
    ("suspended_until", "2026-12-24\0", "suspended_until '2026-12-24\\x00'"),
    ("suspended_until", "2026-12-24\n08:00", "suspended_until"),
    ("suspended_until", "\u0662\u0660\u0662\u0666-12-24", "suspended_until"),  # Arabic-Indic digits
    ("keep_last", "\u00b2", "keep_last '\u00b2'"),  # "²".isdigit() is true, int("²") raises
    ("keep_last", "\u0665", "keep_last '\u0665'"),
    ("parallel", "\u00b2", "parallel '\u00b2'"),
    ("keep_last", "5\n0", "keep_last '5\\n0'"),
])
def test_control_characters_inside_normalised_values_are_refused(option, value, fragment):
    message = refused(**{option: value})
    assert fragment in message, message
    assert "\n" not in message and "\0" not in message


def test_sftp_host_key_with_a_trailing_newline_is_stored_clean():
    s = S.validate({"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k", "sftp_host_key": HOST_KEY + "\r\n"})
    assert s.sftp["host_key"] == HOST_KEY


@pytest.mark.parametrize("url", ["sftp://bk@nas/srv\n", "sftp://bk@nas/srv\r", "sftp://b\tk@nas/srv",
                                 "sftp://b\x01k@nas/srv", "sftp://bk@nas/s\0rv", "sftp://bk@nas:22\n/srv"])
def test_sftp_urls_with_control_characters_are_refused(url):
    message = refused(destination=url, sftp_key_file="/k")
    assert repr(url) in message and "sftp://user@host[:port]/absolute/path" in message


@pytest.mark.parametrize("name", ["app\n", "app\r", "a\tb", "\x1fsplit", "trailing\r\n"])
def test_repository_names_keep_control_characters_verbatim(name):
    """A database or file may really be called so: such a name is kept exactly, never trimmed to another one."""
    s = valid(repositories=[name, "plain"], exclude=[name])
    assert s.repositories == [name, "plain"] and s.exclude == [name]
    assert S.from_document(s.to_document()) == s


@pytest.mark.parametrize("option", ["repositories", "exclude"])
@pytest.mark.parametrize("name", ["app\0", "a\0b", "\0"])
def test_repository_names_with_nul_are_refused(option, name):
    message = refused(**{option: [name]})
    assert repr(name) in message and "NUL" in message and "\0" not in message


@pytest.mark.parametrize("server", ["main\n", "../elsewhere", "main\0", "Main"])
def test_every_door_refuses_a_server_name_before_it_reads_a_file(paths, server):
    """load_settings (host command --server, the modules' server_name) checks the name before the path."""
    from ansible_collections.reposerver.backup.plugins.module_utils import engine
    os.makedirs(paths.settings_dir)
    if "\0" not in server:
        with open(os.path.join(paths.settings_dir, server + ".json"), "w", encoding="utf-8") as handle:
            json.dump(valid().to_document(), handle)  # a readable document is there all the same
    with pytest.raises(SettingsError) as info:
        engine.load_settings(server, paths)
    assert str(info.value).startswith("server_name %r is not allowed" % server)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


# -- host_id: this host's folder at the destination ---------------------------------------------------

@pytest.mark.parametrize("value", ["db1.eu.example.com", "db1", "DB-1_x", "10.0.0.5", "a", "a" * 253,
                                   "xn--bcher-kva.example"])
def test_host_ids_accepted(value):
    s = valid(host_id=value)
    assert s.host_id == value
    assert S.from_document(s.to_document()).host_id == value


@pytest.mark.parametrize("value", ["db1.", ".db1", "-db1", "db1-", "db 1", "db1/x", "../x", "a" * 254, "é.example",
                                   "db1\n", "db1\0", 5, True, ["db1"]])
def test_host_ids_refused(value):
    message = refused(host_id=value)
    assert message.startswith("host_id %r is not allowed" % (value,)), message
    assert "unique in the fleet" in message and "\n" not in message


def test_host_id_unset_is_empty_and_older_documents_read_without_it():
    assert valid().host_id == "" and valid(host_id=None).host_id == "" and valid(host_id="").host_id == ""
    doc = valid(host_id="db1.eu.example.com").to_document()
    assert doc["host_id"] == "db1.eu.example.com"
    del doc["host_id"]
    assert S.from_document(doc).host_id == ""


def test_documents_of_the_previous_format_are_still_read():
    """0.1.0 wrote format 1; an upgraded engine runs on it until the role rewrites it (as format 2)."""
    doc = S.validate({"server_name": "main", "destination": "/x"}).to_document()
    assert doc["format"] == S.FORMAT == 2
    old = dict(doc, format=1)
    del old["host_id"]
    assert S.from_document(old).destination == "/x"


# -- restore drills -----------------------------------------------------------------------------------------

def test_drills_are_off_by_default_and_read_from_older_documents():
    s = valid()
    assert s.drill == {"days": list(S.DAYS), "times": [], "identity_file": "", "max_age_days": 8}
    assert s.drill_target() is None
    doc = s.to_document()
    doc.pop("drill")
    assert S.from_document(doc) == s


def test_drill_values_are_normalised_and_round_trip():
    s = valid(drill_days=["Sunday", "wed"], drill_times=["4:05", "04:05", " 23:00"], drill_max_age_days="3")
    assert s.drill == {"days": ["wed", "sun"], "times": ["04:05", "23:00"], "identity_file": "", "max_age_days": 3}
    assert S.from_document(s.to_document()) == s
    assert valid(drill_times="").drill["times"] == []


@pytest.mark.parametrize("drill, target", [
    ({}, None),
    ({"drill_postgresql_port": 5434}, {"host": "/run/postgresql", "port": 5434, "service": ""}),
    ({"drill_postgresql_host": "drill.example.net"}, {"host": "drill.example.net", "port": 5433, "service": ""}),
    ({"drill_postgresql_service": "drills"}, {"host": "/run/postgresql", "port": 5433, "service": "drills"}),
])
def test_the_drill_target_takes_the_servers_values_for_what_it_leaves_unset(drill, target):
    s = valid(kind="postgresql", postgresql_host="/run/postgresql", postgresql_port=5433, **drill)
    assert s.drill_target() == target
    assert S.from_document(s.to_document()).drill_target() == target


def test_a_kinds_drill_options_count_only_for_that_kind():
    s = valid(drill_postgresql_port=5434)  # sqlite: ignored, as postgresql_port is
    assert s.drill_target() is None and "postgresql_port" not in s.drill
