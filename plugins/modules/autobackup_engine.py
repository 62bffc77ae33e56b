#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: autobackup_engine
short_description: Install the repobackup engine and its host command (internal to the autobackup role)
version_added: "0.1.0"
description:
  - Writes the engine that this module carries, the same code the other modules of the collection
    run, into C(/usr/local/lib/repobackup/<version>/repobackup/) and the launcher
    C(/usr/local/sbin/repobackup), which runs it with the system C(/usr/bin/python3) in isolated mode.
  - Only files whose content or mode differ are written, so a second run reports no change.
  - Folders of other engine versions under C(/usr/local/lib/repobackup/) are removed once no running
    C(repobackup) command uses them, so an upgrade leaves one engine on the host.
  - Used by the role R(reposerver.backup.autobackup, ansible_collections.reposerver.backup.autobackup_role); there is nothing to configure.
author:
  - reposerver.backup maintainers (@reposerver)
options: {}
attributes:
  check_mode:
    description: Lists the files that would be written and writes none.
    support: full
  diff_mode:
    description: No diff is shown; the files are code.
    support: none
"""

EXAMPLES = r"""
- name: Install the repobackup engine and host command
  reposerver.backup.autobackup_engine:
"""

RETURN = r"""
version:
  description: Engine version installed.
  returned: always
  type: str
  sample: 0.2.0
engine_path:
  description: Folder of this engine version.
  returned: always
  type: str
  sample: /usr/local/lib/repobackup/0.2.0
launcher:
  description: Path of the host command.
  returned: always
  type: str
  sample: /usr/local/sbin/repobackup
missing_commands:
  description:
    - Commands the schedule needs that the host lacks (C(cron) or C(crond), C(logrotate)),
      so that the role installs packages only when something is missing.
  returned: always
  type: list
  elements: str
  sample: [logrotate]
files:
  description: Files written (or that would be written in check mode).
  returned: always
  type: list
  elements: str
removed:
  description:
    - Folders of other engine versions removed (or that would be in check mode), so an upgrade leaves one engine.
    - An engine is removed only when no C(repobackup) command started from it still runs; the launcher holds a
      shared lock on its engine's C(in-use) file while it runs.
  returned: always
  type: list
  elements: str
kept:
  description: Folders of other engine versions left in place because a command still uses them (a warning says so).
  returned: always
  type: list
  elements: str
"""

import fcntl
import os
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

from ..module_utils import (cli, clock, declared, destination, engine, errors, facts, git_backup, kind_git, kind_postgresql,
                            kind_sqlite, kinds, layers, layout, metrics, notify, pg_database, privilege, report, results, retention,
                            schedule, settings, sftp, sftp_url, state, status, store)
from ..module_utils.layout import VERSION, Paths, atomic_write, makedirs

ENGINE_MODULES = (cli, clock, declared, destination, engine, errors, facts, git_backup, kind_git, kind_postgresql, kind_sqlite,
                  kinds, layers, layout, metrics, notify, pg_database, privilege, report, results, retention, schedule,
                  settings, sftp, sftp_url, state, status, store)

PYTHON = "/usr/bin/python3"
IN_USE = "in-use"
# The launcher holds a shared lock on its engine's in-use file for as long as the command runs (the
# descriptor is inherited by nothing it starts), so an upgrade removes only engines no command uses.
LAUNCHER = """#!{python} -I
# Managed by reposerver.backup: the host command of the repobackup engine {version}.
import fcntl, os, sys
sys.dont_write_bytecode = True
try:
    _in_use = os.open({in_use!r}, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    fcntl.flock(_in_use, fcntl.LOCK_SH)
    os.stat({in_use!r})
except OSError:
    raise SystemExit("repobackup: engine {version} is not installed (an upgrade removed it): run the command again.")
sys.path.insert(0, {path!r})
from repobackup.cli import main
raise SystemExit(main())
"""


def wanted_files(paths: Paths) -> dict:
    """Path -> (bytes, mode) of every file of this engine version."""
    root = os.path.join(paths.engine_root, VERSION)
    files = {os.path.join(root, "repobackup", "__init__.py"):
             (b'"""repobackup engine %s (installed by reposerver.backup)."""\n' % VERSION.encode(), 0o644)}
    for mod in ENGINE_MODULES:
        name = mod.__name__.rsplit(".", 1)[-1]
        source = mod.__loader__.get_source(mod.__name__)
        files[os.path.join(root, "repobackup", name + ".py")] = (source.encode("utf-8"), 0o644)
    files[os.path.join(root, IN_USE)] = (b"", 0o644)
    launcher = LAUNCHER.format(python=PYTHON, version=VERSION, path=root, in_use=os.path.join(root, IN_USE))
    files[paths.launcher] = (launcher.encode("utf-8"), 0o755)
    return files


def differs(path: str, data: bytes, mode: int) -> bool:
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            return handle.read() != data or (st.st_mode & 0o7777) != mode or st.st_uid != 0
    except FileNotFoundError:
        return True


def launcher_processes(launcher: str) -> list:
    """Pids of processes running the host command (any version): engines before 0.2.0 hold no in-use lock."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if launcher.encode() in argv:
            pids.append(int(entry))
    return pids


def old_engines(paths: Paths) -> dict:
    """Engine folders other than this version's -> "remove" or why they stay (a command still uses them)."""
    try:
        entries = sorted(os.listdir(paths.engine_root))
    except FileNotFoundError:
        return {}
    found, markerless = {}, []
    for entry in entries:
        folder = os.path.join(paths.engine_root, entry)
        st = os.lstat(folder)
        if entry == VERSION or not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            continue  # ours, or not an engine folder the role wrote: left alone
        try:
            fd = os.open(os.path.join(folder, IN_USE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            markerless.append(folder)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            found[folder] = "remove"
        except BlockingIOError:
            found[folder] = "a repobackup command started from it is still running"
        finally:
            os.close(fd)
    if markerless:
        running = launcher_processes(paths.launcher)
        for folder in markerless:
            found[folder] = ("a repobackup command is running (pid %s) and this engine cannot tell which version it uses"
                             % ", ".join(map(str, running))) if running else "remove"
    return found


def remove_engine(folder: str) -> bool:
    """Remove an engine folder unless a command took its in-use lock meanwhile; renamed first, so no launcher
    can start from a half-removed folder."""
    marker = os.path.join(folder, IN_USE)
    fd = None
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        pass
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        doomed = os.path.join(os.path.dirname(folder), ".removing-%s-%d" % (os.path.basename(folder), os.getpid()))
        os.rename(folder, doomed)
        shutil.rmtree(doomed)
    finally:
        if fd is not None:
            os.close(fd)
    return True


def missing_commands() -> list:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = []
    if not (shutil.which("cron", path=search) or shutil.which("crond", path=search)):
        missing.append("cron")
    if not shutil.which("logrotate", path=search):
        missing.append("logrotate")
    return missing


def main() -> None:
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    paths = Paths()
    files = wanted_files(paths)
    todo = sorted(path for path, (data, mode) in files.items() if differs(path, data, mode))
    if todo and not module.check_mode:
        for path in todo:
            data, mode = files[path]
            makedirs(os.path.dirname(path), 0o755)
            atomic_write(path, data, mode=mode, uid=0, gid=0)
    removed, kept = [], {}
    for folder, verdict in old_engines(paths).items():
        if verdict != "remove":
            kept[folder] = verdict
        elif module.check_mode or remove_engine(folder):
            removed.append(folder)
        else:
            kept[folder] = "a repobackup command started from it meanwhile"
    for folder, why in kept.items():
        module.warn("Engine %s stays for now: %s; the next apply removes it." % (folder, why))
    module.exit_json(changed=bool(todo or removed), version=VERSION,
                     engine_path=os.path.join(paths.engine_root, VERSION), launcher=paths.launcher, files=todo,
                     removed=removed, kept=sorted(kept), missing_commands=missing_commands())


if __name__ == "__main__":
    main()
