#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: repository_export
short_description: Back up repositories of one repository server now
version_added: "0.1.0"
description:
  - Exports repositories of one repository server now, through the same engine as the scheduled job,
    and publishes each backup (data file first, manifest last) under
    C(<destination>/<host>/<server>/<repository>/).
  - By default every repository included in the server's auto-backup settings is exported; any
    repository present on the server can be named, included in the schedule or not.
  - Retention (O(reposerver.backup.autobackup_settings#module:keep_last)) applies after each backup,
    as in a scheduled run.
  - Reports C(changed) only when at least one new backup was published. Fails when any repository
    could not be backed up, and still returns the result of every repository.
author:
  - reposerver.backup maintainers (@reposerver)
extends_documentation_fragment:
  - reposerver.backup.server
options:
  repositories:
    description:
      - Names of the repositories to export (for C(sqlite), file names such as C(assets.db)).
      - Default is every repository included in the server's settings.
    type: list
    elements: str
  destination:
    description:
      - Where to write the backups instead of the configured destination, an absolute path or an
        C(sftp://user@host[:port]/path) URL.
      - The folder must exist; the engine never creates it (an unmounted share fails instead of
        filling the local disk).
      - An C(sftp://) URL uses the server's configured SFTP key and host key, so it is allowed only when the
        configured destination is an C(sftp://) URL too.
    type: str
  skip_unchanged:
    description:
      - Do not publish a backup whose content equals that of the repository's last good backup.
      - The content is compared by a content hash that leaves out what a mere copy changes (for
        C(sqlite), the header's change counter, schema cookie and version fields), so two exports of an unchanged
        repository compare equal even though their bytes and times differ.
      - "What it saves: storage, and retention slots: an unchanged repository does not push an older,
        distinct backup out of the O(reposerver.backup.autobackup_settings#module:keep_last) window."
      - "What it does not save: the export itself still runs, to a temporary file, to compute the
        content hash, so it takes as long as a normal backup."
      - An unchanged repository reports C(result=unchanged) and does not count as changed.
    type: bool
    default: false
attributes:
  check_mode:
    description:
      - Reports which repositories would be exported and writes nothing; fails, as the export would,
        when a named repository is missing or the server is unreachable.
      - With O(skip_unchanged), check mode cannot know whether the content changed (that takes an
        export), so it reports C(changed) whenever a repository would be exported.
    support: full
  diff_mode:
    description: No diff is returned; the result lists the backups.
    support: none
notes:
  - A run of the same server that holds the lock (a scheduled run, say) makes this module fail;
    try again when it ends.
seealso:
  - module: reposerver.backup.repository_import
  - module: reposerver.backup.autobackup_info
"""

EXAMPLES = r"""
- name: Back up every included repository now
  reposerver.backup.repository_export:
    server_name: main

- name: Back up one repository, included in the schedule or not, to a USB disk
  reposerver.backup.repository_export:
    repositories: [assets.db]
    destination: /media/usb/backups

- name: Back up before an upgrade, but only what changed since the last backup
  reposerver.backup.repository_export:
    skip_unchanged: true
  register: backup_now
"""

RETURN = r"""
backups:
  description:
    - One entry per repository exported, by name.
    - In check mode, one entry per repository that would be exported, with C(result=would_export)
      and no file values.
  returned: always
  type: dict
  sample:
    assets.db:
      path: /var/backups/repobackup/build01/main/assets.db/20261127T010000Z.sqlite3
      manifest: /var/backups/repobackup/build01/main/assets.db/20261127T010000Z.manifest.json
      size: 1048576
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      content_sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
      duration: 0.12
      time: "2026-11-27T01:00:00Z"
      result: ok
      error: null
  contains:
    path:
      description: Data file of the backup, restorable with the kind's own tool. Null when none was published.
      type: str
    manifest:
      description: Manifest of the backup. Null when none was published.
      type: str
    size:
      description: Size of the data file in bytes.
      type: int
    sha256:
      description: sha256 of the data file.
      type: str
    content_sha256:
      description: Content hash used by O(skip_unchanged).
      type: str
    duration:
      description: Seconds the export took.
      type: float
    time:
      description: Start of the export, UTC.
      type: str
    result:
      description: C(ok) (published), C(unchanged) (not published, O(skip_unchanged)), C(failed), or C(would_export) in check mode.
      type: str
    error:
      description: Why the backup failed, or null.
      type: str
result:
  description: C(ok), C(partial) (some failed) or C(failed); C(would_export) in check mode.
  returned: always
  type: str
error:
  description: Why the whole run failed (for example the repository server is unreachable), or null.
  returned: always
  type: str
would_export:
  description: Repositories that would be exported.
  returned: check mode
  type: list
  elements: str
missing:
  description: Repositories asked for that are not present on the server; the export would fail for them.
  returned: check mode
  type: list
  elements: str
"""


from ansible.module_utils.basic import AnsibleModule

from ..module_utils.engine import Engine, load_settings
from ..module_utils.errors import RepoBackupError
from ..module_utils.sftp_url import url_passwords


def argument_spec() -> dict:
    return dict(
        server_name=dict(type="str", default="main"),
        repositories=dict(type="list", elements="str"),
        destination=dict(type="str"),
        skip_unchanged=dict(type="bool", default=False),
    )


def shape(entry: dict) -> dict:
    """One repository's result as the module returns it."""
    return {
        "path": entry.get("data_file_path"),
        "manifest": entry.get("backup"),
        "size": entry.get("size"),
        "sha256": entry.get("sha256"),
        "content_sha256": entry.get("content_sha256"),
        "duration": entry.get("duration"),
        "time": entry.get("time"),
        "result": entry.get("result"),
        "error": entry.get("error"),
    }


def plan(engine: Engine, names, destination) -> dict:
    wanted = engine.plan(names=names)
    backups = {name: {"result": "would_export", "error": None} for name in wanted["export"]}
    for name in wanted["missing"]:
        backups[name] = {"result": "failed", "error": "repository %r does not exist" % name}
    error = None
    if not wanted["reachable"]:
        error = "repository server unreachable"
    else:
        error = engine.destination_problem(destination)
    return {"changed": bool(wanted["export"]), "result": "would_export", "error": error,
            "would_export": wanted["export"], "missing": wanted["missing"], "backups": backups}


def export(engine: Engine, params: dict) -> dict:
    report = engine.export(names=params["repositories"], destination=params["destination"],
                           skip_unchanged=params["skip_unchanged"])
    backups = {name: shape(entry) for name, entry in report["repositories"].items()}
    return {"changed": any(b["result"] == "ok" for b in backups.values()),
            "result": report["result"], "error": report.get("error"), "backups": backups}


def failure_message(result: dict):
    """One sentence naming every repository that failed (or would fail), or None."""
    failed = ["%s (%s)" % (name, b["error"]) for name, b in sorted(result["backups"].items())
              if b["result"] == "failed"]
    if failed:
        return "Export failed for %s." % "; ".join(failed)
    if result["error"] or result["result"] == "failed":
        return "Export failed: %s." % (result["error"] or "unknown error")
    return None


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    module.no_log_values.update(url_passwords(module.params))  # older ansible-core echo every argument
    params = module.params
    try:
        engine = Engine(load_settings(params["server_name"]))
        if module.check_mode:
            result = plan(engine, params["repositories"], params["destination"])
        else:
            result = export(engine, params)
    except RepoBackupError as exc:
        module.fail_json(msg=str(exc))
    message = failure_message(result)
    if message:
        module.fail_json(msg=message, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
