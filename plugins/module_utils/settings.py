# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The settings of one repository server: model, validation, document.

``validate()`` turns loose input (module options, role variables, a stored
document) into a ``Settings`` or raises ``SettingsError`` with one sentence
that names the value and what is allowed.  Nothing here touches the host.

Every pattern is matched whole (``fullmatch``: ``$`` would let a final newline
through).  Names and paths used as given (server name, run_as, host_id, paths,
URLs, connection settings) refuse control characters; values that are
normalised (times, days, suspended_until, a host key) lose surrounding
whitespace, so what is stored is clean.  Repository names are the exception:
a database or file may really carry any character but NUL, so they are kept
verbatim and reach paths only through ``layout.encode_name``.
"""

from __future__ import annotations

import base64
import datetime
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import SettingsError

FORMAT = 1
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
KINDS = ("sqlite", "postgresql")
IN_USE = ("keep_connections", "disconnect")
DEFAULT_RUN_AS = {"sqlite": "root", "postgresql": "postgres"}
KIND_OPTIONS = {
    "sqlite": {"root": "/var/lib/reposerver/sqlite"},
    # libpq connection settings; empty means libpq's default.  Never a password.
    "postgresql": {"host": "", "port": 5432, "user": "", "service": ""},
}

# Patterns are used with fullmatch() only, and spell digits [0-9] (\d also matches other scripts' digits).
_SERVER_RE = re.compile(r"[a-z0-9_]{1,32}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_TIME_RE = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_WHOLE_RE = re.compile(r"-?[0-9]{1,18}")
# A host id names this host's folder at the destination: a host name or FQDN (or any such label).
_HOST_ID_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The ISO 8601 forms read alike by datetime.fromisoformat() on every Python from 3.9
# (3.11 also reads e.g. 20261224 and 2026-W52-4, 3.9 does not).
_MOMENT_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                        r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{3}|\.[0-9]{6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?")


def has_control(text: str) -> bool:
    """True when ``text`` holds a control character (C0, DEL or C1: newline, tab, NUL...)."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


@dataclass
class Settings:
    server: str = "main"
    kind: str = "sqlite"
    enabled: bool = True
    suspended_until: str | None = None
    repositories: Any = "all"  # "all" or a list of names
    exclude: list = field(default_factory=list)
    days: list = field(default_factory=lambda: list(DAYS))
    times: list = field(default_factory=lambda: ["01:00"])
    destination: str = ""
    in_use: str = "keep_connections"
    keep_last: int = 14
    run_as: str = "root"
    disconnect_wait: int = 30
    parallel: Any = "auto"  # 1..16 or "auto" (see workers())
    metrics_file: str | None = None
    options: dict = field(default_factory=dict)
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    require_mount: bool = False
    sftp: dict | None = None  # SFTP_OPTIONS when the destination is an sftp:// URL
    host_id: str = ""  # this host's folder at the destination; "" (older documents): resolved when the engine runs

    def to_document(self) -> dict:
        return {
            "format": FORMAT,
            "server": self.server,
            "kind": self.kind,
            "enabled": self.enabled,
            "suspended_until": self.suspended_until,
            "repositories": self.repositories,
            "exclude": list(self.exclude),
            "schedule": {"days": list(self.days), "times": list(self.times)},
            "destination": self.destination,
            "in_use": self.in_use,
            "keep_last": self.keep_last,
            "run_as": self.run_as,
            "disconnect_wait": self.disconnect_wait,
            "parallel": self.parallel,
            "metrics_file": self.metrics_file,
            "options": dict(sorted(self.options.items())),
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_monthly": self.keep_monthly,
            "require_mount": self.require_mount,
            "sftp": dict(sorted(self.sftp.items())) if self.sftp else None,
            "host_id": self.host_id,
        }

    def retention(self) -> dict:
        return {"keep_last": self.keep_last, "keep_daily": self.keep_daily,
                "keep_weekly": self.keep_weekly, "keep_monthly": self.keep_monthly}

    def destination_kind(self) -> str:
        return "sftp" if self.destination.startswith("sftp://") else "local"

    def workers(self) -> int:
        """Repositories exported at once: ``parallel``, or for "auto" half the host's cores, 1 to 4."""
        return auto_workers() if self.parallel == "auto" else self.parallel

    def suspended_until_datetime(self) -> datetime.datetime | None:
        return parse_local_datetime(self.suspended_until) if self.suspended_until else None


def from_document(doc: dict) -> Settings:
    """Read a stored settings document (any format this engine knows)."""
    if not isinstance(doc, dict):
        raise SettingsError("The settings document is not a JSON object.")
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise SettingsError(
            "The settings document has format %r; this engine reads format %d: re-run the role."
            % (fmt, FORMAT))
    raw = dict(doc)
    raw.pop("format", None)
    schedule = raw.pop("schedule", {}) or {}
    raw["days"] = schedule.get("days")
    raw["times"] = schedule.get("times")
    options = raw.pop("options", {}) or {}
    raw["server_name"] = raw.pop("server", None)
    for key, value in options.items():
        raw["%s_%s" % (raw.get("kind"), key)] = value
    for key, value in (raw.pop("sftp", None) or {}).items():
        raw["sftp_" + key] = value
    return validate(raw)


def validate(raw: dict) -> Settings:
    """Check every value of ``raw`` (module option names) and build Settings."""
    s = Settings()
    s.server = check_server_name(raw.get("server_name", "main"))
    kind = raw.get("kind") or "sqlite"
    if kind not in KINDS:
        raise SettingsError("kind %r is not supported; use one of: %s." % (kind, ", ".join(KINDS)))
    s.kind = kind
    s.enabled = _bool("enabled", raw.get("enabled", True))
    s.suspended_until = _suspended_until(raw.get("suspended_until"))
    s.repositories = _repositories(raw.get("repositories", "all"))
    s.exclude = _names("exclude", raw.get("exclude") or [])
    s.days = _days(raw.get("days"))
    s.times = _times(raw.get("times"))
    s.destination = validate_destination(raw.get("destination"))
    s.in_use = raw.get("in_use") or "keep_connections"
    if s.in_use not in IN_USE:
        raise SettingsError("in_use %r is not allowed; use keep_connections or disconnect." % (s.in_use,))
    s.keep_last = _int("keep_last", raw.get("keep_last", 14), 1, 100000)
    for period in ("daily", "weekly", "monthly"):
        value = raw.get("keep_" + period)
        setattr(s, "keep_" + period, 0 if value in (None, "") else _int("keep_" + period, value, 0, 100000))
    s.require_mount = _bool("require_mount", raw.get("require_mount", False))
    if s.destination.startswith("sftp://"):
        if s.require_mount:
            raise SettingsError("require_mount true is for a path destination; %r is an sftp:// URL, which has "
                                "no mount point: set require_mount false." % s.destination)
        s.sftp = _sftp_options(raw)
    s.run_as = _run_as(raw.get("run_as") or DEFAULT_RUN_AS[kind])
    s.disconnect_wait = _int("disconnect_wait", raw.get("disconnect_wait", 30), 1, 86400)
    s.parallel = _parallel(raw.get("parallel"))
    s.metrics_file = _metrics_file(raw.get("metrics_file"))
    s.options = _kind_options(kind, raw)
    s.host_id = check_host_id(raw.get("host_id"))
    return s


def check_server_name(value: Any) -> str:
    if not isinstance(value, str) or not _SERVER_RE.fullmatch(value):
        raise SettingsError(
            "server_name %r is not allowed; use 1 to 32 characters from a-z, 0-9 and _." % (value,))
    return value


def check_host_id(value: Any) -> str:
    """How this host is named in backup paths; "" when not given (the FQDN is taken where it runs)."""
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not _HOST_ID_RE.fullmatch(value):
        raise SettingsError(
            "host_id %r is not allowed; use 1 to 253 characters from A-Z, a-z, 0-9, '.', '-' and '_', starting and "
            "ending with a letter or digit, unique in the fleet (empty: this host's FQDN)." % (value,))
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingsError("%s %r is not allowed; use true or false." % (name, value))
    return value


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and _WHOLE_RE.fullmatch(value.strip()):
            value = int(value)
        else:
            raise SettingsError("%s %r is not allowed; use a whole number from %d to %d." % (name, value, low, high))
    if not low <= value <= high:
        raise SettingsError("%s %r is not allowed; use a whole number from %d to %d." % (name, value, low, high))
    return value


PARALLEL_MAX = 16


def auto_workers() -> int:
    """``parallel: auto``: half the host's cores, at least 1 and at most 4."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def _parallel(value: Any) -> Any:
    """1..16 or "auto"; missing (older settings documents) means "auto"."""
    if value in (None, "", "auto"):
        return "auto"
    if isinstance(value, str) and _WHOLE_RE.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PARALLEL_MAX:
        raise SettingsError("parallel %r is not allowed; use a whole number from 1 to %d or 'auto'."
                            % (value, PARALLEL_MAX))
    return value


def parse_local_datetime(value: str) -> datetime.datetime:
    """An ISO 8601 date or date-time in host local time, as a naive datetime."""
    text = value.strip()
    if not _MOMENT_RE.fullmatch(text):
        raise ValueError("not an ISO 8601 date or date-time: %r" % value)
    if _DATE_RE.fullmatch(text):
        text += "T00:00:00"
    text = text.replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone().replace(tzinfo=None)
    return moment


def _suspended_until(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, (datetime.date, datetime.datetime)):
        value = value.isoformat()
    if not isinstance(value, str):
        raise SettingsError(
            "suspended_until %r is not allowed; use an ISO 8601 date or date-time such as "
            "'2026-12-24' or '2026-12-24T08:00'." % (value,))
    try:
        return parse_local_datetime(value).isoformat(timespec="minutes")
    except ValueError:
        raise SettingsError(
            "suspended_until %r is not allowed; use an ISO 8601 date or date-time such as "
            "'2026-12-24' or '2026-12-24T08:00'." % (value,)) from None


def check_name(what: str, name: Any) -> str:
    """A repository name: any text but empty, '.', '..', or with '/' or NUL."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise SettingsError(
            "%s %r is not a repository name; names must be non-empty text without '/' or NUL "
            "and not '.' or '..'." % (what, name))
    return name


def _names(what: str, value: Any) -> list:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SettingsError("%s %r is not allowed; use a list of repository names." % (what, value))
    out = []
    for name in value:
        check_name("%s entry" % what, name)
        if name not in out:
            out.append(name)
    return out


def _repositories(value: Any) -> Any:
    if value == "all":
        return "all"
    if isinstance(value, str):
        raise SettingsError(
            "repositories %r is not allowed; use 'all' or a list of repository names." % (value,))
    return _names("repositories", value)


def _days(value: Any) -> list:
    if value is None:
        return list(DAYS)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise SettingsError("days %r is not allowed; use a non-empty list of mon, tue, wed, thu, fri, sat, sun." % (value,))
    wanted = set()
    for day in value:
        key = day.strip().lower() if isinstance(day, str) else None
        if key in _LONG_DAYS:
            key = key[:3]
        if key not in DAYS:
            raise SettingsError("days entry %r is not allowed; use mon, tue, wed, thu, fri, sat or sun." % (day,))
        wanted.add(key)
    return [d for d in DAYS if d in wanted]


_LONG_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _times(value: Any) -> list:
    if value is None:
        return ["01:00"]
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise SettingsError('times %r is not allowed; use a non-empty list of "HH:MM" strings.' % (value,))
    out = set()
    for item in value:
        if isinstance(item, bool) or isinstance(item, (int, float)):
            raise SettingsError(
                'times entry %r is a number, not a time of day; quote it as "HH:MM" (YAML reads an unquoted '
                '13:30 as the number 810).' % (item,))
        match = _TIME_RE.fullmatch(item.strip()) if isinstance(item, str) else None
        if not match:
            raise SettingsError('times entry %r is not allowed; use "HH:MM" from 00:00 to 23:59.' % (item,))
        out.add("%02d:%s" % (int(match.group(1)), match.group(2)))
    return sorted(out)


def validate_destination(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SettingsError("destination is required; use an absolute path or an sftp:// URL.")
    if value.startswith("sftp://"):
        return parse_sftp_url(value).url()
    if has_control(value) or not value.startswith("/"):
        raise SettingsError("destination %r is not allowed; use an absolute path (without control characters) or "
                            "an sftp:// URL." % (value,))
    return os.path.normpath(value)


@dataclass(frozen=True)
class SftpUrl:
    user: str
    host: str
    port: int
    path: str

    def url(self, path: str | None = None) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        port = "" if self.port == 22 else ":%d" % self.port
        return "sftp://%s@%s%s%s" % (self.user, host, port, self.path if path is None else path)

    def known_hosts_name(self) -> str:
        """How OpenSSH's known_hosts names this server: ``host`` on port 22, else ``[host]:port``."""
        return self.host if self.port == 22 else "[%s]:%d" % (self.host, self.port)


_SFTP_RE = re.compile(r"sftp://([^@/:\s\x00-\x1f\x7f]+)@(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?"
                      r"(/[^\s\x00-\x1f\x7f?#]*)")
_SFTP_FORM = "use sftp://user@host[:port]/absolute/path"


def parse_sftp_url(value: str) -> SftpUrl:
    """``sftp://user@host[:port]/path``: a user, no password, an absolute remote path."""
    match = _SFTP_RE.fullmatch(value)
    if not match:
        if re.match(r"sftp://[^@/]*:[^@/]*@", value):  # a prefix: any URL that carries a password
            raise SettingsError("destination %r carries a password; passwords are never stored: %s and "
                                "sftp_key_file for the key." % (re.sub(r":[^@/]*@", ":***@", value, count=1), _SFTP_FORM))
        raise SettingsError("destination %r is not a valid sftp:// URL; %s." % (value, _SFTP_FORM))
    user, host, port, path = match.groups()
    port_number = int(port) if port else 22
    if not 1 <= port_number <= 65535:
        raise SettingsError("destination %r has port %s; use a port from 1 to 65535." % (value, port))
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = path[1:]
    return SftpUrl(user, host.strip("[]"), port_number, path)


SFTP_OPTIONS = {"key_file": "", "known_hosts": "", "host_key": "", "verify_upload": False, "retries": 3,
                "timeout": 30}
_HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def _sftp_options(raw: dict) -> dict:
    """The options of an sftp:// destination: a key file (never a password) and a way to know the host key."""
    out = {}
    for key, default in SFTP_OPTIONS.items():
        value = raw.get("sftp_" + key)
        out[key] = default if value in (None, "") else value
    if not out["key_file"]:
        raise SettingsError("sftp_key_file is required with an sftp:// destination; give the absolute path of "
                            "the run-as user's private key (passwords are never stored).")
    for key in ("key_file", "known_hosts"):
        value = out[key]
        if value and (not isinstance(value, str) or not value.startswith("/") or has_control(value)):
            raise SettingsError("sftp_%s %r is not allowed; use an absolute path without control characters."
                                % (key, value))
        if value:
            out[key] = os.path.normpath(value)
    out["host_key"] = _host_key(out["host_key"])
    out["verify_upload"] = _bool("sftp_verify_upload", out["verify_upload"])
    out["retries"] = _int("sftp_retries", out["retries"], 0, 10)
    out["timeout"] = _int("sftp_timeout", out["timeout"], 1, 600)
    return out


def _host_key(value: Any) -> str:
    """A pinned host key: ``TYPE BASE64`` (a known_hosts line's key part; a comment is dropped)."""
    if value in (None, ""):
        return ""
    words = value.split() if isinstance(value, str) else []
    if words and words[0] not in _HOST_KEY_TYPES and len(words) >= 3:
        words = words[1:]  # a whole known_hosts line: drop the host name field
    allowed = "use the server's public host key as 'TYPE BASE64', e.g. the text of /etc/ssh/ssh_host_ed25519_key.pub"
    if len(words) < 2 or words[0] not in _HOST_KEY_TYPES:
        raise SettingsError("sftp_host_key %r is not allowed; %s (types: %s)." % (value, allowed, ", ".join(_HOST_KEY_TYPES)))
    try:
        blob = base64.b64decode(words[1], validate=True)
    except ValueError:
        blob = b""
    fields = _ssh_strings(blob)
    if not fields or fields[0] != words[0].encode("ascii") or len(fields) < 2:
        raise SettingsError("sftp_host_key %r is not allowed: its base64 part is not a %s key; %s."
                            % (value, words[0], allowed))
    return "%s %s" % (words[0], words[1])


def _ssh_strings(blob: bytes) -> list:
    """The length-prefixed strings of an SSH public key blob; [] unless they fill it exactly."""
    fields, index = [], 0
    while index < len(blob):
        length = int.from_bytes(blob[index:index + 4], "big")
        if index + 4 + length > len(blob) or len(blob) - index < 4:
            return []
        fields.append(blob[index + 4:index + 4 + length])
        index += 4 + length
    return fields


def _metrics_file(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or has_control(value) or not value.startswith("/") or not value.endswith(".prom"):
        raise SettingsError("metrics_file %r is not allowed; use an absolute path ending in .prom, without control "
                            "characters "
                            "(node_exporter's textfile collector reads only those)." % (value,))
    return os.path.normpath(value)


def _run_as(value: Any) -> str:
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise SettingsError("run_as %r is not a valid user name; use 1 to 32 characters from a-z, 0-9, '_', '.' and "
                            "'-', starting with a letter or '_'." % (value,))
    return value


def _kind_options(kind: str, raw: dict) -> dict:
    options = {}
    for key, default in KIND_OPTIONS.get(kind, {}).items():
        value = raw.get("%s_%s" % (kind, key))
        if value in (None, ""):
            value = default
        if key == "root":
            if not isinstance(value, str) or not value.startswith("/") or has_control(value):
                raise SettingsError("%s_root %r is not allowed; use an absolute path without control characters."
                                    % (kind, value))
            value = os.path.normpath(value)
        elif key == "port":
            value = _int("%s_port" % kind, value, 1, 65535)
        elif key in ("host", "user", "service"):
            value = _conn_text("%s_%s" % (kind, key), value)
        options[key] = value
    return options


def _conn_text(name: str, value: Any) -> str:
    """A libpq connection setting: plain text, no control characters (the default is empty)."""
    if not isinstance(value, str) or has_control(value):
        raise SettingsError("%s %r is not allowed; use text without control characters." % (name, value))
    return value
