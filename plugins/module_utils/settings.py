# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The settings of one repository server: the option table, validation, the document.

Each setting is declared once, as an ``Option`` in the table at the end of this file (a kind's own settings
through ``register_options``).  The table gives the autobackup_settings module its argument_spec, ``validate()`` its
defaults and checks, and the settings document its shape; the role's defaults, argument specs and key list
are tested against it (tests/unit/test_option_table.py).

``validate()`` turns loose input (module options, role variables, a stored document) into a ``Settings`` or
raises ``SettingsError`` with one sentence that names the value and what is allowed.  Nothing here touches
the host.

Every pattern is matched whole (``fullmatch``: ``$`` would let a final newline through).  Names and paths used
as given (server name, run_as, host_id, paths, URLs, connection settings) refuse control characters; values
that are normalised (times, days, suspended_until, a host key) lose surrounding whitespace, so what is stored
is clean.  Repository names are the exception: a database or file may really carry any character but NUL, so
they are kept verbatim and reach paths only through ``layout.encode_name``.
"""

from __future__ import annotations

import base64
import copy
import datetime
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .errors import SettingsError
from .layers import COMPRESSIONS, check_recipient
from .sftp_url import SftpUrl, parse_sftp_url  # noqa: F401  pylint: disable=unused-import

# Format 2 (0.2.0) adds host_id, the role's mark (managed_by) and drills; an engine that reads only format 1
# refuses it ("re-run the role") instead of ignoring settings it does not know.
FORMAT = 2
OLDEST_FORMAT = 1  # written by 0.1.0: still read, so an upgraded engine runs before the role rewrites it
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
IN_USE = ("keep_connections", "disconnect")
# Filled by register_options(), one entry per kind of repository server, in registration order.
KINDS: list = []
DEFAULT_RUN_AS: dict = {}

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


# -- the option table ------------------------------------------------------------------------------------

_ABSENT = object()
# As ``blank``: any false value (None, "", 0, [], ...) means the default.
FALSE = "false"
# Objects of the settings document whose keys are settings of their own; Settings keeps them as dicts.
_GROUPS = ("options", "sftp", "drill")


@dataclass(frozen=True)
class Option:
    """One setting, declared once.

    ``name`` is the autobackup_settings module option, the key of an ``autobackup_servers`` entry and, after
    ``autobackup_``, the role variable.  ``at`` is where the value lives in the settings document: a top-level
    key, ``schedule.<key>``, ``options.<key>`` (the options of one kind) or ``sftp.<key>``; "" means the
    top-level key ``name``, and None an option that is not stored (``state``: what the module does with the
    settings).  ``default`` is the value taken when the option is not given or is one of ``blank`` (``FALSE``: any
    false value); the module
    declares it unless it is None or "", and the role variable defaults to it ("" for None).  ``check(name,
    value, earlier)`` returns the value as stored or raises SettingsError; ``earlier`` holds the values
    checked before it, in table order.  ``type``, ``elements``, ``choices`` and ``no_log`` are Ansible's.
    """

    name: str
    type: str
    doc: str
    default: Any = None
    at: str | None = ""
    check: Callable | None = None
    choices: Any = ()  # or a function returning them (kind: the registered kinds)
    elements: str | None = None
    blank: Any = (None, "")
    kind: str | None = None
    no_log: bool | None = None
    suboptions: dict | None = None  # Ansible's ``options`` of a list of dicts (notify: its url is no_log)

    def __post_init__(self):
        if self.at == "":
            object.__setattr__(self, "at", self.name)

    @property
    def variable(self) -> str:
        return "autobackup_" + self.name

    @property
    def place(self) -> tuple:
        """(object, key) in the settings document: ("", "kind"), ("schedule", "days"), ("sftp", "retries")."""
        group, _dot, key = self.at.rpartition(".")
        return group, key

    @property
    def allowed(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    @property
    def role_default(self) -> Any:
        return "" if self.default is None else copy.deepcopy(self.default)

    def spec(self) -> dict:
        """This option's entry in the autobackup_settings module's argument_spec."""
        spec = {"type": self.type}
        if self.default not in (None, ""):
            spec["default"] = copy.deepcopy(self.default)
        if self.allowed:
            spec["choices"] = list(self.allowed)
        if self.elements:
            spec["elements"] = self.elements
        if self.no_log is not None:
            spec["no_log"] = self.no_log
        if self.suboptions:
            spec["options"] = copy.deepcopy(self.suboptions)
        return spec

    def given(self, raw: dict) -> Any:
        """The value ``raw`` gives this option, or the default when it gives none."""
        value = raw.get(self.name, _ABSENT)
        if value is _ABSENT or (not value if self.blank is FALSE else value in self.blank):
            return copy.deepcopy(self.default)
        return value

    def applies(self, earlier: dict) -> bool:
        """Whether the option counts, given the values checked before it: ``sftp_`` ones for sftp:// only."""
        if self.at is None:
            return False
        if self.at.startswith("sftp."):
            return earlier["destination"].startswith("sftp://")
        return self.kind is None or self.kind == earlier["kind"]


_KIND_OPTIONS: dict = {}


def register_options(kind: str, declared: list, run_as: str = "root", drill: list = ()) -> None:
    """Declare a kind of repository server, the OS user it runs as by default, and its own settings.

    Each option is given with its key in the document's ``options`` (``root``); it becomes the module option
    and ``autobackup_servers`` key ``<kind>_<key>`` and the role variable ``autobackup_<kind>_<key>``, and it
    counts only for that kind.  ``drill``: where the kind's restore drills restore to, given the same way
    (``host``); each becomes ``drill_<kind>_<key>``, stored in the document's ``drill`` as ``<kind>_<key>``
    (``Settings.drill_target``).
    """
    if kind not in KINDS:
        KINDS.append(kind)
    DEFAULT_RUN_AS[kind] = run_as
    _KIND_OPTIONS[kind] = [replace(option, name="%s_%s" % (kind, option.name), at="options." + option.name,
                                   kind=kind) for option in declared] + \
        [replace(option, name="drill_%s_%s" % (kind, option.name), at="drill.%s_%s" % (kind, option.name),
                 kind=kind) for option in drill]


def options(kind: str | None = None) -> list:
    """The table in order: the general options, then those of ``kind`` (None: of every kind)."""
    kinds = KINDS if kind is None else [kind]
    return OPTIONS + [option for name in kinds for option in _KIND_OPTIONS.get(name, [])]


def argument_spec() -> dict:
    """The autobackup_settings module's options, one per entry of the table."""
    return {option.name: option.spec() for option in options()}


def setting_keys() -> list:
    """The module options that are settings (stored in the document): all but ``state``."""
    return [option.name for option in options() if option.at]


# -- the settings -------------------------------------------------------------------------------------------

@dataclass
class Settings:
    """One server's checked settings, as validate() builds them (the defaults live in the option table)."""

    server: str
    kind: str
    enabled: bool
    suspended_until: str | None
    repositories: Any  # "all" or a list of names
    exclude: list
    days: list
    times: list
    destination: str
    in_use: str
    keep_last: int
    run_as: str
    disconnect_wait: int
    parallel: Any  # 1..16 or "auto" (see workers())
    metrics_file: str | None
    options: dict  # the kind's options, by their key in the document
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    require_mount: bool
    sftp: dict | None  # the sftp_ options, by their key in the document, when the destination is an sftp:// URL
    host_id: str  # this host's folder at the destination; "" (older documents): resolved when the engine runs
    drill: dict  # restore drills: days, times, max_age_days, and the kind's drill target (<kind>_<key>)
    splay_minutes: int = 0  # schedule.py: a stable offset per host id and server added to every scheduled time
    max_age_hours: int = 0  # a covered repository's newest good backup older than this is stale; 0: from the schedule
    lock_wait: int = 0  # seconds a run waits for a running one before it skips
    encrypt_to: list = field(default_factory=list)  # age recipients of new backups (layers.py)
    compression: str = "none"  # zstd: data files not compressed already are (layers.py)

    def to_document(self) -> dict:
        doc = {"format": FORMAT, "options": dict(sorted(self.options.items())),
               "sftp": dict(sorted(self.sftp.items())) if self.sftp else None,
               "drill": copy.deepcopy(dict(sorted(self.drill.items())))}
        for option in OPTIONS:  # the general ones: the kind's, sftp and drill options are in their groups
            group, key = option.place if option.at else (None, None)
            if key and group not in _GROUPS:
                (doc.setdefault(group, {}) if group else doc)[key] = copy.deepcopy(getattr(self, key))
        return doc

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

    def drill_target(self) -> dict | None:
        """Where drills restore: None for the server itself, else the kind's drill settings by key (``host``,
        ``port``, ...), each left unset taken from the server's own option of that key."""
        prefix = self.kind + "_"
        given = {key[len(prefix):]: value for key, value in self.drill.items() if key.startswith(prefix)}
        if not any(given.values()):
            return None
        return {key: value if value else self.options.get(key, value) for key, value in sorted(given.items())}


def from_document(doc: dict) -> Settings:
    """Read a stored settings document (any format this engine knows): each option from its place in it."""
    if not isinstance(doc, dict):
        raise SettingsError("The settings document is not a JSON object.")
    fmt = doc.get("format")
    if fmt not in range(OLDEST_FORMAT, FORMAT + 1) or isinstance(fmt, bool):
        raise SettingsError(
            "The settings document has format %r; this engine reads formats %d to %d: re-run the role."
            % (fmt, OLDEST_FORMAT, FORMAT))
    for group in ("schedule",) + _GROUPS:
        if doc.get(group) and not isinstance(doc[group], dict):
            raise SettingsError("The settings document's %s is %r, not a JSON object." % (group, doc[group]))
    kind = doc.get("kind")
    raw = {}
    for option in options(kind if isinstance(kind, str) else ""):
        group, key = option.place if option.at else (None, None)
        where = doc.get(group) if group else doc
        if key and isinstance(where, dict) and key in where:
            raw[option.name] = where[key]
    raw.setdefault("server_name", None)  # a document names its server: without one it is refused, not "main"
    return validate(raw)


def validate(raw: dict) -> Settings:
    """Check every value of ``raw`` (module option names) and build Settings.

    The options are checked in table order; a kind's options count only for that kind and the ``sftp_``
    options only for an sftp:// destination (otherwise they are ignored and ``sftp`` is None).
    """
    checked = {}
    for option in options():
        if option.applies(checked):
            checked[option.name] = option.check(option.name, option.given(raw), checked)
    fields = {"options": {}, "sftp": {} if checked["destination"].startswith("sftp://") else None, "drill": {}}
    for option in options(checked["kind"]):
        if option.name in checked:
            group, key = option.place
            if group in _GROUPS:
                fields[group][key] = checked[option.name]
            else:
                fields[key] = checked[option.name]
    if fields["run_as"] is None:  # the kind names its default from its own options, checked by now
        fields["run_as"] = _run_as(DEFAULT_RUN_AS[checked["kind"]](dict(fields["options"])))
    return Settings(**fields)


# -- checks of single values ---------------------------------------------------------------------------------

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
    """A repository name: any text without NUL whose '/'-separated parts (a git server's team/app.git) are
    none of empty, '.' or '..'."""
    if not isinstance(name, str) or "\0" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise SettingsError(
            "%s %r is not a repository name; names must be non-empty text without NUL, not '.' or '..', and "
            "a '/' only between such parts (as in team/app.git)." % (what, name))
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


def _days(value: Any, name: str = "days") -> list:
    if value is None:
        return list(DAYS)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise SettingsError("%s %r is not allowed; use a non-empty list of mon, tue, wed, thu, fri, sat, sun."
                            % (name, value))
    wanted = set()
    for day in value:
        key = day.strip().lower() if isinstance(day, str) else None
        if key in _LONG_DAYS:
            key = key[:3]
        if key not in DAYS:
            raise SettingsError("%s entry %r is not allowed; use mon, tue, wed, thu, fri, sat or sun." % (name, day))
        wanted.add(key)
    return [d for d in DAYS if d in wanted]


_LONG_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _times(value: Any, name: str = "times", empty: bool = False) -> list:
    """Times of day as sorted "HH:MM"; ``empty``: an empty list is allowed (no scheduled drills)."""
    if value is None:
        return [] if empty else ["01:00"]
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not (value or empty):
        raise SettingsError('%s %r is not allowed; use a %slist of "HH:MM" strings.'
                            % (name, value, "" if empty else "non-empty "))
    out = set()
    for item in value:
        if isinstance(item, bool) or isinstance(item, (int, float)):
            raise SettingsError(
                '%s entry %r is a number, not a time of day; quote it as "HH:MM" (YAML reads an unquoted '
                '13:30 as the number 810).' % (name, item))
        match = _TIME_RE.fullmatch(item.strip()) if isinstance(item, str) else None
        if not match:
            raise SettingsError('%s entry %r is not allowed; use "HH:MM" from 00:00 to 23:59.' % (name, item))
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


_HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


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


# -- what the table calls: check(name, value, earlier) -----------------------------------------------------

def _plain(check: Callable) -> Callable:
    """A check of the value alone (its messages name the option themselves)."""
    return lambda name, value, earlier: check(value)


def _whole(low: int, high: int) -> Callable:
    return lambda name, value, earlier: _int(name, value, low, high)


def _bool_check(name: str, value: Any, earlier: dict) -> bool:
    return _bool(name, value)


def _exclude(name: str, value: Any, earlier: dict) -> list:
    return _names(name, value)


def _kind(name: str, value: Any, earlier: dict) -> str:
    if value not in KINDS:
        raise SettingsError("kind %r is not supported; use one of: %s." % (value, ", ".join(KINDS)))
    return value


def _in_use(name: str, value: Any, earlier: dict) -> str:
    if value not in IN_USE:
        raise SettingsError("in_use %r is not allowed; use %s." % (value, " or ".join(IN_USE)))
    return value


def _encrypt_to(name: str, value: Any, earlier: dict) -> list:
    if not isinstance(value, (list, tuple)):
        raise SettingsError("%s %r is not allowed; use a list of age public keys (age1...) or SSH public keys."
                            % (name, value))
    found = []
    for entry in value:
        recipient = check_recipient(entry)
        if recipient not in found:
            found.append(recipient)
    if len(found) > 32:
        raise SettingsError("%s lists %d recipients; at most 32 are allowed." % (name, len(found)))
    return found


def _compression(name: str, value: Any, earlier: dict) -> str:
    if value not in COMPRESSIONS:
        raise SettingsError("%s %r is not allowed; use %s." % (name, value, " or ".join(COMPRESSIONS)))
    return value


def _require_mount(name: str, value: Any, earlier: dict) -> bool:
    value = _bool(name, value)
    if value and earlier["destination"].startswith("sftp://"):
        raise SettingsError("require_mount true is for a path destination; %r is an sftp:// URL, which has "
                            "no mount point: set require_mount false." % earlier["destination"])
    return value


def _run_as_check(name: str, value: Any, earlier: dict) -> Any:
    default = DEFAULT_RUN_AS[earlier["kind"]]
    if value is None and callable(default):
        return None  # a default that depends on the kind's options (git: the root's owner): see validate()
    return _run_as(default if value is None else value)


def _path(name: str, value: Any, earlier: dict) -> str:
    """An absolute path used as given ("" stays "": not set)."""
    if value == "":
        return ""
    if not isinstance(value, str) or not value.startswith("/") or has_control(value):
        raise SettingsError("%s %r is not allowed; use an absolute path without control characters." % (name, value))
    return os.path.normpath(value)


def _key_file(name: str, value: Any, earlier: dict) -> str:
    if not value:
        raise SettingsError("sftp_key_file is required with an sftp:// destination; give the absolute path of "
                            "the run-as user's private key (passwords are never stored).")
    return _path(name, value, earlier)


def _conn_text(name: str, value: Any, earlier: dict) -> str:
    """A libpq connection setting: plain text, no control characters (the default is empty)."""
    if not isinstance(value, str) or has_control(value):
        raise SettingsError("%s %r is not allowed; use text without control characters." % (name, value))
    return value


# -- the table ----------------------------------------------------------------------------------------------

# The general options, in the order validate() checks them (so the first bad value named does not depend on
# the door); the options of each kind follow, in register_options() order.
OPTIONS = [
    Option("server_name", "str", "Name of the repository server on the host.", default="main", at="server",
           check=_plain(check_server_name), blank=()),
    Option("state", "str", "present applies the settings; absent removes settings and cron file, keeps backups.",
           default="present", at=None, choices=("present", "absent")),
    Option("kind", "str", "Kind of repository server.", default="sqlite", check=_kind, choices=lambda: KINDS,
           blank=FALSE),
    Option("enabled", "bool", "Auto-backup on or off; off keeps the schedule.", default=True, check=_bool_check,
           blank=()),
    Option("suspended_until", "str", "ISO 8601 date or date-time, host local time: runs are skipped until then.",
           check=_plain(_suspended_until)),
    Option("repositories", "raw", "all, or a list of repository names.", default="all",
           check=_plain(_repositories), blank=()),
    Option("exclude", "list", "Names left out when repositories is all.", default=[], elements="str",
           check=_exclude, blank=FALSE),
    Option("days", "list", "Days of the week the schedule runs on.", default=list(DAYS), at="schedule.days",
           elements="str", check=_plain(_days), blank=(None,)),
    Option("times", "list", 'Times of day, "HH:MM", host local time.', default=["01:00"], at="schedule.times",
           elements="raw", check=_plain(_times), blank=(None,)),
    Option("splay_minutes", "int", "A stable offset per host id and server, 0 to N-1 minutes, added to every "
           "scheduled time; 0: none.", default=0, check=_whole(0, 720)),
    Option("destination", "str", "Where backups go: an absolute path or an sftp:// URL.",
           check=_plain(validate_destination)),
    Option("in_use", "str", "What a run does with a repository in use.", default="keep_connections",
           check=_in_use, choices=IN_USE, blank=FALSE),
    Option("keep_last", "int", "The newest backups kept per repository, at least 1.", default=14,
           check=_whole(1, 100000), blank=()),
    Option("keep_daily", "int", "Also keep the newest backup of each of the N most recent days.", default=0,
           check=_whole(0, 100000)),
    Option("keep_weekly", "int", "Also keep the newest backup of each of the N most recent ISO weeks.", default=0,
           check=_whole(0, 100000)),
    Option("keep_monthly", "int", "Also keep the newest backup of each of the N most recent months.", default=0,
           check=_whole(0, 100000)),
    Option("require_mount", "bool", "Runs refuse to write unless the destination is a mount point.", default=False,
           check=_require_mount, blank=()),
    # str, not path: a "~" must be refused (it would expand to the module's user, not run_as).
    Option("sftp_key_file", "str", "sftp:// only, required there: the run-as user's private key.", default="",
           at="sftp.key_file", check=_key_file, no_log=False),
    Option("sftp_known_hosts", "str", "sftp:// only: a known_hosts file with the server's host key.", default="",
           at="sftp.known_hosts", check=_path),
    Option("sftp_host_key", "str", "sftp:// only: the server's host key, pinned as TYPE BASE64.", default="",
           at="sftp.host_key", check=_plain(_host_key), no_log=False),
    Option("sftp_verify_upload", "bool", "sftp:// only: read every upload back and compare its sha256.",
           default=False, at="sftp.verify_upload", check=_bool_check),
    Option("sftp_retries", "int", "sftp:// only: reconnects after a dropped connection.", default=3,
           at="sftp.retries", check=_whole(0, 10)),
    Option("sftp_timeout", "int", "sftp:// only: seconds to wait for the server to answer.", default=30,
           at="sftp.timeout", check=_whole(1, 600)),
    Option("run_as", "str", "OS user the scheduled job runs as; unset: per kind.", check=_run_as_check,
           blank=FALSE),
    Option("disconnect_wait", "int", "Seconds the disconnect action waits to hold clients off.", default=30,
           check=_whole(1, 86400), blank=()),
    Option("lock_wait", "int", "Seconds a run waits for a running one before it skips; 0: skips at once.",
           default=0, check=_whole(0, 86400)),
    Option("max_age_hours", "int", "Hours after which a covered repository's newest good backup is stale; 0: the "
           "schedule's longest gap plus a margin.", default=0, check=_whole(0, 87600)),
    Option("parallel", "raw", "Repositories exported at the same time, 1 to 16, or auto.", default="auto",
           check=_plain(_parallel)),
    Option("metrics_file", "path", "Prometheus textfile rewritten after every run.",
           check=_plain(_metrics_file)),
    Option("host_id", "str", "How this host is named in backup paths; unset: its FQDN.", default="",
           check=_plain(check_host_id)),
    # Not in the settings document (its URLs are secrets): autobackup_settings keeps it in notify.py's file.
    Option("notify", "list", "Notification targets {url, style, events, ca_file}; URLs are secrets.", default=[],
           at=None, elements="dict", suboptions={
               "url": {"type": "str", "required": True, "no_log": True}, "style": {"type": "str"},
               "events": {"type": "list", "elements": "str"}, "ca_file": {"type": "str"}}),
    Option("encrypt_to", "list", "age recipients (age1...) or SSH public keys (ssh-ed25519, ssh-rsa) new backups are "
           "encrypted to; empty: not encrypted.", default=[], elements="str", check=_encrypt_to, blank=FALSE),
    Option("compression", "str", "zstd or none, for data files not compressed already (SQLite files, PostgreSQL "
           "globals).", default="none", check=_compression, choices=COMPRESSIONS, blank=(None, "")),
    Option("drill_days", "list", "Days of the week scheduled restore drills run on.", default=list(DAYS),
           at="drill.days", elements="str", check=lambda name, value, earlier: _days(value, name), blank=(None,)),
    Option("drill_times", "list", 'Times of day of scheduled restore drills, "HH:MM"; empty: none.', default=[],
           at="drill.times", elements="raw", check=lambda name, value, earlier: _times(value, name, empty=True)),
    Option("drill_identity_file", "str", "The private key scheduled drills of encrypted backups use: a path on the "
           "host, readable by the run-as user only; empty: none kept.", default="", at="drill.identity_file",
           check=_path, no_log=False),
    Option("drill_max_age_days", "int", "Days after which a repository not proven restorable since is flagged.",
           default=8, at="drill.max_age_days", check=_whole(1, 3650), blank=()),
]

# Public names for the checks kinds use when they declare their own options (kinds.py).
check_path = _path
check_connection_text = _conn_text
check_whole = _whole

# Every kind registers itself, and its options, here (kinds.py): the one import that fills KINDS.
from . import kinds  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position,cyclic-import
