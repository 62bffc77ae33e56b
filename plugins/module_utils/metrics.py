# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text format for node_exporter's textfile collector, written atomically."""

from __future__ import annotations

import os

from .clock import parse_iso, utc_now
from .layout import atomic_write, makedirs

_GAUGES = (
    ("repobackup_last_success_timestamp_seconds", "Start of the last successful backup, Unix time."),
    ("repobackup_last_duration_seconds", "Duration of the last backup attempt."),
    ("repobackup_last_size_bytes", "Size of the last successful backup."),
    ("repobackup_last_failed", "1 when the last backup attempt failed, else 0."),
    ("repobackup_consecutive_failures", "Failed attempts since the last success."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_DRILL_GAUGES = (
    ("repobackup_drill_last_timestamp_seconds", "Start of the last restore drill, Unix time."),
    ("repobackup_drill_ok", "1 when the last restore drill passed, 0 when it failed."),
    ("repobackup_drill_last_success_timestamp_seconds", "Start of the last restore drill that passed, Unix time."),
    ("repobackup_proven_restorable_timestamp_seconds",
     "Start of the newest backup a restore drill proved restorable, Unix time."),
    ("repobackup_drill_error_info", "1 for a repository whose last restore drill failed; the label error says why."),
)
ERROR_LABEL_MAX = 300  # characters of a drill's error kept in the label

_AGE_GAUGES = (
    ("repobackup_backup_age_seconds", "Age of the newest good backup when the file was written, seconds."),
    ("repobackup_backup_stale", "1 when the newest good backup was older than repobackup_max_age_seconds, else 0."),
    ("repobackup_max_age_seconds", "Age after which the newest good backup is stale (autobackup_max_age_hours)."),
)

_DESTINATION_GAUGES = (
    ("repobackup_destination_usable", "1 when the last run could write to the destination, else 0."),
    ("repobackup_destination_free_bytes", "Free space at the destination after the last run."),
)


def _drill_rows(rows: dict, labels: str, entry: dict) -> None:
    drill = entry.get("last_drill")
    proven = entry.get("proven_restorable") or {}
    if drill:
        rows["repobackup_drill_last_timestamp_seconds"].append((labels, "%d" % parse_iso(drill["time"]).timestamp()))
        rows["repobackup_drill_ok"].append((labels, "1" if drill.get("result") == "ok" else "0"))
        if drill.get("result") != "ok":
            error = (drill.get("error") or "unknown")[:ERROR_LABEL_MAX]
            rows["repobackup_drill_error_info"].append((labels[:-1] + ',error="%s"}' % _label(error), "1"))
    if proven.get("drill"):
        rows["repobackup_drill_last_success_timestamp_seconds"].append(
            (labels, "%d" % parse_iso(proven["drill"]).timestamp()))
    if proven.get("time"):
        rows["repobackup_proven_restorable_timestamp_seconds"].append(
            (labels, "%d" % parse_iso(proven["time"]).timestamp()))


def _age_rows(rows: dict, server: str, repos: dict, max_age: float, now) -> None:
    """Per repository with a good backup its age and the stale flag; per server the limit.  The alert rules
    compute the age from ``time()`` as well: this file stops changing when runs stop."""
    now = now or utc_now()
    for repo, entry in sorted(repos.items()):
        good = entry.get("last_success")
        if good:
            labels = '{server="%s",repository="%s"}' % (_label(server), _label(repo))
            age = max(0, int((now - parse_iso(good["time"])).total_seconds()))
            rows["repobackup_backup_age_seconds"].append((labels, "%d" % age))
            rows["repobackup_backup_stale"].append((labels, "1" if age > max_age else "0"))
    rows["repobackup_max_age_seconds"] = [('{server="%s"}' % _label(server), "%d" % max_age)]


def render(server: str, repos: dict, destination: dict | None = None, max_age: float | None = None,
           now=None) -> str:
    """Per repository the backup gauges, then the drill gauges (for repositories drilled at least once: a
    repository never drilled has no ``repobackup_drill_ok``, so an alert on its absence finds it)."""
    rows = {name: [] for name, _text in _GAUGES + _DRILL_GAUGES + _AGE_GAUGES}
    for repo, entry in sorted(repos.items()):
        labels = '{server="%s",repository="%s"}' % (_label(server), _label(repo))
        last = entry.get("last") or {}
        good = entry.get("last_success")
        if good:
            rows["repobackup_last_success_timestamp_seconds"].append(
                (labels, "%d" % parse_iso(good["time"]).timestamp()))
            rows["repobackup_last_size_bytes"].append((labels, "%d" % (good.get("size") or 0)))
        if last:
            rows["repobackup_last_duration_seconds"].append((labels, "%g" % (last.get("duration") or 0)))
            rows["repobackup_last_failed"].append((labels, "1" if last.get("result") == "failed" else "0"))
        rows["repobackup_consecutive_failures"].append((labels, "%d" % entry.get("failures", 0)))
        _drill_rows(rows, labels, entry)
    if max_age is not None:
        _age_rows(rows, server, repos, max_age, now)
    if destination is not None:
        labels = '{server="%s",kind="%s"}' % (_label(server), _label(destination["kind"]))
        rows["repobackup_destination_usable"] = [(labels, "1" if destination["usable"] else "0")]
        rows["repobackup_destination_free_bytes"] = [] if destination.get("free") is None \
            else [(labels, "%d" % destination["free"])]
    lines = []
    drilled = any(rows[name] for name, _text in _DRILL_GAUGES)
    for name, text in _GAUGES + (_DRILL_GAUGES if drilled else ()) + (_AGE_GAUGES if max_age is not None else ()) + (
            _DESTINATION_GAUGES if destination is not None else ()):
        lines += ["# HELP %s %s" % (name, text), "# TYPE %s gauge" % name]
        lines += ["%s%s %s" % (name, labels, value) for labels, value in rows[name]]
    return "\n".join(lines) + "\n"


def write_metrics(path: str, server: str, repos: dict, destination: dict | None = None,
                  max_age: float | None = None) -> None:
    makedirs(os.path.dirname(path), 0o755)
    atomic_write(path, render(server, repos, destination, max_age).encode("utf-8"), mode=0o644)
