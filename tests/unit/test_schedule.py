# -*- coding: utf-8 -*-
"""schedule: cron entries, cron file, words, next run and last due time."""

from __future__ import annotations

import datetime as dt

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import schedule
from ansible_collections.reposerver.backup.plugins.module_utils import settings as S

ALL = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def make(**options):
    raw = {"destination": "/srv/backups"}
    raw.update(options)
    return S.validate(raw)


# 2025-01-06 is a Monday.
MON = dt.date(2025, 1, 6)


def at(day_offset, hour, minute, second=0):
    return dt.datetime.combine(MON + dt.timedelta(days=day_offset), dt.time(hour, minute, second))


@pytest.mark.parametrize("days, times, expected", [
    (ALL, ["01:00"], [("0", "1", "*")]),
    (ALL, ["01:00", "13:00"], [("0", "1,13", "*")]),
    (ALL, ["13:30", "01:30", "02:00"], [("30", "1,13", "*"), ("0", "2", "*")]),
    (ALL, ["00:05", "00:10", "23:05"], [("5", "0,23", "*"), ("10", "0", "*")]),
    (["mon"], ["01:00"], [("0", "1", "1")]),
    (["sun"], ["01:00"], [("0", "1", "0")]),
    (["mon", "wed", "sun"], ["04:15"], [("15", "4", "0,1,3")]),
    (["sat", "sun"], ["01:00"], [("0", "1", "0,6")]),
    (["mon", "tue", "wed", "thu", "fri"], ["22:45"], [("45", "22", "1,2,3,4,5")]),
    (["sun", "sat", "fri", "thu", "wed", "tue", "mon"], ["01:00"], [("0", "1", "*")]),
])
def test_cron_fields(days, times, expected):
    assert schedule.cron_fields(days, times) == expected


def _entries(text, command="run"):
    return [line for line in text.splitlines() if line.rstrip().endswith("--scheduled") and " %s " % command in line]


@pytest.mark.parametrize("options", [
    {},
    {"times": ["01:00", "13:00", "02:30"], "days": ["mon", "sun"]},
    {"server_name": "db_2", "run_as": "backup", "times": ["23:59"]},
])
def test_render_cron_enabled_and_disabled(options):
    on = schedule.render_cron(make(enabled=True, **options), "/usr/local/sbin/repobackup")
    off = schedule.render_cron(make(enabled=False, **options), "/usr/local/sbin/repobackup")
    s = make(**options)
    on_entries, off_entries = _entries(on), _entries(off)
    assert len(on_entries) == len(schedule.cron_fields(s.days, s.times)) >= 1
    assert off_entries == ["#disabled# " + line for line in on_entries]
    for (minute, hour, dow), line in zip(schedule.cron_fields(s.days, s.times), on_entries):
        assert line == "%s %s * * %s %s /usr/local/sbin/repobackup run --server %s --scheduled" % (
            minute, hour, dow, s.run_as, s.server)
    assert on.endswith("\n") and off.endswith("\n")
    assert "auto-backup on" in on and "auto-backup off" in off
    # Apart from the on/off words and the prefix, both files are the same.
    assert on.replace("auto-backup on.", "X") == \
        off.replace("#disabled# ", "").replace("auto-backup off (entries kept, disabled).", "X")


def test_render_cron_has_no_user_text():
    s = make(server_name="srv", repositories=["evil; rm -rf ~", "$(reboot)", "100%"],
             exclude=["`id`"], destination="/srv/b; touch /tmp/pwned", sqlite_root="/data/$(x)")
    text = schedule.render_cron(s, "/usr/local/sbin/repobackup")
    for fragment in ("rm -rf", "$(", "`", "%", "pwned", "/srv/b", "/data"):
        assert fragment not in text
    for line in _entries(text):
        assert line.split()[5:] == ["root", "/usr/local/sbin/repobackup", "run", "--server", "srv", "--scheduled"]


@pytest.mark.parametrize("days, times, expected", [
    (ALL, ["01:00"], "every day at 01:00"),
    (ALL, ["13:30", "01:00"], "every day at 01:00 and 13:30"),
    (["mon", "tue", "wed", "thu", "fri"], ["01:00", "13:30"], "on weekdays at 01:00 and 13:30"),
    (["sat", "sun"], ["02:00"], "at weekends at 02:00"),
    (["mon"], ["01:00"], "on Monday at 01:00"),
    (["mon", "wed"], ["01:00"], "on Monday and Wednesday at 01:00"),
    (["mon", "wed", "fri"], ["03:00", "01:00", "02:00"], "on Monday, Wednesday and Friday at 01:00, 02:00 and 03:00"),
    (["sun", "mon"], ["23:00"], "on Monday and Sunday at 23:00"),
])
def test_describe(days, times, expected):
    assert schedule.describe(days, times) == expected


@pytest.mark.parametrize("options, now, expected", [
    ({"times": ["01:00", "13:30"]}, at(0, 0, 30), at(0, 1, 0)),
    ({"times": ["01:00", "13:30"]}, at(0, 1, 0), at(0, 13, 30)),          # the run due now is under way
    ({"times": ["01:00", "13:30"]}, at(0, 0, 59, 30), at(0, 1, 0)),
    ({"times": ["01:00", "13:30"]}, at(0, 12, 0), at(0, 13, 30)),
    ({"times": ["01:00", "13:30"]}, at(0, 23, 59), at(1, 1, 0)),          # across midnight
    ({"times": ["01:00"], "days": ["mon"]}, at(0, 14, 0), at(7, 1, 0)),   # a week later
    ({"times": ["01:00"], "days": ["mon"]}, at(0, 0, 59), at(0, 1, 0)),
    ({"times": ["01:00"], "days": ["sun"]}, at(5, 23, 0), at(6, 1, 0)),    # Saturday -> Sunday
    ({"times": ["01:00"], "days": ["mon"]}, at(6, 2, 0), at(7, 1, 0)),     # Sunday -> Monday
    ({"times": ["01:00", "22:00"], "days": ["wed", "fri"]}, at(2, 22, 30), at(4, 1, 0)),
    ({"times": ["01:00"], "days": ["sat", "sun"]}, at(0, 9, 0), at(5, 1, 0)),
    ({"times": ["00:00"]}, dt.datetime(2024, 12, 31, 23, 30), dt.datetime(2025, 1, 1, 0, 0)),
    ({"times": ["01:00"], "days": ["wed"]}, dt.datetime(2024, 12, 30, 5, 0), dt.datetime(2025, 1, 1, 1, 0)),
])
def test_next_run(options, now, expected):
    assert schedule.next_run(make(**options), now) == expected


def test_next_run_disabled_is_none():
    assert schedule.next_run(make(enabled=False), at(0, 0, 0)) is None


@pytest.mark.parametrize("suspended_until, now, expected", [
    ("2025-01-09", at(0, 12, 0), at(3, 1, 0)),                  # date only: midnight, then the 01:00 run
    ("2025-01-09T01:00", at(0, 12, 0), at(3, 1, 0)),            # resuming exactly at a slot: that run counts
    ("2025-01-09T01:01", at(0, 12, 0), at(3, 13, 30)),
    ("2025-01-09T13:30", at(0, 12, 0), at(3, 13, 30)),
    ("2025-01-09T23:00", at(0, 12, 0), at(4, 1, 0)),            # next day
    ("2025-01-12T14:00", at(0, 12, 0), at(7, 1, 0)),            # Sunday afternoon -> Monday: across the week
    ("2025-01-06T00:10", at(0, 12, 0), at(0, 13, 30)),          # over already: no effect
    ("2025-01-01", at(0, 0, 30), at(0, 1, 0)),
])
def test_next_run_after_suspension(suspended_until, now, expected):
    s = make(times=["01:00", "13:30"], suspended_until=suspended_until)
    assert schedule.next_run(s, now) == expected


def test_next_run_suspension_with_days_subset():
    s = make(times=["01:00"], days=["fri"], suspended_until="2025-01-10T02:00")  # a Friday, after the run
    assert schedule.next_run(s, at(0, 12, 0)) == at(11, 1, 0)


def test_next_run_suspended_and_disabled_is_none():
    assert schedule.next_run(make(enabled=False, suspended_until="2025-01-09"), at(0, 12, 0)) is None


@pytest.mark.parametrize("options, now, expected", [
    ({"times": ["01:00"]}, at(0, 0, 30), at(-1, 1, 0)),
    ({"times": ["01:00"]}, at(0, 1, 0), at(0, 1, 0)),
    ({"times": ["01:00"]}, at(0, 1, 0, 45), at(0, 1, 0)),
    ({"times": ["01:00", "13:30"]}, at(0, 20, 0), at(0, 13, 30)),
    ({"times": ["01:00", "13:30"]}, at(0, 13, 29), at(0, 1, 0)),
    ({"times": ["01:00"], "days": ["mon"]}, at(0, 0, 30), at(-7, 1, 0)),
    ({"times": ["01:00"], "days": ["fri"]}, at(0, 12, 0), at(-3, 1, 0)),
    ({"times": ["23:00"]}, dt.datetime(2025, 1, 1, 0, 30), dt.datetime(2024, 12, 31, 23, 0)),
])
def test_last_due(options, now, expected):
    assert schedule.last_due(make(**options), now) == expected


# -- restore drills: a second line in the same cron file ------------------------------------------

def test_without_drill_times_the_cron_file_has_no_drill_line():
    text = schedule.render_cron(make(drill_days=["sun"]), "/usr/local/sbin/repobackup")
    assert " drill " not in text and "drills" not in text
    assert schedule.next_run(make(), at(0, 0, 0), drill=True) is None


@pytest.mark.parametrize("enabled", [True, False])
def test_drill_lines_follow_the_backup_lines_and_switch_with_them(enabled):
    s = make(server_name="db_2", run_as="backup", times=["01:00"], drill_days=["sun", "wed"],
             drill_times=["04:30", "16:30", "05:00"], enabled=enabled,
             repositories=["evil; rm -rf ~"], destination="/srv/b; touch /tmp/pwned")
    text = schedule.render_cron(s, "/usr/local/sbin/repobackup")
    prefix = "" if enabled else "#disabled# "
    assert _entries(text, "drill") == [
        prefix + "30 4,16 * * 0,3 backup /usr/local/sbin/repobackup drill --server db_2 --scheduled",
        prefix + "0 5 * * 0,3 backup /usr/local/sbin/repobackup drill --server db_2 --scheduled"]
    lines = text.splitlines()
    assert lines.index(_entries(text, "run")[-1]) < lines.index(_entries(text, "drill")[0])
    assert "restore drills on Wednesday and Sunday at 04:30, 05:00 and 16:30" in lines[1]
    for fragment in ("rm -rf", "pwned", "/srv/b"):
        assert fragment not in text


def test_next_drill():
    s = make(drill_days=["wed"], drill_times=["04:00"])
    assert schedule.next_run(s, at(0, 12, 0), drill=True) == at(2, 4, 0)
    assert schedule.next_run(make(enabled=False, drill_times=["04:00"]), at(0, 12, 0), drill=True) is None
