# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one parser of ``sftp://user@host[:port]/path`` destinations (settings and the SFTP destination use it)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from .errors import SettingsError


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


def url_passwords(value) -> set:
    """The passwords written into ``sftp://user:password@...`` strings anywhere in ``value`` (dicts, lists).

    Such a URL is refused, but ansible-core up to 2.20 (and later ones with INJECT_INVOCATION on) returns
    every argument of a module in its result: a module adds these to its no_log values first, so the
    password never comes back in a result or a log.
    """
    if isinstance(value, str):
        match = re.match(r"sftp://[^@/:]*:([^@/]+)@", value)
        return {match.group(1)} if match else set()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return set().union(*(url_passwords(item) for item in value))
    return set()


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
