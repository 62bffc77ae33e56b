# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Schedule: days of the week and times of day, as cron entries, words and the next run."""

from __future__ import annotations

import datetime
import hashlib

from .layout import host_name
from .settings import DAYS, Settings

CRON_DOW = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_NAMES = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday",
          "fri": "Friday", "sat": "Saturday", "sun": "Sunday"}


def splay_offset(settings: Settings) -> int:
    """The minutes, 0 to splay_minutes - 1, added to every scheduled time of this host and server: a hash of
    the host id and the server name, so the same on every run and spread evenly over a fleet."""
    spread = getattr(settings, "splay_minutes", 0) or 0
    if spread <= 1:
        return 0
    key = "%s\0%s" % (settings.host_id or host_name(), settings.server)
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % spread


def day_slots(days: list, times: list, offset: int = 0) -> dict:
    """Day -> sorted (hour, minute) of the scheduled times moved ``offset`` minutes later (past midnight: the
    next day)."""
    slots: dict = {}
    for day in days:
        for hhmm in times:
            hour, minute = (int(part) for part in hhmm.split(":"))
            moment = hour * 60 + minute + offset
            later = DAYS[(DAYS.index(day) + moment // 1440) % 7]
            slots.setdefault(later, set()).add(divmod(moment % 1440, 60))
    return {day: sorted(found) for day, found in slots.items()}


def cron_fields(days: list, times: list, offset: int = 0) -> list:
    """(minute, hour, day-of-week) triples; times sharing a minute and days share an entry."""
    by_time: dict = {}
    for day, slots in day_slots(days, times, offset).items():
        for hour, minute in slots:
            by_time.setdefault((hour, minute), set()).add(day)
    grouped: dict = {}
    for (hour, minute), on in by_time.items():
        grouped.setdefault((minute, frozenset(on)), []).append(hour)
    out = []
    for (minute, on), hours in sorted(grouped.items(), key=lambda kv: (min(kv[1]), kv[0][0])):
        dow = "*" if on == set(DAYS) else ",".join(str(CRON_DOW[d]) for d in sorted(on, key=lambda d: CRON_DOW[d]))
        out.append((str(minute), ",".join(str(h) for h in sorted(hours)), dow))
    return out


def effective_text(settings: Settings, drill: bool = False) -> str:
    """The schedule in words with the splay offset applied."""
    days, times = (drill_days(settings), drill_times(settings)) if drill else (settings.days, settings.times)
    offset = splay_offset(settings)
    if not offset:
        return describe(days, times)
    slots = day_slots(days, times, offset)
    shifted = sorted({"%02d:%02d" % slot for found in slots.values() for slot in found})
    if sorted(slots) == sorted(days) and all(len(found) == len(set(times)) for found in slots.values()) and \
            all(slots[d] == slots[days[0]] for d in days):
        return "%s (%d minutes of splay)" % (describe(days, shifted), offset)
    return "%s, each %d minutes later (splay)" % (describe(days, times), offset)


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
    offset = splay_offset(settings)
    if offset:
        lines.insert(2, "# Every time above runs %d minutes later here (splay_minutes %d: host %s, server %s)."
                     % (offset, settings.splay_minutes, settings.host_id or host_name(), settings.server))
    for minute, hour, dow in cron_fields(settings.days, settings.times, offset):
        lines.append("%s%s %s * * %s %s %s run --server %s --scheduled" % (
            prefix, minute, hour, dow, settings.run_as, launcher, settings.server))
    for minute, hour, dow in cron_fields(drill_days(settings), drills, offset) if drills else []:
        lines.append("%s%s %s * * %s %s %s drill --server %s --scheduled" % (
            prefix, minute, hour, dow, settings.run_as, launcher, settings.server))
    return "\n".join(lines) + "\n"


def longest_gap(settings: Settings) -> datetime.timedelta:
    """The longest time between two scheduled runs in a week (splay applied)."""
    slots = day_slots(settings.days, settings.times, splay_offset(settings))
    moments = sorted(DAYS.index(day) * 1440 + hour * 60 + minute for day, found in slots.items() for hour, minute in found)
    gaps = [later - earlier for earlier, later in zip(moments, moments[1:])] + [moments[0] + 7 * 1440 - moments[-1]]
    return datetime.timedelta(minutes=max(gaps))


def max_age(settings: Settings) -> datetime.timedelta:
    """How old a covered repository's newest good backup may be before it is stale: ``max_age_hours``, or
    (0) the schedule's longest gap plus a quarter of it, at least 2 hours (a daily run: 30 hours)."""
    if getattr(settings, "max_age_hours", 0):
        return datetime.timedelta(hours=settings.max_age_hours)
    gap = longest_gap(settings)
    return gap + max(gap / 4, datetime.timedelta(hours=2))


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
    slots = day_slots(days, times, splay_offset(settings))
    for offset in range(0, 8):
        day = (start + datetime.timedelta(days=offset)).date()
        for hour, minute in slots.get(DAYS[day.weekday()], []):
            moment = datetime.datetime.combine(day, datetime.time(hour, minute))
            if moment >= start:
                return moment
    return None


def last_due(settings: Settings, now: datetime.datetime | None = None) -> datetime.datetime | None:
    """The most recent scheduled time at or before ``now`` (for missed-run checks)."""
    now = (now or datetime.datetime.now()).replace(second=0, microsecond=0)
    slots = day_slots(settings.days, settings.times, splay_offset(settings))
    for offset in range(0, 8):
        day = (now - datetime.timedelta(days=offset)).date()
        for hour, minute in reversed(slots.get(DAYS[day.weekday()], [])):
            moment = datetime.datetime.combine(day, datetime.time(hour, minute))
            if moment <= now:
                return moment
    return None
