#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: repository_import
short_description: Restore a repository from a backup
version_added: "0.1.0"
description:
  - Restores one repository of a repository server from a backup made by the engine (scheduled,
    by the host command or by M(reposerver.backup.repository_export)), into its original name or
    a new one.
  - Before anything is touched, the manifest is read and checked (format version, kind) and the
    data file's size and sha256 are compared with it; a corrupt, truncated or foreign backup is
    refused with one sentence that says why.
  - The backup is restored aside and checked with the kind's own integrity check; only then does it
    become the repository. A failed restore leaves the existing repository as it was.
  - An existing repository is replaced only with O(force=true).
  - Idempotent; importing the same backup again into a repository that was restored from it and has
    not changed since reports C(changed=false) and writes nothing.
author:
  - reposerver.backup maintainers (@reposerver)
extends_documentation_fragment:
  - reposerver.backup.server
options:
  backup:
    description:
      - Path of the backup to restore, its data file or its manifest (C(.manifest.json)), or its
        C(sftp://) address on the server's configured SFTP destination (as status and export results show it);
        such a backup is downloaded to the server's state folder, checked, restored, and the copy removed.
      - Mutually exclusive with O(latest_of); one of the two is required.
    type: str
  latest_of:
    description:
      - Restore the newest backup of this repository, in the server's configured destination,
        whose data file matches its manifest (newer corrupt or incomplete backups are skipped).
      - Mutually exclusive with O(backup); one of the two is required.
    type: str
  repository:
    description: Name of the repository to restore into. Default is the backup's original repository name.
    type: str
  force:
    description: Replace the repository if it exists. Without it, an existing repository is left alone and the task fails.
    type: bool
    default: false
  all:
    description:
      - Disaster recovery onto a replacement (a fresh PostgreSQL cluster, an empty SQLite folder) in one task. First
        the roles of the newest good globals backup that the server lacks are created, without passwords (PostgreSQL;
        existing roles are never altered); then every repository of this host and server that has backups in the
        configured destination is restored from its newest good backup under its own name, each one on its own.
      - The result lists each repository's result; the task fails when any of them (or the roles) failed.
      - Mutually exclusive with O(backup), O(latest_of) and O(repository). Unset means V(false).
    type: bool
  create_roles:
    description:
      - PostgreSQL. Roles the backup needs (the owners and grantees of the database and its objects) that the
        server lacks are created from the globals saved by the same run, without passwords; existing roles are
        never altered. The result lists them in RV(roles_created).
      - V(false) refuses such a backup instead, naming the missing roles in one sentence, before anything changes.
    type: bool
    default: true
  identity_file:
    description:
      - For an encrypted backup, its private key (an age identity or an unencrypted SSH private key) as a path on
        the managed host, read by the module for this import only. Place it before and remove it after the task;
        the file is never read through a symbolic link.
      - Without O(identity_file) or O(identity), an encrypted backup is refused in one sentence that names its
        recipients; with a key that matches none of them, too. Nothing changes in either case.
      - Mutually exclusive with O(identity).
    type: path
  identity:
    description:
      - For an encrypted backup, its private key as text (for example from Ansible Vault). It is handed to C(age)
        through a pipe and never written to a disk on the host; it is never logged.
      - Mutually exclusive with O(identity_file).
    type: str
attributes:
  check_mode:
    description: Checks the backup and computes what would be replaced, and changes nothing.
    support: full
  diff_mode:
    description: Shows the repository before (exists or not, its content hash) and the backup it would be restored from.
    support: full
notes:
  - Another run of the same server that holds the lock (a scheduled run, say) makes this module fail;
    try again when it ends.
  - For C(sqlite), an existing repository is replaced through SQLite's backup API into the live
    file, so clients that hold it open see the restored content.
  - For C(postgresql), the database comes back with the owner, ACL, settings, role-in-database settings, comment,
    connection limit, encoding and locale its backup recorded. A backup the server cannot give the encoding or
    locale of, or that a newer pg_dump wrote than the host's pg_restore can read, is refused before anything
    changes.
seealso:
  - module: reposerver.backup.repository_export
"""

EXAMPLES = r"""
- name: Restore assets.db from its newest good backup, replacing the live one
  reposerver.backup.repository_import:
    latest_of: assets.db
    force: true

- name: Rebuild every database of a lost server on its replacement, roles first
  reposerver.backup.repository_import:
    all: true

- name: Restore a given backup beside the live repository, to compare
  reposerver.backup.repository_import:
    backup: /var/backups/repobackup/build01/main/assets.db/20261127T010000Z.manifest.json
    repository: assets-restored.db
"""

RETURN = r"""
repository:
  description: Name of the repository restored (or that would be restored in check mode).
  returned: success
  type: str
  sample: assets.db
backup:
  description: Manifest of the backup restored.
  returned: success
  type: str
  sample: /var/backups/repobackup/build01/main/assets.db/20261127T010000Z.manifest.json
sha256:
  description: sha256 of the backup's data file.
  returned: success
  type: str
replaced:
  description: Whether an existing repository was (or would be) replaced.
  returned: success
  type: bool
before:
  description: The repository before the import.
  returned: success
  type: dict
  contains:
    exists:
      description: Whether the repository existed.
      type: bool
    content_sha256:
      description: Its content hash, or null when it did not exist.
      type: str
roles_created:
  description: PostgreSQL roles created (without passwords) because the backup needed them and the server lacked them.
  returned: success, when not O(all)
  type: list
  elements: str
result:
  description: With O(all), V(ok), V(partial) or V(failed).
  returned: when O(all)
  type: str
globals:
  description: With O(all), the globals step, V(result) (V(ok), V(skipped), V(failed) or V(none)), V(backup),
    V(roles_created) and V(error).
  returned: when O(all)
  type: dict
repositories:
  description: With O(all), per repository its V(result) (V(ok), V(unchanged) or V(failed)), and V(backup),
    V(roles_created) or V(error).
  returned: when O(all)
  type: dict
after:
  description: The repository after the import.
  returned: success
  type: dict
  contains:
    backup:
      description: Manifest of the backup it comes from.
      type: str
    start:
      description: When that backup was taken, UTC.
      type: str
    content_sha256:
      description: Its content hash.
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.engine import Engine, load_settings
from ..module_utils.errors import RepoBackupError
from ..module_utils.layers import read_identity
from ..module_utils.sftp_url import url_passwords


def argument_spec() -> dict:
    return dict(
        server_name=dict(type="str", default="main"),
        backup=dict(type="str"),
        latest_of=dict(type="str"),
        repository=dict(type="str"),
        force=dict(type="bool", default=False),
        all=dict(type="bool"),
        create_roles=dict(type="bool", default=True),
        identity_file=dict(type="path"),
        identity=dict(type="str", no_log=True),
    )


def describe_before(name: str, before: dict) -> str:
    if not before.get("exists"):
        return "%s: does not exist\n" % name
    return "%s: exists, content sha256 %s\n" % (name, before.get("content_sha256"))


def describe_after(name: str, after: dict) -> str:
    return "%s: from backup %s taken %s, content sha256 %s\n" % (
        name, after.get("backup"), after.get("start"), after.get("content_sha256"))


def diff(report: dict) -> dict:
    name = report["repository"]
    return {"before_header": name, "after_header": name,
            "before": describe_before(name, report["before"]),
            "after": describe_after(name, report["after"]) if report["changed"]
            else describe_before(name, report["before"])}


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("backup", "latest_of", "all"), ("repository", "all"),
                                               ("identity_file", "identity")],
                           required_one_of=[("backup", "latest_of", "all")])
    module.no_log_values.update(url_passwords(module.params))  # older ansible-core echo every argument
    params = module.params
    try:
        engine = Engine(load_settings(params["server_name"]))
        engine.identity = params["identity"] or (read_identity(params["identity_file"]) if params["identity_file"]
                                                 else None)
        if params["all"]:
            exit_all(module, engine.import_all(force=params["force"], dry_run=module.check_mode,
                                               create_roles=params["create_roles"]))
        report = engine.import_backup(backup=params["backup"], latest_of=params["latest_of"],
                                      repository=params["repository"], force=params["force"],
                                      dry_run=module.check_mode, create_roles=params["create_roles"])
    except RepoBackupError as exc:
        module.fail_json(msg=str(exc))
    result = {key: report.get(key) for key in ("repository", "backup", "sha256", "replaced", "before", "after")}
    result["roles_created"] = report.get("roles_created") or []
    result["changed"] = bool(report["changed"])
    if module._diff:
        result["diff"] = diff(report)
    module.exit_json(**result)


def exit_all(module: AnsibleModule, report: dict) -> None:
    """The result of ``all``: fails, with every result, when the roles or any repository failed."""
    result = {key: report[key] for key in ("result", "globals", "repositories")}
    result["changed"] = bool(report["changed"])
    failed = ["%s: %s" % (name, one["error"]) for name, one in report["repositories"].items()
              if one["result"] == "failed"]
    if report["globals"].get("result") == "failed":
        failed.insert(0, "roles: %s" % report["globals"]["error"])
    if failed:
        module.fail_json(msg="Import of every repository: %d failed (%s)." % (len(failed), "; ".join(failed)),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
