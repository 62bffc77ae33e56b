# -*- coding: utf-8 -*-
"""splay_minutes: a stable offset per host id and server, 0 to N-1 minutes, added to every scheduled time of
the cron file, next_run, last_due (missed runs) and the staleness limit."""

from __future__ import annotations

import collections
import datetime as dt

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import schedule
from ansible_collections.reposerver.backup.plugins.module_utils import settings as S
from ansible_collections.reposerver.backup.plugins.module_utils.errors import SettingsError


def settings(**options):
    return S.validate(dict({"destination": "/srv/b", "host_id": "db2.example.net"}, **options))


def test_200_hosts_spread_evenly_and_each_keeps_its_offset():
    hosts = ["host%03d.example.net" % n for n in range(200)]
    offsets = [schedule.splay_offset(settings(host_id=h, splay_minutes=10)) for h in hosts]
    assert offsets == [schedule.splay_offset(settings(host_id=h, splay_minutes=10)) for h in hosts]
    counts = collections.Counter(offsets)
    assert set(counts) == set(range(10))  # every minute used, none beyond N-1
    assert max(counts.values()) <= 2 * min(counts.values()) + 10, counts  # 20 each expected; no pile-up
    # The server name counts too: two servers of one host need not start together.
    assert len({schedule.splay_offset(settings(server_name="s%d" % n, splay_minutes=60)) for n in range(20)}) > 10
    assert schedule.splay_offset(settings()) == 0 and schedule.splay_offset(settings(splay_minutes=1)) == 0


def test_the_cron_file_next_run_and_last_due_use_the_effective_times():
    plain = settings(times=["01:00", "23:50"], days=["mon", "wed"])
    spread = settings(times=["01:00", "23:50"], days=["mon", "wed"], splay_minutes=30)
    offset = schedule.splay_offset(spread)
    assert 10 < offset < 30, "the test needs an offset that moves 23:50 past midnight: pick another host id"
    cron = schedule.render_cron(spread, "/usr/local/sbin/repobackup")
    entries = [line.split()[:5] for line in cron.splitlines() if line and line[0].isdigit()]
    # 01:00 + offset on Monday and Wednesday; 23:50 + offset just after midnight, on Tuesday and Thursday.
    assert sorted(entries) == sorted([[str(offset - 10), "0", "*", "*", "2,4"], [str(offset), "1", "*", "*", "1,3"]])
    assert "runs %d minutes later" % offset in cron
    assert "splay" not in schedule.render_cron(plain, "/x")
    monday_noon = dt.datetime(2026, 11, 30, 12, 0)  # a Monday
    assert schedule.next_run(plain, monday_noon) == dt.datetime(2026, 11, 30, 23, 50)
    assert schedule.next_run(spread, monday_noon) == dt.datetime(2026, 12, 1, 0, offset - 10)
    assert schedule.last_due(spread, monday_noon) == dt.datetime(2026, 11, 30, 1, offset)
    assert schedule.last_due(spread, dt.datetime(2026, 11, 30, 1, offset - 1)) == dt.datetime(2026, 11, 26, 0, offset - 10)


def test_the_status_shows_the_offset_and_the_effective_times(make_engine):
    engine = make_engine(splay_minutes=30, host_id="db2.example.net", times=["01:00"])
    offset = schedule.splay_offset(engine.settings)
    info = engine.status(now=dt.datetime(2026, 11, 30, 12, 0))
    assert (info["splay_minutes"], info["splay_offset_minutes"]) == (30, offset)
    assert info["schedule"]["text"] == "every day at 01:%02d (%d minutes of splay)" % (offset, offset)
    assert info["next_run"] == "2026-12-01T01:%02d" % offset


@pytest.mark.parametrize("value", [-1, 721, "x"])
def test_a_bad_splay_is_refused_by_name(value):
    with pytest.raises(SettingsError, match=r"^splay_minutes %r is not allowed; use a whole number from 0 to 720\.$"
                       % (value,)):
        settings(splay_minutes=value)
