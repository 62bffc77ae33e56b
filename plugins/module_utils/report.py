# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Status at a glance, as text for a terminal."""

from __future__ import annotations

from .layout import human_size


def shown(name: str) -> str:
    """A name as one line of a terminal: control characters (a newline in a database name) escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in name)


def _names(names: list) -> str:
    return ", ".join(shown(n) for n in names) or "none"


def _upload(upload: dict) -> str:
    """The last upload: its result, then only what is known of it (a local copy has no transfer time)."""
    if upload.get("error"):
        return ": " + upload["error"]
    known = []
    if upload.get("bytes") is not None:
        known.append(human_size(upload["bytes"]))
    if upload.get("seconds") is not None:
        known.append("in %ss" % upload["seconds"])
    text = " ".join(known)
    if upload.get("verified"):
        text += ", read back" if text else "read back"
    return " (%s)" % text if text else ""


def _retention(info: dict) -> str:
    return (info.get("retention") or {}).get("text") or "last %d" % info["keep_last"]


def _destination(info: dict) -> str:
    """The destination, its kind and free space, or why it cannot be used."""
    kind = info.get("destination_kind", "local")
    if kind == "local" and info.get("require_mount"):
        kind = "mounted share" if info.get("destination_mount_point") else "share NOT MOUNTED"
    text = "%s (%s" % (info["destination"], kind)
    if info.get("destination_free_bytes") is not None:
        text += ", %s free" % human_size(info["destination_free_bytes"])
    text += ")"
    if info.get("destination_reachable") is False and info.get("destination_error"):
        text += "\n             UNAVAILABLE: %s" % info["destination_error"]
    return text


def status_text(info: dict) -> str:
    state = "on" if info["enabled"] else "off"
    if info["enabled"] and info.get("suspended_until"):
        state = "on, suspended until %s" % info["suspended_until"]
    lines = [
        "server       %s (%s) on %s" % (info["server"], info["kind"], info["host"]),
        "auto-backup  %s" % state,
        "schedule     %s" % info["schedule"]["text"],
        "next run     %s" % (info["next_run"] or "none (auto-backup is off)"),
        "destination  %s" % _destination(info),
        "in use       %s; keep %s" % (info["in_use"], _retention(info)),
        "layers       %s" % _layers(info),
        "covered      %s" % _names(info["covered"]),
        "not covered  %s" % _names(info["not_covered"]),
    ]
    if info["missing"]:
        lines.append("missing      %s (named but not present)" % _names(info["missing"]))
    if info.get("not_connectable"):
        lines.append("closed       %s (accept no connections, cannot be backed up; left out of all)"
                     % _names(info["not_connectable"]))
    if not info["server_reachable"]:
        lines.append("server       UNREACHABLE")
    upload = info.get("last_upload")
    if upload:
        lines.append("last upload  %s %s%s" % (upload["time"], upload["result"], _upload(upload)))
    run = info.get("last_run")
    if run:
        error = ": " + run["error"] if run.get("error") else ""
        lines.append("last run     %s %s (%s)%s" % (run["start"], run["result"], run["trigger"], error))
    skip = info.get("last_skip")
    if skip and (not run or skip["time"] > run["start"]):
        lines.append("last skip    %s: %s" % (skip["time"], skip["reason"]))
    glob = (info.get("globals") or {}).get("last")
    if glob:
        lines.append("globals      %s %s%s" % (glob["time"], glob["result"],
                                               ": " + glob["error"] if glob.get("error") else ""))
    if info.get("missed"):
        lines.append("MISSED       the run due at %s left no successful backup" % info["last_due"])
    stale = [shown(n) for n, r in sorted(info["repositories"].items()) if r.get("stale")]
    if stale:
        lines.append("STALE        %s: no good backup in the last %g hours" % (", ".join(stale), info["max_age_hours"]))
    notified = info.get("last_notify")
    if notified:
        lines.append("last notify  %s %s: %s" % (notified.get("time"), notified.get("event"), ", ".join(
            "%s %s" % (t.get("target"), t.get("outcome") if t.get("outcome") == "ok" else "failed (%s)" % t.get("error"))
            for t in notified.get("targets") or []) or "nothing sent"))
    if info.get("running"):
        lines.append("running      a run is in progress now")
    if info["pending_repairs"]:
        lines.append("PENDING      access repair for: %s" % ", ".join(info["pending_repairs"]))
    if info.get("legacy_folder"):
        lines.append("legacy       %s: backups under the short host name, perhaps of several hosts; never pruned, "
                     "import them by path" % info["legacy_folder"])
    rows = [("repository", "last success", "last result", "size", "kept", "key needed", "error")]
    for name, repo in sorted(info["repositories"].items()):
        last = repo.get("last") or {}
        good = repo.get("last_success") or {}
        rows.append((shown(name), good.get("time", "never"), last.get("result", "-"), _size(good),
                     "?" if repo.get("backups_kept") is None else str(repo["backups_kept"]),
                     ", ".join(good.get("encrypted_to") or []) or "-", last.get("error") or ""))
    lines.append("")
    lines += _table(rows)
    lines += _drills(info)
    return "\n".join(lines)


def _layers(info: dict) -> str:
    """New backups' encryption and compression, as the settings ask."""
    recipients = info.get("encrypt_to") or []
    encrypted = "encrypted to %s" % ", ".join(recipients) if recipients else "not encrypted"
    return "%s; compression %s" % (encrypted, info.get("compression") or "none")


def _size(backup: dict) -> str:
    """A backup's stored size, with the ratio to its plaintext where the run that wrote it knew it."""
    text = human_size(backup.get("size"))
    plain = backup.get("plain_size")
    if isinstance(plain, int) and plain > 0 and isinstance(backup.get("size"), int):
        text += " (x%.2f)" % (backup["size"] / plain)
    return text


def _table(rows: list) -> list:
    """Rows of cells, the last one (an error, or nothing) left unpadded."""
    count = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(count)]
    return ["  ".join(row[i].ljust(widths[i]) for i in range(count)) + ("  " + row[-1] if row[-1] else "")
            for row in rows]


_DRILL_SHOWN = {"never": "never drilled", "failed": "DRILL FAILED", "stale": "PROOF TOO OLD", "ok": "ok"}


def _drills(info: dict) -> list:
    """Restore drills: the schedule, then per repository the last drill and the proven-restorable time."""
    drill = info.get("drill")
    if not drill:
        return []
    lines = ["", "drills       %s%s; flag a proof older than %d days" % (
        drill["text"], " (next %s)" % drill["next"] if drill.get("next") else "", drill["max_age_days"])]
    run = info.get("last_drill_run")
    if run:
        error = ": " + run["error"] if run.get("error") else ""
        lines.append("last drill   %s %s (%s)%s" % (run["start"], run["result"], run["trigger"], error))
    rows = [("repository", "last drill", "result", "proven restorable", "state", "checks or error")]
    for name, repo in sorted(info["repositories"].items()):
        last = repo.get("last_drill") or {}
        detail = last.get("error") or ", ".join(last.get("checks") or [])
        rows.append((shown(name), last.get("time", "never"), last.get("result", "-"),
                     repo.get("proven_restorable") or "never", _DRILL_SHOWN.get(repo.get("drill_state"), "-"),
                     detail))
    lines.append("")
    return lines + _table(rows)
