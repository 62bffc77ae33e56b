#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: autobackup_info
short_description: Auto-backup status of the repository servers on a host, at a glance
version_added: "0.1.0"
description:
  - Returns, for one repository server or for every one on the host, what C(repobackup status --json)
    shows - on or off, suspension, schedule (also in words), next run, destination, in-use action,
    repositories covered, present but not covered, and named but missing, pending repairs, the last
    run and skip, and per repository the last result, the last success and the number of backups kept.
  - Per repository also the last restore drill (C(repobackup drill) - time, result, which backup, the checks
    that passed, the error) and the time of the newest backup proven restorable, with C(drill_state)
    C(never), C(failed), C(stale) or C(ok).
  - Read only; reads the settings, the status records and the backup folders' listings, and never
    opens a backup file.
author:
  - reposerver.backup maintainers (@reposerver)
extends_documentation_fragment:
  - reposerver.backup.server.any
attributes:
  check_mode:
    description: Changes nothing in any mode, so runs normally in check mode.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
seealso:
  - module: reposerver.backup.autobackup_settings
  - module: reposerver.backup.repository_export
"""

EXAMPLES = r"""
- name: Status of every repository server on the host
  reposerver.backup.autobackup_info:
  register: backup_status

- name: Complain when a server missed a scheduled run
  ansible.builtin.debug:
    msg: "{{ item.server }} last succeeded at {{ item.oldest_last_success }}"
  loop: "{{ backup_status.servers | selectattr('missed') }}"

- name: Complain when a repository's newest restore drill failed
  ansible.builtin.debug:
    msg: "{{ item.server }}: {{ item.drill_failures }} repositories failed their restore drill"
  loop: "{{ backup_status.servers | selectattr('drill_failures') }}"
"""

RETURN = r"""
servers:
  description: One status per repository server, sorted by server name.
  returned: always
  type: list
  elements: dict
  contains:
    server:
      description: Server name.
      type: str
    format:
      description: Format version of this status.
      type: int
    engine_version:
      description: Version of the engine that computed it.
      type: str
    host:
      description: This host's id as it appears in the backup folders and manifests (settings C(host_id)).
      type: str
    kind:
      description: Repository server kind.
      type: str
    enabled:
      description: Auto-backup on or off.
      type: bool
    suspended_until:
      description: Scheduled runs are skipped until then (host local time), or null.
      type: str
    schedule:
      description: Days and times, and the schedule in words (C(text), e.g. C(every day at 01:00)).
      type: dict
    next_run:
      description: Next scheduled run that will back up, host local time, or null when off.
      type: str
    last_due:
      description: The most recent time a scheduled run was due, host local time.
      type: str
    missed:
      description: Whether the newest successful backup is older than the last due run implies.
      type: bool
    max_age_hours:
      description:
        - Hours after which a covered repository's newest good backup is stale (C(max_age_hours), or derived from
          the schedule - its longest gap plus a quarter, at least 2 hours).
      type: float
    stale:
      description:
        - Number of covered repositories whose newest good backup is older than C(max_age_hours) (one without any
          good backup is not stale, C(missed) says it). 0 while the server is off or suspended, shown as such.
      type: int
    splay_minutes:
      description: The server's C(splay_minutes) setting (0 - none).
      type: int
    splay_offset_minutes:
      description: The minutes (from C(splay_minutes), stable per host id and server) added to every scheduled time.
      type: int
    last_notify:
      description:
        - The last notification sent, or null - C(time), C(event) (C(start), C(success), C(failure), C(skipped)) and
          per target of the run C(event), C(target) (its scheme and host only), C(style), C(outcome) (C(ok) or
          C(failed)), C(http_status), C(error) and C(attempts).
      type: dict
    destination:
      description: Where backups go.
      type: str
    destination_kind:
      description: C(local) (a folder on this host, local disk or a mounted share) or C(sftp).
      type: str
    destination_reachable:
      description:
        - Whether backups can be written now - the folder exists (and is a mount point with
          C(require_mount)), or the SFTP server accepts the connection and has the folder.
      type: bool
    destination_error:
      description: Why the destination cannot be used now, one sentence, or null.
      type: str
    destination_free_bytes:
      description:
        - Free space at the destination in bytes, or null where unknown (unreachable, or an SFTP server without
          OpenSSH's statvfs extension).
      type: int
    destination_mount_point:
      description: For a local destination, whether it is a mount point now; null for C(sftp).
      type: bool
    require_mount:
      description: Whether runs refuse to write unless the destination is a mount point.
      type: bool
    last_upload:
      description:
        - The last file a run wrote to the destination, or the failure that stopped it - C(time), C(result),
          C(error), C(destination_kind), C(bytes), C(seconds), C(verified) (read back and hashed, SFTP) and
          C(backup); null before the first run.
      type: dict
    in_use:
      description: In-use action.
      type: str
    keep_last:
      description: Backups kept per repository, at least.
      type: int
    retention:
      description: C(keep_last), C(keep_daily), C(keep_weekly), C(keep_monthly) and C(text), the policy in words.
      type: dict
    server_reachable:
      description: Whether the repository server could be listed.
      type: bool
    covered:
      description: Repositories included and present.
      type: list
      elements: str
    not_covered:
      description: Repositories present but not included.
      type: list
      elements: str
    missing:
      description: Repositories named in the settings but not present.
      type: list
      elements: str
    last_run:
      description: The last run (start, end, trigger, result, error, repositories, failed), or null.
      type: dict
    last_skip:
      description: The last skipped scheduled run (time, reason, trigger), or null.
      type: dict
    running:
      description: Whether a run of this server holds its lock right now.
      type: bool
    metrics_file:
      description: Prometheus textfile written after every run, or null.
      type: str
    last_success:
      description: Newest successful backup time over the covered repositories, UTC, or null.
      type: str
    oldest_last_success:
      description: Oldest of the covered repositories' last successful backup times, UTC, or null.
      type: str
    failures:
      description: Number of covered repositories whose last backup failed.
      type: int
    pending_repairs:
      description: Access repairs left by a crashed run, done before the next export or import.
      type: list
      elements: str
    undeclared:
      description:
        - Whether the role applied this server and its last run no longer declares it (renamed or dropped in
          inventory). The role warns, and removes it when C(autobackup_purge_undeclared) is true. Always false for
          servers set up by direct module calls.
      type: bool
    legacy_folder:
      description:
        - This server's folder under the short host name, written before host ids, when it exists; else null.
        - It may hold backups of several hosts with one short name, so the engine never prunes it and an import
          C(latest_of) never picks from it; import from it by path.
      type: str
    drill:
      description:
        - Restore drills - C(days), C(times) and C(text) (the schedule in words, or C(none scheduled)), C(next)
          (the next scheduled drill, host local time, or null), C(max_age_days) (a proof older than this is flagged)
          and C(target) (the kind's drill target, for example a PostgreSQL drill cluster's C(host), C(port) and
          C(service), or null for scratch on the server itself).
      type: dict
    last_drill_run:
      description: The last drill run (start, end, trigger, result, error, repositories, failed), or null.
      type: dict
    drill_failures:
      description: Number of covered repositories whose newest restore drill failed.
      type: int
    drill_stale:
      description: Number of covered repositories whose newest proven-restorable backup is older than C(drill.max_age_days).
      type: int
    never_drilled:
      description: Number of covered repositories never drilled.
      type: int
    repositories:
      description:
        - Per repository (covered, missing, or with a recorded run) - C(last) and C(last_success)
          (time, result, error, size, duration, backup), C(backups_kept) (null when the destination cannot
          be read), C(failures) (failed runs
          in a row) and C(covered).
        - C(last_drill), the newest restore drill or null - C(time), C(result) (C(ok) or C(failed)), C(backup) (the
          manifest of the backup restored), C(backup_start), C(checks) (those that passed, such as C(restore),
          C(integrity_check), C(amcheck), C(row_counts), C(objects)), C(error) (the cause of a failure),
          C(target), C(duration), C(skipped_backups) and C(space_unchecked).
        - C(proven_restorable), when the newest backup a drill proved restorable began (UTC), or null, and
          C(proven_restorable_backup), its manifest.
        - C(drill_state) - C(never) (never drilled), C(failed) (the newest drill failed), C(stale) (the proof is
          older than C(drill.max_age_days)) or C(ok).
        - C(stale), true when a covered repository's newest good backup is older than C(max_age_hours) (its age is
          in the metrics file, C(repobackup_backup_age_seconds)).
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.declared import is_undeclared
from ..module_utils.engine import Engine, load_settings, servers_on_host
from ..module_utils.errors import RepoBackupError
from ..module_utils.layout import Paths


def main() -> None:
    module = AnsibleModule(argument_spec=dict(server_name=dict(type="str")), supports_check_mode=True)
    paths = Paths()
    names = [module.params["server_name"]] if module.params["server_name"] else servers_on_host(paths)
    servers = []
    try:
        for name in names:
            info = Engine(load_settings(name, paths), paths).status()
            info["undeclared"] = is_undeclared(name, paths)
            servers.append(info)
    except RepoBackupError as exc:
        module.fail_json(msg=str(exc), servers=servers)
    module.exit_json(changed=False, servers=servers)


if __name__ == "__main__":
    main()
