#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: autobackup_undeclared
short_description: Find, and optionally remove, servers the inventory no longer declares (internal to the autobackup role)
version_added: "0.2.0"
description:
  - Records the server names the inventory declares on this host in C(/etc/repobackup/role-declared.json), so that
    M(reposerver.backup.autobackup_info) can flag the others.
  - A server is undeclared when the role applied it (its settings document has C(managed_by=role)) and O(declared)
    does not name it, for instance after a rename or after an entry was dropped from C(autobackup_servers).
    Servers set up by direct calls of M(reposerver.backup.autobackup_settings) are never undeclared.
  - Every undeclared server is named in a warning. With O(purge), its settings and cron file are removed as
    C(state=absent) would; its backups, state folder and log stay, and the result says where the backups are.
  - A server whose run holds its lock is removed only once that run ends; the module waits up to O(lock_wait)
    seconds, then leaves it in place with a warning (the next apply removes it).
  - Used by the role R(reposerver.backup.autobackup, ansible_collections.reposerver.backup.autobackup_role) (variable C(autobackup_purge_undeclared)).
author:
  - reposerver.backup maintainers (@reposerver)
options:
  declared:
    description: Server names the inventory declares on this host, with state present or absent.
    type: list
    elements: str
    required: true
  scope:
    description:
      - Who declares O(declared) (the role passes its inventory host name and play name). The file keeps one list
        per scope and a server is undeclared only when no list names it, so a machine an inventory reaches under
        two names, or a host given one server per play, is declared by all of them. A play or inventory host that
        is renamed leaves its old list in the file, which keeps its servers declared; remove that entry to forget it.
    type: str
    default: default
  purge:
    description: Remove the settings and cron file of each undeclared server.
    type: bool
    default: false
  lock_wait:
    description: Seconds to wait, per server, for a run in progress to end before removing it.
    type: int
    default: 600
attributes:
  check_mode:
    description: Reports what would be recorded and removed, and changes nothing.
    support: full
  diff_mode:
    description: Shows the list of declared servers, and each file that would go, before and after.
    support: full
"""

EXAMPLES = r"""
- name: Name the servers the inventory dropped, and remove them
  reposerver.backup.autobackup_undeclared:
    declared: [nightly]
    purge: true
"""

RETURN = r"""
undeclared:
  description:
    - Each undeclared server - C(server), C(kind), C(backups) (where its backups stay), C(files) (its settings and
      cron file), C(removed) (true once removed, or in check mode when it would be) and C(busy) (a run held its
      lock for all of O(lock_wait)).
  returned: always
  type: list
  elements: dict
declared_file:
  description: Path of the recorded list.
  returned: always
  type: str
  sample: /etc/repobackup/role-declared.json
"""

import fcntl
import os
import time

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.declared import declared_bytes, declared_path, role_marked, with_list, write_declared
from ..module_utils.engine import servers_on_host
from ..module_utils.errors import RepoBackupError
from ..module_utils.layout import Paths, encode_name, host_name, makedirs
from ..module_utils.privilege import open_nofollow
from ..module_utils.settings import check_server_name


def read_bytes(path: str):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def backups_of(doc: dict, server: str) -> str:
    """Where the server's backups are: <destination>/<host id>/<server>."""
    destination = str(doc.get("destination") or "?")
    host = doc.get("host_id") or host_name()
    return "%s/%s/%s" % (destination.rstrip("/"), encode_name(host), server)


def wait_for_lock(paths: Paths, server: str, seconds: int):
    """A descriptor holding the server's lock, None when no run ever made one, or False after ``seconds``.

    Opened read-only without following a link (the state folder belongs to the run-as user): flock needs no
    write access, and root never creates a file there.
    """
    try:
        fd = open_nofollow(os.path.join(paths.state_dir(server), "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return None
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(0.5)


def main() -> None:
    module = AnsibleModule(argument_spec=dict(declared=dict(type="list", elements="str", required=True),
                                              scope=dict(type="str", default="default"),
                                              purge=dict(type="bool", default=False),
                                              lock_wait=dict(type="int", default=600)),
                           supports_check_mode=True)
    paths = Paths()
    try:
        declared = sorted({check_server_name(name) for name in module.params["declared"]})
    except RepoBackupError as exc:
        module.fail_json(msg="declared: %s" % exc)
    if module.params["lock_wait"] < 0:
        module.fail_json(msg="lock_wait %d is not allowed; use 0 or more seconds." % module.params["lock_wait"])
    if not module.check_mode:
        makedirs(paths.settings_dir, 0o755)
    try:  # one role run at a time reads and rewrites the lists (one play may reach a machine under two names)
        folder = os.open(paths.settings_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        folder = None  # check mode on a host without settings: nothing to lock, nothing is written
    if folder is not None:
        fcntl.flock(folder, fcntl.LOCK_EX)
    try:
        result = examine(module, paths, declared)
    finally:
        if folder is not None:
            os.close(folder)
    module.exit_json(**result)


def examine(module: AnsibleModule, paths: Paths, declared: list) -> dict:
    """Record the declared names, name the undeclared servers, purge them when asked: the module's result."""
    list_path = declared_path(paths)
    lists = with_list(paths, module.params["scope"], declared)
    everywhere = {name for names in lists.values() for name in names}
    wanted, current = declared_bytes(lists), read_bytes(list_path)
    diffs = []
    if wanted != current:
        diffs.append({"before_header": list_path, "after_header": list_path,
                      "before": (current or b"").decode("utf-8", "replace"), "after": wanted.decode("utf-8")})
    found = []
    for server in servers_on_host(paths):
        doc = role_marked(server, paths)
        if server in everywhere or doc is None:
            continue
        files = [paths.settings_file(server), paths.cron_file(server)]
        found.append({"server": server, "kind": doc.get("kind"), "backups": backups_of(doc, server),
                      "files": files, "removed": False, "busy": False})
    for entry in found:
        verb = "removing" if module.params["purge"] else "set autobackup_purge_undeclared: true to remove"
        module.warn("Server %s was applied by the role but the inventory no longer declares it; %s its settings "
                    "and cron file (its backups stay in %s)." % (entry["server"], verb, entry["backups"]))
    if module.params["purge"]:
        for entry in found:
            present = [(path, read_bytes(path)) for path in entry["files"]]
            diffs.extend({"before_header": path, "after_header": path, "before": data.decode("utf-8", "replace"),
                          "after": ""} for path, data in present if data is not None)
            if module.check_mode:
                entry["removed"] = True
                continue
            held = wait_for_lock(paths, entry["server"], module.params["lock_wait"])
            if held is False:
                entry["busy"] = True
                module.warn("Server %s is still backing up after %d seconds; it stays until the next apply."
                            % (entry["server"], module.params["lock_wait"]))
                continue
            try:
                for path, data in present:
                    if data is not None:
                        os.unlink(path)
                entry["removed"] = True
            finally:
                if held is not None:
                    os.close(held)
    changed = wanted != current or any(e["removed"] for e in found)
    if wanted != current and not module.check_mode:
        write_declared(paths, lists)
    result = dict(changed=changed, undeclared=found, declared_file=list_path)
    if module._diff:
        result["diff"] = diffs
    return result


if __name__ == "__main__":
    main()
