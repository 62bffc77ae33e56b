# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which servers of a host the inventory declares: the role's mark and its list.

The role applies each server with ``managed_by: role`` in its settings document, and writes the names the
inventory declares (state present or absent) to ``/etc/repobackup/role-declared.json``. A server marked by
the role and missing from that list is *undeclared*: renamed or dropped in inventory. Servers applied by
direct module calls carry no mark and are never undeclared. The list holds names only (no secret), so it is
world-readable and any run-as user's status can flag its server.
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


def read_declared(paths: Paths) -> list | None:
    """The names the last role run declared, or None before any role run wrote the list (or when unreadable)."""
    try:
        doc = read_json(declared_path(paths))
    except (OSError, ValueError):
        return None
    names = doc.get("servers") if isinstance(doc, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else None


def declared_bytes(names) -> bytes:
    return (json.dumps({"servers": sorted(set(names))}, indent=2) + "\n").encode("utf-8")


def write_declared(paths: Paths, names) -> None:
    atomic_write(declared_path(paths), declared_bytes(names), mode=0o644, uid=0, gid=0)


def role_marked(server: str, paths: Paths) -> dict | None:
    """The settings document of ``server`` when the role applied it, else None (unreadable counts as unmarked)."""
    try:
        doc = read_json(paths.settings_file(check_server_name(server)))
    except (OSError, ValueError, SettingsError):
        return None
    return doc if isinstance(doc, dict) and doc.get("managed_by") == ROLE_MARK else None


def is_undeclared(server: str, paths: Paths) -> bool:
    """Marked by the role, and not in the list of its last run."""
    names = read_declared(paths)
    return names is not None and server not in names and role_marked(server, paths) is not None
