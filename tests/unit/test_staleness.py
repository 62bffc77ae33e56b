# -*- coding: utf-8 -*-
"""Staleness: a covered repository whose newest good backup is older than max_age_hours (by default the
schedule's longest gap plus a quarter) is flagged in status, the text report and the metrics file; a server
that is off or suspended is shown as off, not stale."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from repobackup_testlib import make_db

from ansible_collections.reposerver.backup.plugins.module_utils import metrics, report, schedule
from ansible_collections.reposerver.backup.plugins.module_utils import settings as S
from ansible_collections.reposerver.backup.plugins.module_utils.clock import iso, parse_iso
from ansible_collections.reposerver.backup.plugins.module_utils.errors import SettingsError


def age_backup(engine, name, hours):
    """Fake an old backup: the recorded success (and its manifest's start) moved ``hours`` back."""
    path = os.path.join(engine.state_dir, "status.json")
    with open(path, encoding="utf-8") as handle:
        status = json.load(handle)
    entry = status["repositories"][name]
    moved = iso(parse_iso(entry["last_success"]["time"]) - dt.timedelta(hours=hours))
    entry["last_success"]["time"] = entry["last"]["time"] = moved
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(status, handle)
    return status


@pytest.mark.parametrize("days, times, gap_hours, limit_hours", [
    (list(S.DAYS), ["01:00"], 24, 30),  # daily: 24 h + 6 h
    (list(S.DAYS), ["01:00", "13:00"], 12, 15),
    (["mon", "tue", "wed", "thu", "fri"], ["01:00"], 72, 90),  # Friday to Monday
    (list(S.DAYS), ["%02d:00" % h for h in range(24)], 1, 3),  # hourly: at least 2 h of margin
])
def test_the_default_limit_is_the_longest_gap_plus_a_quarter(days, times, gap_hours, limit_hours):
    settings = S.validate({"destination": "/srv/b", "days": days, "times": times})
    assert schedule.longest_gap(settings) == dt.timedelta(hours=gap_hours)
    assert schedule.max_age(settings) == dt.timedelta(hours=limit_hours)
    assert schedule.max_age(S.validate({"destination": "/srv/b", "max_age_hours": 7})) == dt.timedelta(hours=7)


@pytest.mark.parametrize("value", [-1, 87601, "soon", 1.5])
def test_a_bad_max_age_is_refused_by_name(value):
    with pytest.raises(SettingsError, match=r"^max_age_hours %s is not allowed; use a whole number from 0 to 87600\.$"
                       % repr(value).replace(".", r"\.")):
        S.validate({"destination": "/srv/b", "max_age_hours": value})


def test_a_backup_older_than_the_schedule_allows_is_stale(make_engine, sqlite_root, tmp_path):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [2])
    engine = make_engine(metrics_file=str(tmp_path / "prom" / "repobackup.prom"))  # daily at 01:00: 30 hours
    assert engine.run()["result"] == "ok"
    fresh = engine.status()
    assert (fresh["stale"], fresh["max_age_hours"]) == (0, 30)
    assert fresh["repositories"]["a"]["stale"] is False

    status = age_backup(engine, "a", 31)  # as if cron had stopped a day and more ago
    info = engine.status()
    assert info["stale"] == 1
    assert info["repositories"]["a"]["stale"] is True
    assert info["repositories"]["b"]["stale"] is False
    assert "STALE        a: no good backup in the last 30 hours" in report.status_text(info)

    engine._write_metrics(status)  # what the next run or drill writes
    text = (tmp_path / "prom" / "repobackup.prom").read_text()
    assert 'repobackup_backup_stale{server="main",repository="a"} 1' in text
    assert 'repobackup_backup_stale{server="main",repository="b"} 0' in text
    assert 'repobackup_max_age_seconds{server="main"} 108000' in text
    age = int(text.split('repobackup_backup_age_seconds{server="main",repository="a"} ')[1].split()[0])
    assert age >= 31 * 3600


def test_a_longer_limit_or_a_server_that_is_off_is_not_stale(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()
    engine.run()
    age_backup(engine, "a", 31)
    assert make_engine(max_age_hours=48).status()["repositories"]["a"]["stale"] is False
    for off in ({"enabled": False}, {"suspended_until": "2999-01-01"}):
        info = make_engine(**off).status()
        assert info["stale"] == 0 and info["repositories"]["a"]["stale"] is False


def test_a_repository_never_backed_up_is_missed_not_stale(make_engine, sqlite_root, write_settings):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(max_age_hours=1)
    path = write_settings(engine.settings)
    old = (dt.datetime.now() - dt.timedelta(days=2)).timestamp()
    os.utime(path, (old, old))
    info = engine.status()
    assert info["repositories"]["a"]["stale"] is False
    assert info["missed"] is True


def test_the_metrics_file_has_no_age_rows_when_none_is_asked_for():
    text = metrics.render("main", {"a": {"last_success": {"time": "2026-01-01T00:00:00Z"}}})
    assert "repobackup_backup_age_seconds" not in text
