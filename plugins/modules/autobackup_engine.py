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
  - Used by the role M(reposerver.backup.autobackup); there is nothing to configure.
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
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule

from ..module_utils import (cli, clock, destination, engine, errors, facts, kind_git, kind_postgresql, kind_sqlite, kinds, layout,
                            metrics, pg_database, privilege, report, results, retention, schedule, settings, sftp, sftp_url, state,
                            status, store)
from ..module_utils.layout import VERSION, Paths, atomic_write, makedirs

ENGINE_MODULES = (cli, clock, destination, engine, errors, facts, kind_git, kind_postgresql, kind_sqlite, kinds, layout, metrics,
                  pg_database, privilege, report, results, retention, schedule, settings, sftp, sftp_url, state, status, store)

PYTHON = "/usr/bin/python3"
LAUNCHER = """#!{python} -I
# Managed by reposerver.backup: the host command of the repobackup engine {version}.
import sys
sys.dont_write_bytecode = True
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
    launcher = LAUNCHER.format(python=PYTHON, version=VERSION, path=root)
    files[paths.launcher] = (launcher.encode("utf-8"), 0o755)
    return files


def differs(path: str, data: bytes, mode: int) -> bool:
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            return handle.read() != data or (st.st_mode & 0o7777) != mode or st.st_uid != 0
    except FileNotFoundError:
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
    module.exit_json(changed=bool(todo), version=VERSION, engine_path=os.path.join(paths.engine_root, VERSION),
                     launcher=paths.launcher, files=todo,
                     missing_commands=missing_commands())


if __name__ == "__main__":
    main()
