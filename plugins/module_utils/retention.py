# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention selection: which backups to keep, as a pure function.

``keep`` takes (key, moment) pairs and returns the keys to keep: the union of
the newest ``keep_last`` backups and, per calendar day, ISO week and month, the
newest backup of each of the N most recent periods that have a backup (periods
without a backup do not count).  "Newest" is the largest (moment, key), so equal
moments resolve deterministically by key; with ``ordered=True`` it is the last in
the given order instead (the store passes backups in sequence order, so a clock
that stepped back or forward cannot make an older backup look newer).  Moments
then only say which day, week and month a backup belongs to.  Nothing here
touches the disk.
"""

from __future__ import annotations

import datetime
from typing import Callable, Hashable, Iterable, Optional, Tuple


def _periods(local: datetime.datetime) -> Tuple[tuple, tuple, tuple]:
    """Day, ISO week and month of a local datetime, as comparable tuples."""
    iso = local.date().isocalendar()
    return ((local.year, local.month, local.day), (iso[0], iso[1]), (local.year, local.month))


def _newest_per_period(ordered: list, period: Callable[[tuple], tuple], count: int) -> set:
    """Keys of the newest backup in each of the ``count`` most recent periods."""
    kept = set()
    seen = set()
    for entry in ordered:
        if len(seen) >= count:
            break
        bucket = period(entry)
        if bucket not in seen:
            seen.add(bucket)
            kept.add(entry[1])
    return kept


def keep(backups: Iterable[Tuple[Hashable, datetime.datetime]], keep_last: int, keep_daily: int = 0,
         keep_weekly: int = 0, keep_monthly: int = 0, tz: Optional[datetime.tzinfo] = None,
         ordered: bool = False) -> set:
    """Return the set of keys to keep among ``backups`` ((key, aware datetime) pairs).

    At least the newest backup is always kept (``keep_last`` < 1 counts as 1).
    Calendar periods are taken in ``tz``; None means the host's local time zone.
    ``ordered``: ``backups`` come oldest first, and that order, not the moments, says
    which backup is newer.
    """
    entries = []
    for position, (key, moment) in enumerate(backups):
        local = moment.astimezone(tz) if tz is not None else moment.astimezone()
        entries.append((position if ordered else (moment, key), key, _periods(local)))
    entries.sort(key=lambda entry: entry[0], reverse=True)
    kept = {entry[1] for entry in entries[:max(1, keep_last)]}
    for index, count in enumerate((keep_daily, keep_weekly, keep_monthly)):
        if count > 0:
            kept |= _newest_per_period(entries, lambda entry, i=index: entry[2][i], count)
    return kept


def describe(keep_last: int, keep_daily: int = 0, keep_weekly: int = 0, keep_monthly: int = 0) -> str:
    """Short English text of a policy, e.g. ``last 14, 7 daily, 4 weekly, 12 monthly``."""
    parts = ["last %d" % max(1, keep_last)]
    for count, word in ((keep_daily, "daily"), (keep_weekly, "weekly"), (keep_monthly, "monthly")):
        if count > 0:
            parts.append("%d %s" % (count, word))
    return ", ".join(parts)
