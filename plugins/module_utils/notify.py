# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Notifications: a run tells healthchecks-style dead-man's switches and webhooks how it went.

Targets are ``{url, style, events, ca_file}``.  Their URLs carry tokens, so they are secrets: they live in
``/etc/repobackup/<server>.notify.json`` (0640, group of the run-as user), never in the settings document,
status, the log or a module's output, where a target is named by its scheme and host only (``redact``).

Sending uses the standard library only (urllib), HTTPS verified against the system CA store (or the target's
``ca_file``), a short timeout per attempt and one retry.  A run spends at most ``BUDGET`` seconds on
notifications, across every target and retry; each request runs in a thread the run waits for no longer than
the budget left.  A notification never fails a run: what happened is recorded (``last_notify.json``) and logged.
"""

from __future__ import annotations

import http.client  # noqa: F401 loaded before the run drops privileges; pylint: disable=unused-import
import json
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from .errors import SettingsError
from .layout import atomic_write, dump_json, read_json

STYLES = ("healthchecks", "webhook")
EVENTS = ("start", "success", "failure", "skipped")
DEFAULT_EVENTS = {"healthchecks": ["start", "success", "failure"], "webhook": ["success", "failure"]}
BUDGET = 10.0  # seconds a run spends on notifications at most, in total
TIMEOUT = 4.0  # seconds per attempt (less when less of the budget is left)
ATTEMPTS = 2  # one retry after a refused connection, a timeout or a 5xx answer
RETRY_PAUSE = 0.5
BODY_MAX = 10 * 1024  # bytes of a healthchecks body: the summary and the log's last lines
HEALTHCHECKS_PATH = {"start": "/start", "success": "", "failure": "/fail", "skipped": "/log"}
_KEYS = ("url", "style", "events", "ca_file")
_HOST_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?#@]*@)?([^/?#]*)")


def redact(url: str) -> str:
    """A target as status, the log and task output may show it: scheme and host only."""
    match = _HOST_RE.match(url) if isinstance(url, str) else None
    return match.group(1) + match.group(2) if match else "(not a URL)"


def notify_file(settings_dir: str, server: str) -> str:
    """Where a server's targets are kept; the '.' keeps it out of the servers listed by their settings files."""
    return os.path.join(settings_dir, server + ".notify.json")


def check_targets(value, name: str = "notify") -> list:
    """The targets as stored, or SettingsError naming the entry (and a URL by its scheme and host only)."""
    if value in (None, ""):
        return []
    if not isinstance(value, (list, tuple)):
        raise SettingsError("%s is not allowed as given; use a list of {url, style, events} targets." % name)
    out = []
    for index, entry in enumerate(value):
        where = "%s entry %d" % (name, index + 1)
        if not isinstance(entry, dict):
            raise SettingsError("%s is not allowed; each target is a mapping {url, style, events}." % where)
        unknown = sorted(set(entry) - set(_KEYS))
        if unknown:
            raise SettingsError("%s has the unknown key(s) %s; a target takes url, style, events and ca_file."
                                % (where, ", ".join(map(str, unknown))))
        out.append(_target(where, entry))
    return out


def _target(where: str, entry: dict) -> dict:
    url = entry.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if not parts or parts.scheme not in ("https", "http") or not parts.hostname or any(
            c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url) or parts.password is not None:
        raise SettingsError("%s url %s is not allowed; use an https:// (or http://) URL with a host, without "
                            "spaces, control characters or a password." % (where, redact(url)))
    style = entry.get("style") or "healthchecks"
    if style not in STYLES:
        raise SettingsError("%s style %r is not allowed; use healthchecks or webhook." % (where, style))
    events = entry.get("events")
    if events in (None, []):
        events = DEFAULT_EVENTS[style]
    if isinstance(events, str) or not isinstance(events, (list, tuple)) or any(e not in EVENTS for e in events):
        raise SettingsError("%s events %r is not allowed; use a list of start, success, failure and skipped."
                            % (where, events))
    ca_file = entry.get("ca_file") or ""
    if ca_file and (not isinstance(ca_file, str) or not ca_file.startswith("/") or
                    any(ord(c) < 32 for c in ca_file)):
        raise SettingsError("%s ca_file %r is not allowed; use an absolute path of a PEM file of CA certificates."
                            % (where, ca_file))
    return {"url": url, "style": style, "events": [e for e in EVENTS if e in events], "ca_file": ca_file}


def shown(targets: list) -> list:
    """The targets as they may be shown: the URL cut to scheme and host."""
    return [dict(t, url=redact(t["url"])) for t in targets]


def load(settings_dir: str, server: str) -> list:
    """The stored targets ([] when there is no file); ValueError or OSError when it cannot be used."""
    doc = read_json(notify_file(settings_dir, server))
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return check_targets(doc.get("targets"))


def document(targets: list) -> bytes:
    return dump_json({"format": 1, "targets": targets})


def save(settings_dir: str, server: str, targets: list, gid: int) -> None:
    atomic_write(notify_file(settings_dir, server), document(targets), mode=0o640, uid=0, gid=gid)


class Notifier:
    """Sends one run's events to its targets within one budget; ``outcomes`` lists what happened."""

    def __init__(self, targets: list, budget: float = BUDGET, timeout: float = TIMEOUT):
        self.targets = targets
        self.budget = budget
        self.timeout = timeout
        self.spent = 0.0
        self.outcomes: list = []

    def send(self, event: str, text: str, payload: dict) -> list:
        """Tell every target that wants ``event``; returns this event's outcomes (each also in ``outcomes``)."""
        done = []
        for target in self.targets:
            if event not in target["events"]:
                continue
            outcome = {"event": event, "target": redact(target["url"]), "style": target["style"]}
            outcome.update(self._deliver(target, event, text, payload))
            done.append(outcome)
        self.outcomes += done
        return done

    def _deliver(self, target: dict, event: str, text: str, payload: dict) -> dict:
        if target["style"] == "healthchecks":
            url = target["url"].rstrip("/") + HEALTHCHECKS_PATH[event]
            body = text.encode("utf-8", "replace")[-BODY_MAX:]
            headers = {"Content-Type": "text/plain; charset=utf-8"}
        else:
            url = target["url"]
            body = json.dumps(dict(payload, event=event), sort_keys=True).encode("utf-8")
            headers = {"Content-Type": "application/json"}
        error = "not sent: the run's %g s for notifications are spent" % self.budget
        attempts = 0
        while attempts < ATTEMPTS:
            left = self.budget - self.spent
            if left < 0.05:
                break
            attempts += 1
            t0 = time.monotonic()
            status, error, retry = _post(url, body, headers, min(self.timeout, left), target.get("ca_file"))
            self.spent += time.monotonic() - t0
            if status is not None and error is None:
                return {"outcome": "ok", "http_status": status, "attempts": attempts}
            if not retry or attempts >= ATTEMPTS or self.budget - self.spent < RETRY_PAUSE + 0.05:
                break
            time.sleep(RETRY_PAUSE)
            self.spent += RETRY_PAUSE
        return {"outcome": "failed", "error": error, "attempts": attempts}


def _post(url: str, body: bytes, headers: dict, timeout: float, ca_file: str | None) -> tuple:
    """(HTTP status or None, error or None, whether a retry may help); waits ``timeout`` seconds at most."""
    box: dict = {}

    def work():
        try:
            context = ssl.create_default_context(cafile=ca_file or None)
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
            with opener.open(request, timeout=timeout) as answer:  # nosec B310
                answer.read(65536)
                box["result"] = (answer.status, None, False)
        except urllib.error.HTTPError as exc:  # its text never holds the URL
            box["result"] = (exc.code, "HTTP %d" % exc.code, exc.code >= 500 or exc.code == 429)
        except urllib.error.URLError as exc:
            reason = exc.reason
            box["result"] = (None, _why(reason), not isinstance(reason, ssl.SSLError))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            box["result"] = (None, _why(exc), True)

    worker = threading.Thread(target=work, name="repobackup-notify", daemon=True)
    worker.start()
    worker.join(timeout)
    if "result" not in box:
        return None, "timed out after %.1f s" % timeout, True
    return box["result"]


def _why(exc) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate not trusted: %s" % (exc.verify_message or exc.reason)
    if isinstance(exc, (TimeoutError, ssl.SSLError)) and "timed out" in str(exc):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return "timed out" if "timed out" in text else text


def summary(result: dict, server: str, host: str, trigger: str) -> str:
    """One line for a run's result, the first line of a healthchecks body."""
    repos = result.get("repositories") or {}
    failed = [n for n, r in repos.items() if r.get("result") == "failed"]
    line = "repobackup %s: server %s on %s: %s" % (trigger, server, host, result.get("result"))
    if result.get("reason"):
        line += " (%s)" % result["reason"]
    if repos:
        line += ", %d ok, %d failed" % (len(repos) - len(failed), len(failed))
    if result.get("error"):
        line += ": %s" % result["error"]
    for name in failed:
        line += "\n%s: %s" % (name, repos[name].get("error"))
    return line


def log_tail(path: str, size: int = BODY_MAX // 2) -> str:
    """The last lines of the log (whole lines, about ``size`` bytes)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            data = handle.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[1:] if len(data) >= size else lines)


def read_last(path: str) -> dict | None:
    try:
        return read_json(path)
    except (ValueError, OSError):
        return None
