# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which servers of a host the inventory declares: the role's mark and its list.

The role applies each server with ``managed_by: role`` in its settings document, and writes the names the
inventory declares (state present or absent) to ``/etc/repobackup/role-declared.json``, one list per scope:
inventory host name and play (a machine an inventory names twice, or given one server per play, is declared
by each). A server marked by the role and missing from every list is *undeclared*: renamed or dropped.
Servers applied by direct module calls carry no mark and are never undeclared. The lists hold names only (no
secret), so the file is world-readable and any run-as user's status can flag its server.
"""

from __future__ import annotations

import json
import os

from .layout import Paths, atomic_write, read_json
from .settings import check_server_name
from .errors import SettingsError

DECLARED_FILE = "role-declared.json"  # a dash: never a server name, so servers_on_host() skips it
ROLE_MARK = "role"


def declared_path(paths: Paths) -> str:
    return os.path.join(paths.settings_dir, DECLARED_FILE)


def read_lists(paths: Paths) -> dict | None:
    """Scope -> the server names its last role run declared; None before any role run wrote one."""
    try:
        doc = read_json(declared_path(paths))
    except (OSError, ValueError):
        return None
    scopes = doc.get("scopes") if isinstance(doc, dict) else None
    if not isinstance(scopes, dict):
        return None
    return {str(scope): [n for n in names if isinstance(n, str)] for scope, names in scopes.items()
            if isinstance(names, list)}


def read_declared(paths: Paths) -> list | None:
    """Every name some scope declared here, or None before any role run wrote the file."""
    lists = read_lists(paths)
    return None if lists is None else sorted({name for names in lists.values() for name in names})


def declared_bytes(lists: dict) -> bytes:
    doc = {"scopes": {scope: sorted(set(names)) for scope, names in sorted(lists.items())}}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def with_list(paths: Paths, scope: str, names) -> dict:
    """The lists on file with ``scope``'s replaced by ``names``."""
    lists = dict(read_lists(paths) or {})
    lists[scope] = sorted(set(names))
    return lists


def write_declared(paths: Paths, lists: dict) -> None:
    atomic_write(declared_path(paths), declared_bytes(lists), mode=0o644, uid=0, gid=0)


def role_marked(server: str, paths: Paths) -> dict | None:
    """The settings document of ``server`` when the role applied it, else None (unreadable counts as unmarked)."""
    try:
        doc = read_json(paths.settings_file(check_server_name(server)))
    except (OSError, ValueError, SettingsError):
        return None
    return doc if isinstance(doc, dict) and doc.get("managed_by") == ROLE_MARK else None


def is_undeclared(server: str, paths: Paths) -> bool:
    """Marked by the role, and in no list of the role's runs."""
    names = read_declared(paths)
    return names is not None and server not in names and role_marked(server, paths) is not None
