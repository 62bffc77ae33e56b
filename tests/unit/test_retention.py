# -*- coding: utf-8 -*-
"""retention: keep_last / daily / weekly / monthly selection, time zones, ties, invariants."""

from __future__ import annotations

import datetime as dt
import random
import time

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils import retention

UTC = dt.timezone.utc
EST = dt.timezone(dt.timedelta(hours=-5))


def at(text: str, tz=UTC) -> dt.datetime:
    """'2026-12-31 10:00' -> aware datetime."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz)


def named(*texts):
    """Backups keyed by their own text, in a shuffled order."""
    pairs = [(text, at(text)) for text in texts]
    random.Random(len(texts)).shuffle(pairs)
    return pairs


def test_empty_input_keeps_nothing():
    assert retention.keep([], 5, 5, 5, 5, tz=UTC) == set()


def test_keep_last_only():
    backups = named("2026-01-01 00:00", "2026-01-02 00:00", "2026-01-03 00:00", "2026-01-04 00:00")
    assert retention.keep(backups, 2, tz=UTC) == {"2026-01-03 00:00", "2026-01-04 00:00"}
    assert retention.keep(backups, 10, tz=UTC) == {text for text, dummy in backups}


@pytest.mark.parametrize("keep_last", [0, -1, -100])
def test_keep_last_below_one_still_keeps_newest(keep_last):
    backups = named("2026-01-01 00:00", "2026-01-02 00:00", "2026-01-03 00:00")
    assert retention.keep(backups, keep_last, tz=UTC) == {"2026-01-03 00:00"}
    assert retention.keep(backups, keep_last, 0, 0, 0, tz=UTC) == {"2026-01-03 00:00"}


def test_daily_days_without_backups_do_not_count():
    backups = named("2026-03-01 12:00", "2026-03-02 12:00", "2026-03-05 12:00",
                    "2026-03-09 12:00", "2026-03-10 12:00")
    assert retention.keep(backups, 1, keep_daily=3, tz=UTC) == {
        "2026-03-10 12:00", "2026-03-09 12:00", "2026-03-05 12:00"}


def test_daily_keeps_newest_of_each_day():
    backups = named("2026-03-01 01:00", "2026-03-01 13:00", "2026-03-01 23:59",
                    "2026-03-02 00:00", "2026-03-02 06:00",
                    "2026-03-03 05:00", "2026-03-03 05:30")
    assert retention.keep(backups, 1, keep_daily=3, tz=UTC) == {
        "2026-03-03 05:30", "2026-03-02 06:00", "2026-03-01 23:59"}
    assert retention.keep(backups, 1, keep_daily=2, tz=UTC) == {"2026-03-03 05:30", "2026-03-02 06:00"}


def test_weekly_across_year_boundary_iso_week_53():
    # 2026-12-28 (Mon) .. 2027-01-03 (Sun) is 2026-W53; 2027-01-04 .. 2027-01-10 is 2027-W01.
    assert dt.date(2026, 12, 31).isocalendar()[:2] == dt.date(2027, 1, 1).isocalendar()[:2] == (2026, 53)
    days = ["2026-12-%02d 10:00" % day for day in range(21, 32)] + ["2027-01-%02d 10:00" % day for day in range(1, 11)]
    backups = named(*days)
    assert retention.keep(backups, 1, keep_weekly=2, tz=UTC) == {"2027-01-10 10:00", "2027-01-03 10:00"}
    assert retention.keep(backups, 1, keep_weekly=3, tz=UTC) == {
        "2027-01-10 10:00", "2027-01-03 10:00", "2026-12-27 10:00"}
    # Only backups in W53 on both sides of new year: one week, its newest is in 2027.
    only53 = named("2026-12-30 10:00", "2026-12-31 10:00", "2027-01-01 10:00")
    assert retention.keep(only53, 1, keep_weekly=5, tz=UTC) == {"2027-01-01 10:00"}


def test_monthly_across_year_boundary():
    backups = named("2026-11-02 10:00", "2026-11-29 10:00", "2026-12-15 10:00", "2026-12-31 23:00",
                    "2027-01-01 00:00", "2027-01-20 10:00", "2027-02-01 10:00", "2027-02-14 10:00")
    assert retention.keep(backups, 1, keep_monthly=3, tz=UTC) == {
        "2027-02-14 10:00", "2027-01-20 10:00", "2026-12-31 23:00"}
    assert retention.keep(backups, 1, keep_monthly=12, tz=UTC) == {
        "2027-02-14 10:00", "2027-01-20 10:00", "2026-12-31 23:00", "2026-11-29 10:00"}


def test_monthly_months_of_different_lengths():
    backups = named("2027-01-30 10:00", "2027-01-31 10:00", "2027-02-27 10:00", "2027-02-28 10:00",
                    "2027-03-01 10:00")
    assert retention.keep(backups, 1, keep_monthly=3, tz=UTC) == {
        "2027-03-01 10:00", "2027-02-28 10:00", "2027-01-31 10:00"}
    assert retention.keep(backups, 1, keep_daily=3, tz=UTC) == {
        "2027-03-01 10:00", "2027-02-28 10:00", "2027-02-27 10:00"}


def test_leap_day():
    backups = named("2028-02-28 10:00", "2028-02-29 08:00", "2028-02-29 20:00", "2028-03-01 10:00")
    assert retention.keep(backups, 1, keep_daily=2, tz=UTC) == {"2028-03-01 10:00", "2028-02-29 20:00"}
    assert retention.keep(backups, 1, keep_monthly=2, tz=UTC) == {"2028-03-01 10:00", "2028-02-29 20:00"}
    # 2028-02-28 (Mon) .. 2028-03-05 is one ISO week.
    assert retention.keep(backups, 1, keep_weekly=2, tz=UTC) == {"2028-03-01 10:00"}


def test_union_of_rules():
    texts = ["2026-10-15 10:00", "2026-11-10 10:00", "2026-11-20 10:00", "2026-12-01 10:00",
             "2026-12-02 10:00", "2026-12-08 10:00", "2026-12-09 08:00", "2026-12-09 18:00",
             "2026-12-10 10:00"]
    backups = named(*texts)
    assert retention.keep(backups, 2, keep_daily=3, keep_weekly=2, keep_monthly=3, tz=UTC) == {
        "2026-12-10 10:00", "2026-12-09 18:00",             # last 2
        "2026-12-08 10:00",                                 # 3 daily (+ the two above)
        "2026-12-02 10:00",                                 # weekly: W50 -> 12-10, W49 -> 12-02
        "2026-11-20 10:00",                                 # monthly: Dec, Nov, Oct
        "2026-10-15 10:00"}


def test_time_zone_shifts_the_day():
    # 03:00 UTC on the 2nd is 22:00 on the 1st at -05:00.
    backups = [("a", at("2026-06-01 20:00")), ("b", at("2026-06-02 03:00")), ("c", at("2026-06-02 12:00"))]
    assert retention.keep(backups, 1, keep_daily=2, tz=UTC) == {"c", "a"}
    assert retention.keep(backups, 1, keep_daily=2, tz=EST) == {"c", "b"}
    # The moment's own offset does not matter, only tz does.
    shifted = [(key, moment.astimezone(EST)) for key, moment in backups]
    assert retention.keep(shifted, 1, keep_daily=2, tz=UTC) == {"c", "a"}


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset")
def test_default_tz_is_host_local(monkeypatch):
    backups = [("a", at("2026-06-01 20:00")), ("b", at("2026-06-02 03:00")), ("c", at("2026-06-02 12:00"))]
    try:
        for zone, expected in (("EST5", {"c", "b"}), ("UTC0", {"c", "a"})):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            assert retention.keep(backups, 1, keep_daily=2) == expected
    finally:
        monkeypatch.undo()
        time.tzset()


def test_equal_moments_are_deterministic():
    moment = at("2026-05-05 10:00")
    backups = [("b", moment), ("a", moment), ("c", moment), ("z", at("2026-05-04 10:00"))]
    for seed in range(10):
        shuffled = list(backups)
        random.Random(seed).shuffle(shuffled)
        assert retention.keep(shuffled, 1, tz=UTC) == {"c"}
        assert retention.keep(shuffled, 2, tz=UTC) == {"c", "b"}
        assert retention.keep(shuffled, 1, keep_daily=5, tz=UTC) == {"c", "z"}


def test_describe():
    assert retention.describe(14, 7, 4, 12) == "last 14, 7 daily, 4 weekly, 12 monthly"
    assert retention.describe(3, 0, 0, 0) == "last 3"
    assert retention.describe(5, 0, 2, 0) == "last 5, 2 weekly"
    assert retention.describe(0, 7, 0, 0) == "last 1, 7 daily"


def _random_backups(rng: random.Random):
    start = at("2026-01-01 00:00")
    count = rng.randint(1, 60)
    span = rng.choice([3, 40, 400, 1500])  # days
    return [(index, start + dt.timedelta(minutes=rng.randrange(span * 24 * 60))) for index in range(count)]


def test_invariants_over_random_sets():
    rng = random.Random(20260501)
    for _trial in range(300):
        backups = _random_backups(rng)
        keys = {key for key, _moment in backups}
        newest = max(backups, key=lambda pair: (pair[1], pair[0]))[0]
        counts = [rng.randint(-1, 5), rng.randint(0, 8), rng.randint(0, 6), rng.randint(0, 6)]
        kept = retention.keep(backups, *counts, tz=UTC)
        assert newest in kept
        assert kept <= keys
        assert len(kept) >= 1

        days = {moment.date() for _key, moment in backups}
        daily = rng.randint(0, 12)
        kept_daily = retention.keep(backups, 1, keep_daily=daily, tz=UTC)
        assert len(kept_daily) == max(1, min(daily, len(days)))
        assert len({moment.date() for key, moment in backups if key in kept_daily}) == len(kept_daily)

        for position in range(4):
            bigger = list(counts)
            bigger[position] += rng.randint(1, 5)
            assert kept <= retention.keep(backups, *bigger, tz=UTC)
