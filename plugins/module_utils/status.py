# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Status: what a run leaves in ``status.json``, and the status at a glance built from it.

``status.json`` keeps, per repository, the last attempt, the last success and the failures in a
row; the globals (PostgreSQL) the same; the last run; the last upload.  ``report`` adds what only
the moment knows (the destination, the repositories present, the lock, the next and last due
runs) and reads only: it never writes, repairs or removes anything.
"""

from __future__ import annotations

import datetime
import os

from . import schedule
from .layers import shown as shown_recipient
from .notify import read_last as read_last_notify
from .clock import iso, parse_iso, utc_now
from .errors import RepoBackupError
from .layout import VERSION, encode_name, short_host_name
from .results import UNSET, Attempt
from .retention import describe as describe_retention
from .store import MANIFEST_SUFFIX

STATUS_FORMAT = 1
GRACE = datetime.timedelta(minutes=30)  # a run may take this long before it counts as missed


# -- what a run leaves behind ----------------------------------------------------------------

def run_record(start: datetime.datetime, trigger: str, result: str, error: str | None, results: dict,
               repaired: list, globals_result: Attempt | None = None) -> dict:
    """Status's ``last_run``: when, how it was started, its result, which repositories failed."""
    run = {"start": iso(start), "end": iso(utc_now()), "trigger": trigger, "result": result,
           "error": error, "repositories": sorted(results),
           "failed": [name for name, attempt in results.items() if attempt.result == "failed"], "repaired": repaired}
    if globals_result is not None:
        run["globals"] = globals_result.result
    return run


def last_upload(attempt: Attempt, destination_kind: str) -> dict:
    """Status's ``last_upload``: the last file a run wrote to the destination, or why it could not."""
    upload = attempt.upload or {}
    return {"time": attempt.time, "result": attempt.result, "error": attempt.error,
            "destination_kind": destination_kind, "bytes": upload.get("bytes"), "seconds": upload.get("seconds"),
            "verified": upload.get("verified"), "backup": attempt.backup}


def _count(entry: dict, attempt: Attempt) -> None:
    entry["last"] = attempt.to_dict()
    if attempt.result == "failed":
        entry["failures"] = entry.get("failures", 0) + 1
    else:
        entry["last_success"] = entry["last"]
        entry["failures"] = 0


def record_run(status: dict, server: str, run: dict, results: dict, globals_result: Attempt | None,
               destination_kind: str) -> dict:
    """``status`` (as read from status.json) with a finished run's results counted in."""
    if globals_result is not None:
        _count(status.setdefault("globals", {}), globals_result)
    repos = status.get("repositories", {})
    for name, attempt in results.items():
        _count(repos.setdefault(name, {}), attempt)
    uploads = [a for a in list(results.values()) + [globals_result] if a is not None and a.upload is not UNSET]
    if uploads:
        status["last_upload"] = last_upload(uploads[-1], destination_kind)
    status.update({"format": STATUS_FORMAT, "server": server, "last_run": run, "repositories": repos})
    return status


def record_drills(status: dict, server: str, run: dict, results: dict) -> dict:
    """``status`` with a drill run counted in: per repository ``last_drill`` and, when it passed,
    ``proven_restorable`` (the backup it proved and when that backup began); ``last_drill_run``.
    A failed drill leaves the last proof standing: status tells both apart (``drill_state``)."""
    repos = status.get("repositories", {})
    for name, drill in results.items():
        entry = repos.setdefault(name, {})
        entry["last_drill"] = drill.to_dict()
        if drill.result == "ok":
            entry["proven_restorable"] = {"time": drill.backup_start, "backup": drill.backup, "drill": drill.time}
    status.update({"format": STATUS_FORMAT, "server": server, "last_drill_run": run, "repositories": repos})
    return status


def drill_state(entry: dict, max_age_days: int, now: datetime.datetime | None = None) -> str:
    """``never`` (no drill yet), ``failed`` (the newest drill failed), ``stale`` (the newest backup proven
    restorable began more than ``max_age_days`` ago) or ``ok``."""
    last = entry.get("last_drill")
    if not last:
        return "never"
    if last.get("result") != "ok":
        return "failed"
    proven = (entry.get("proven_restorable") or {}).get("time")
    try:
        age = (now.astimezone() if now else utc_now()) - parse_iso(proven)
    except (TypeError, ValueError):
        return "stale"
    return "stale" if age > datetime.timedelta(days=max_age_days) else "ok"


def record_crash(status: dict, server: str, run: dict) -> dict:
    """``status`` with the run that stopped before any result as its last run."""
    status.update({"format": STATUS_FORMAT, "server": server, "last_run": run})
    return status


# -- status at a glance ----------------------------------------------------------------------

def report(*, settings, host: str, store, state, present, chosen: dict, not_connectable: list, skipping: bool,
           settings_file: str, now: datetime.datetime | None = None) -> dict:
    """Everything at a glance.  ``present``: the repositories there (None: the server cannot be reached);
    ``chosen``: engine.selection of them; ``skipping``: whether a run now would be skipped (off, suspended);
    ``settings_file``: its time says since when the schedule holds."""
    s = settings
    dest = destination_state(store.fs)
    stored = state.read_status()
    skip = state.read_skip()
    nxt = schedule.next_run(s, now)
    per_repo = {}
    for name in sorted(set(chosen["covered"]) | set(chosen["missing"]) | set(stored.get("repositories", {}))):
        entry = stored.get("repositories", {}).get(name, {})
        success = still_there(store, name, entry.get("last_success")) if dest["reachable"] \
            else entry.get("last_success")
        per_repo[name] = {"last": entry.get("last"), "last_success": success,
                          "failures": entry.get("failures", 0),
                          "backups_kept": count_backups(store, name) if dest["reachable"] else None,
                          "covered": name in chosen["covered"],
                          "last_drill": entry.get("last_drill"),
                          "proven_restorable": (entry.get("proven_restorable") or {}).get("time"),
                          "proven_restorable_backup": (entry.get("proven_restorable") or {}).get("backup"),
                          "drill_state": drill_state(entry, s.drill["max_age_days"], now)}
    limit = schedule.max_age(s)
    for repo in per_repo.values():  # an off or suspended server is shown as off, not stale
        repo.update(staleness(repo["last_success"], limit, now, repo["covered"] and s.enabled and not skipping))
    covered = [per_repo[n] for n in chosen["covered"]]
    successes = [r["last_success"]["time"] for r in covered if r["last_success"]]
    oldest = min(successes) if len(successes) == len(covered) and successes else None
    running = state.running()
    last = due(s, settings_file, skipping, now)
    nxt_drill = schedule.next_run(s, now, drill=True)
    states = [r["drill_state"] for r in covered]
    return {
        "format": STATUS_FORMAT, "engine_version": VERSION,
        "server": s.server, "kind": s.kind, "host": host, "enabled": s.enabled,
        "suspended_until": s.suspended_until,
        "schedule": {"days": s.days, "times": s.times, "text": schedule.effective_text(s)},
        "next_run": nxt.isoformat(timespec="minutes") if nxt else None,
        "destination": s.destination, "destination_kind": dest["kind"], "in_use": s.in_use,
        "destination_reachable": dest["reachable"], "destination_error": dest["error"],
        "destination_free_bytes": dest["free_bytes"], "destination_mount_point": dest["mount_point"],
        "require_mount": s.require_mount, "last_upload": stored.get("last_upload"),
        "keep_last": s.keep_last, "retention": dict(s.retention(), text=describe_retention(**s.retention())),
        "metrics_file": s.metrics_file,
        "encrypt_to": [shown_recipient(r) for r in s.encrypt_to], "compression": s.compression,
        "server_reachable": present is not None,
        "covered": chosen["covered"], "not_covered": chosen["not_covered"], "missing": chosen["missing"],
        "not_connectable": not_connectable,
        "last_run": stored.get("last_run"), "last_skip": skip, "running": running,
        "last_notify": read_last_notify(state.path("last_notify.json")),
        "last_success": max(successes) if successes else None, "oldest_last_success": oldest,
        "failures": sum(1 for r in covered if (r["last"] or {}).get("result") == "failed"),
        "last_due": last.isoformat(timespec="minutes") if last else None,
        "missed": missed(last, oldest, bool(covered), running, now),
        "max_age_hours": round(limit.total_seconds() / 3600, 2), "stale": sum(1 for r in covered if r["stale"]),
        "splay_minutes": s.splay_minutes, "splay_offset_minutes": schedule.splay_offset(s),
        "globals": globals_still_there(store, stored.get("globals")) if dest["reachable"] else stored.get("globals"),
        "pending_repairs": state.pending_repairs(),
        "drill": {"days": schedule.drill_days(s), "times": schedule.drill_times(s),
                  "text": schedule.describe(schedule.drill_days(s), schedule.drill_times(s))
                  if schedule.drill_times(s) else "none scheduled",
                  "next": nxt_drill.isoformat(timespec="minutes") if nxt_drill else None,
                  "max_age_days": s.drill["max_age_days"], "target": s.drill_target()},
        "last_drill_run": stored.get("last_drill_run"),
        "drill_failures": states.count("failed"), "drill_stale": states.count("stale"),
        "never_drilled": states.count("never"),
        "legacy_folder": legacy_folder(store) if dest["reachable"] else None,
        "repositories": per_repo,
    }


def staleness(success: dict | None, limit: datetime.timedelta, now: datetime.datetime | None,
              watched: bool) -> dict:
    """``stale``: a watched repository (covered, the server on and not suspended) whose newest good backup
    began more than ``limit`` ago.  One without any good backup is not stale: ``missed`` (a due run left no
    success) and the failures say that.  (Its age is in the metrics file; status stays the same from one
    reading to the next.)"""
    moment = now.astimezone() if now else utc_now()
    try:
        age = (moment - parse_iso(success["time"])).total_seconds() if success else None
    except (TypeError, ValueError, KeyError):
        age = None
    return {"stale": bool(watched and age is not None and age > limit.total_seconds())}


def destination_state(fs) -> dict:
    """Kind, free space and whether the destination answers (an SFTP server may not)."""
    state = {"kind": fs.kind, "mount_point": None, "free_bytes": None, "reachable": True, "error": None}
    try:
        fs.check_ready()
    except RepoBackupError as exc:
        state.update(reachable=False, error=str(exc))
    if fs.kind == "local":
        state["mount_point"] = os.path.ismount(fs.root)
    if state["reachable"]:
        state["free_bytes"] = fs.free_space()
    return state


def still_there(store, name: str | None, success: dict | None) -> dict | None:
    """``success`` while its backup is still at the destination; else the newest backup there (naming the
    one that is gone in ``replaces``), or None: status never names as last success a backup that is gone."""
    try:
        if not success or not store.gone(success.get("backup")):
            return success
        backups = store.backups(name)
    except (OSError, RepoBackupError):
        return success  # the destination cannot tell now: the record stands
    if not backups:
        return None
    return Attempt.found(store, backups[-1], replaces=success.get("backup")).to_dict()


def globals_still_there(store, entry: dict | None) -> dict | None:
    if not entry or not entry.get("last_success"):
        return entry
    return dict(entry, last_success=still_there(store, None, entry["last_success"]))


def due(settings, settings_file: str, skipping: bool, now: datetime.datetime | None) -> datetime.datetime | None:
    """The last scheduled time a run should have happened at, since the schedule was set."""
    last = schedule.last_due(settings, now)
    if last is None or not settings.enabled or skipping:
        return None
    resume = settings.suspended_until_datetime()
    if resume is not None and resume > last:
        return None
    try:
        configured = datetime.datetime.fromtimestamp(os.stat(settings_file).st_mtime)
    except OSError:
        return None
    return last if last > configured else None


def missed(last_due, oldest: str | None, any_covered: bool, running: bool, now) -> bool:
    """A due run left no success behind it, GRACE after it was due and while none runs."""
    if last_due is None or not any_covered or running:
        return False
    if (now or datetime.datetime.now()) - last_due < GRACE:
        return False
    return oldest is None or parse_iso(oldest) < last_due.astimezone()


def legacy_folder(store) -> str | None:
    """This server's folder under the short host name (engines before host ids), when there is one.

    It may hold several hosts' backups, and its manifests name only the short name: the engine
    never prunes it and never picks from it; import from it by path.
    """
    folder = os.path.join(store.fs.root, encode_name(short_host_name()), store.server)
    try:
        return store.address(folder) if folder != store.base and store.fs.exists(folder) else None
    except (OSError, RepoBackupError):
        return None


def count_backups(store, name: str) -> int:
    try:
        return sum(1 for e in store.fs.listdir(store.repo_dir(name))
                   if e.endswith(MANIFEST_SUFFIX) and not e.startswith("."))
    except (OSError, RepoBackupError):
        return 0
