# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Schedule: days of the week and times of day, as cron entries, words and the next run."""

from __future__ import annotations

import datetime

from .settings import DAYS, Settings

CRON_DOW = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_NAMES = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday",
          "fri": "Friday", "sat": "Saturday", "sun": "Sunday"}


def cron_fields(days: list, times: list) -> list:
    """(minute, hour, day-of-week) triples; times sharing a minute share an entry."""
    by_minute: dict = {}
    for hhmm in times:
        hour, minute = (int(part) for part in hhmm.split(":"))
        by_minute.setdefault(minute, []).append(hour)
    if set(days) == set(DAYS):
        dow = "*"
    else:
        dow = ",".join(str(CRON_DOW[d]) for d in sorted(days, key=lambda d: CRON_DOW[d]))
    return [(str(minute), ",".join(str(h) for h in sorted(hours)), dow)
            for minute, hours in sorted(by_minute.items(), key=lambda kv: (min(kv[1]), kv[0]))]


def render_cron(settings: Settings, launcher: str) -> str:
    """The cron file for one server: a fixed command line, no user text in it.

    Backups first; scheduled restore drills (``drill_times`` not empty) follow as lines of their own,
    on and off with the backups.  Without drills the file is what it was before drills existed.
    """
    drills = drill_times(settings)
    lines = [
        "# Managed by reposerver.backup (autobackup_settings): edit the inventory, not this file.",
        "# Server %s: %s%s; auto-backup %s." % (
            settings.server, describe(settings.days, settings.times),
            "; restore drills %s" % describe(drill_days(settings), drills) if drills else "",
            "on" if settings.enabled else "off (entries kept, disabled)"),
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    prefix = "" if settings.enabled else "#disabled# "
    for minute, hour, dow in cron_fields(settings.days, settings.times):
        lines.append("%s%s %s * * %s %s %s run --server %s --scheduled" % (
            prefix, minute, hour, dow, settings.run_as, launcher, settings.server))
    for minute, hour, dow in cron_fields(drill_days(settings), drills) if drills else []:
        lines.append("%s%s %s * * %s %s %s drill --server %s --scheduled" % (
            prefix, minute, hour, dow, settings.run_as, launcher, settings.server))
    return "\n".join(lines) + "\n"


def drill_days(settings: Settings) -> list:
    return settings.drill.get("days") or list(DAYS)


def drill_times(settings: Settings) -> list:
    """The times of scheduled restore drills; [] when there are none."""
    return settings.drill.get("times") or []


def describe(days: list, times: list) -> str:
    """The schedule in words, e.g. 'every day at 01:00'."""
    if set(days) == set(DAYS):
        when = "every day"
    elif set(days) == set(DAYS[:5]):
        when = "on weekdays"
    elif set(days) == set(DAYS[5:]):
        when = "at weekends"
    else:
        when = "on " + _join([_NAMES[d] for d in DAYS if d in days])
    return "%s at %s" % (when, _join(sorted(times)))


def _join(items: list) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def next_run(settings: Settings, now: datetime.datetime | None = None, drill: bool = False) -> datetime.datetime | None:
    """The next scheduled run that will really back up (``drill``: restore drill), host local time, or None
    when off (or no drills are scheduled)."""
    days, times = (drill_days(settings), drill_times(settings)) if drill else (settings.days, settings.times)
    if not settings.enabled or not times:
        return None
    now = now or datetime.datetime.now()
    start = now.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    resume = settings.suspended_until_datetime()
    if resume is not None and resume > start:
        start = resume.replace(second=0, microsecond=0)
        if start < resume:
            start += datetime.timedelta(minutes=1)
    slots = sorted(tuple(int(x) for x in t.split(":")) for t in times)
    for offset in range(0, 8):
        day = (start + datetime.timedelta(days=offset)).date()
        if DAYS[day.weekday()] not in days:
            continue
        for hour, minute in slots:
            moment = datetime.datetime.combine(day, datetime.time(hour, minute))
            if moment >= start:
                return moment
    return None


def last_due(settings: Settings, now: datetime.datetime | None = None) -> datetime.datetime | None:
    """The most recent scheduled time at or before ``now`` (for missed-run checks)."""
    now = (now or datetime.datetime.now()).replace(second=0, microsecond=0)
    slots = sorted((tuple(int(x) for x in t.split(":")) for t in settings.times), reverse=True)
    for offset in range(0, 8):
        day = (now - datetime.timedelta(days=offset)).date()
        if DAYS[day.weekday()] not in settings.days:
            continue
        for hour, minute in slots:
            moment = datetime.datetime.combine(day, datetime.time(hour, minute))
            if moment <= now:
                return moment
    return None
