#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: autobackup_settings
short_description: Auto-backup settings of one repository server, and its cron file
version_added: "0.1.0"
description:
  - Writes the settings document C(/etc/repobackup/<server>.json) of one repository server
    and renders the cron file C(/etc/cron.d/repobackup_<server>) from it, in one idempotent step.
  - Every value is checked before anything on the host changes; a bad value fails with one
    sentence that names it and what is allowed.
  - Works whether the repository server is running or not. A named repository that does not
    exist (yet, or because the server is down) is accepted with a warning.
  - When auto-backup is off the cron entries are kept, commented out, so the schedule survives.
author:
  - reposerver.backup maintainers (@reposerver)
extends_documentation_fragment:
  - reposerver.backup.server
options:
  state:
    description: C(absent) removes the settings and the cron file and keeps the backups.
    type: str
    choices: [present, absent]
    default: present
  managed_by:
    description:
      - C(role) marks the server as one the role
        R(reposerver.backup.autobackup, ansible_collections.reposerver.backup.autobackup_role) manages (the role sets it). When the
        inventory no longer declares it, the role names it in a warning, C(autobackup_info) flags it C(UNDECLARED),
        and with C(autobackup_purge_undeclared) the role removes its settings and cron file.
      - Unset (direct module calls) means never a candidate for that purge. Stored in the settings document.
    type: str
    choices: [role]
  kind:
    description:
      - Kind of repository server.
      - C(sqlite) backs up the SQLite database files of one folder (O(sqlite_root)).
      - C(postgresql) backs up the databases of one PostgreSQL cluster (O(postgresql_host) and the
        other C(postgresql_) options).
      - C(git) backs up the bare git repositories under one folder and one folder below it (O(git_root)).
    type: str
    choices: [sqlite, postgresql, git]
    default: sqlite
  enabled:
    description: Auto-backup on or off. Off keeps the schedule; scheduled runs are skipped.
    type: bool
    default: true
  suspended_until:
    description:
      - ISO 8601 date or date-time in host local time; scheduled runs are skipped until then
        and resume by themselves. A date alone means midnight at its start.
    type: str
  repositories:
    description: C(all) (resolved at each run) or a list of repository names.
    type: raw
    default: all
  exclude:
    description: Names left out when O(repositories) is C(all).
    type: list
    elements: str
    default: []
  days:
    description: Days of the week, C(mon) to C(sun).
    type: list
    elements: str
    default: [mon, tue, wed, thu, fri, sat, sun]
  times:
    description:
      - Times of day as quoted C("HH:MM") strings, host local time.
      - An unquoted C(13:30) reaches Ansible as a number and is refused with a hint to quote it.
    type: list
    elements: raw
    default: ["01:00"]
  splay_minutes:
    description:
      - A stable offset, from 0 to N-1 minutes, added to every scheduled time, so that a fleet on one schedule does
        not reach one destination at the same second. It is a hash of the host id and the server name, the same on
        every run. C(0) (the default) means none; at most 720.
      - The cron file, C(next_run), status and the staleness and missed-run checks use the times with the offset.
    type: int
    default: 0
  destination:
    description:
      - Where backups go. Required when O(state=present).
      - An absolute path, on a local disk or a mounted network share (see O(require_mount)).
      - Or an C(sftp://user@host[:port]/path) URL (port 22 by default, an absolute remote path); the
        run-as user logs in with the key O(sftp_key_file). A URL with a password is refused; passwords are
        never stored.
    type: str
  in_use:
    description:
      - What to do when a repository is in use at backup time.
      - C(keep_connections) takes a consistent online snapshot while clients keep working.
      - C(disconnect) holds clients off for the duration of the backup and lets them back in.
    type: str
    choices: [keep_connections, disconnect]
    default: keep_connections
  keep_last:
    description:
      - The newest backups kept per repository, at least 1.
      - O(keep_daily), O(keep_weekly) and O(keep_monthly) keep more, on top of these.
      - Retention prunes only after a new backup succeeded and was verified; the newest good backup is never removed.
    type: int
    default: 14
  keep_daily:
    description:
      - Also keep, per repository, the newest backup of each of the N most recent days that have backups.
      - C(0) (the default) turns it off. At most 100000.
    type: int
    default: 0
  keep_weekly:
    description:
      - Also keep, per repository, the newest backup of each of the N most recent ISO weeks that have backups.
      - C(0) (the default) turns it off. At most 100000.
    type: int
    default: 0
  keep_monthly:
    description:
      - Also keep, per repository, the newest backup of each of the N most recent months that have backups.
      - C(0) (the default) turns it off. At most 100000.
    type: int
    default: 0
  require_mount:
    description:
      - Refuse to write backups unless the destination path is a mount point at run time.
      - This catches a network share that is not mounted, which would otherwise silently fill the local disk
        under the mount point. The settings still apply while it is not mounted; runs fail and status says why.
      - Not allowed with an C(sftp://) destination.
    type: bool
    default: false
  sftp_key_file:
    description:
      - For an C(sftp://) destination, required; ignored for a path.
      - Absolute path of the run-as user's private key, without a passphrase. Passwords are never stored.
    type: str
  sftp_known_hosts:
    description:
      - For an C(sftp://) destination, absolute path of a known_hosts file that holds the server's host key.
      - Unset means the run-as user's C(~/.ssh/known_hosts) and C(/etc/ssh/ssh_known_hosts).
      - A missing or changed host key is an error, never accepted automatically.
    type: str
  sftp_host_key:
    description:
      - For an C(sftp://) destination, the server's public host key, pinned, as C(TYPE BASE64), for example the
        text of the server's C(/etc/ssh/ssh_host_ed25519_key.pub) or a line of C(ssh-keyscan -t ed25519 HOST)
        (a leading host name and a trailing comment are dropped).
      - Takes precedence over O(sftp_known_hosts). A different key is an error, never accepted automatically.
      - A public key, not a secret.
    type: str
  sftp_verify_upload:
    description:
      - For an C(sftp://) destination, read every uploaded file back over SFTP and compare its sha256.
      - SSH's message authentication already guards the transport; this mostly guards against a faulty remote
        disk, and costs a second transfer of every backup.
    type: bool
    default: false
  sftp_retries:
    description: For an C(sftp://) destination, reconnects after a dropped connection, 0 to 10.
    type: int
    default: 3
  sftp_timeout:
    description: For an C(sftp://) destination, seconds to wait for the server to answer, 1 to 600.
    type: int
    default: 30
  host_id:
    description:
      - How this host is named in backup paths (C(<destination>/<host_id>/<server>/...)) and in manifests;
        it must be unique in the fleet, since hosts sharing one destination are told apart by it.
      - 1 to 253 characters from C(A-Z), C(a-z), C(0-9), C(.), C(-) and C(_), starting and ending with a letter
        or digit.
      - Unset means this host's fully qualified domain name, resolved now, on the host, and stored in the
        settings, so a resolver that fails later cannot move the folder (a host without a domain name gets its
        short host name). Re-running the module picks up a changed FQDN.
      - Backups written by earlier versions under the short host name stay where they are. The engine never
        prunes that folder and never picks from it for an import C(latest_of) (it may hold several hosts'
        backups); import from it by path. Status names it (C(legacy_folder)).
    type: str
  notify:
    description:
      - Where each scheduled or manual run (C(repobackup run)) reports how it went. Each target's URL carries a token,
        so it is a secret, kept apart from the settings document in C(/etc/repobackup/<server>.notify.json) (mode
        0640, group of O(run_as)); status, the log, the diff and this module's output show its scheme and host only.
      - Sent with Python's standard library, HTTPS verified against the system's CA store (or O(notify[].ca_file)),
        a short timeout and one retry; a run spends at most 10 seconds on notifications in all, and a notification
        never fails a run. Status keeps the outcome (C(last_notify)).
      - An empty list (the default) removes the file.
    type: list
    elements: dict
    default: []
    suboptions:
      url:
        description: The target, C(https://) (or C(http://)), without a password in it. A secret.
        type: str
        required: true
      style:
        description:
          - C(healthchecks) (the default) pings C(URL/start) when a run starts, C(URL) on success, C(URL/fail) on
            failure and C(URL/log) for a skipped run, with a plain-text body (the run's summary and the last lines
            of its log, at most 10 KB).
          - C(webhook) posts the run's result as JSON (C(event), C(host), C(server), C(kind), C(result), C(error),
            C(reason), C(start), C(duration_seconds), C(next_run), and per repository its result and error).
        type: str
      events:
        description:
          - Any of C(start), C(success), C(failure) (a failed or partial run) and C(skipped) (off, suspended or
            already running).
          - Default C([start, success, failure]) for C(healthchecks), C([success, failure]) for C(webhook).
        type: list
        elements: str
      ca_file:
        description: A PEM file of the CA certificates to trust instead of the system's, for a private CA.
        type: str
  run_as:
    description:
      - OS user the scheduled job runs as. Default per kind (C(root) for C(sqlite), C(postgres) for C(postgresql),
        the owner of O(git_root) for C(git), or C(root) while that folder does not exist).
    type: str
  disconnect_wait:
    description: Seconds the C(disconnect) action waits to hold clients off before it gives up.
    type: int
    default: 30
  lock_wait:
    description:
      - Seconds, 0 to 86400, a run that finds another run of the server in progress waits for it to end before it
        is skipped (recorded as skipped, C(already running)). C(0) skips at once.
      - A lock left by a killed run is never mistaken for a live one (the lock dies with its process).
    type: int
    default: 0
  max_age_hours:
    description:
      - Hours, 0 to 87600, after which a covered repository whose newest good backup is older is stale (status,
        C(autobackup_info), the metrics file and C(fleet_status) flag it). This catches a host whose cron stopped,
        where no run ever reports a failure.
      - C(0) (the default) derives it from the schedule, its longest gap between two runs plus a quarter of it
        (at least 2 hours), so 30 hours for a daily run.
    type: int
    default: 0
  parallel:
    description:
      - Repositories exported at the same time during a run, a whole number from 1 to 16, or C(auto).
      - C(auto) is half the host's CPU cores, at least 1 and at most 4 (each PostgreSQL export is a
        C(pg_dump) process, each SQLite export mostly disk I/O).
      - Settings written before this option existed read as C(auto).
    type: raw
    default: auto
  metrics_file:
    description:
      - Path of a Prometheus text-format file (ending in C(.prom)) that every run rewrites atomically,
        for node_exporter's textfile collector, with per repository the last success time, last duration,
        last size, whether the last attempt failed, and consecutive failures.
      - Not written when unset.
    type: path
  sqlite_root:
    description: Folder whose SQLite database files are the repositories (kind C(sqlite)).
    type: path
    default: /var/lib/reposerver/sqlite
  postgresql_host:
    description:
      - For kind C(postgresql), the server's host name, address or Unix socket folder.
      - Unset means libpq's default (the local socket, with peer authentication for O(run_as)).
      - There is no password option. A password comes from the run-as user's C(~/.pgpass) or
        from a libpq service file (see O(postgresql_service)), never from settings, cron files or logs.
    type: str
  postgresql_port:
    description: For kind C(postgresql), the server's port, 1 to 65535.
    type: int
    default: 5432
  postgresql_user:
    description: For kind C(postgresql), the database role to connect as. Unset means libpq's default (the OS user's name).
    type: str
  postgresql_service:
    description:
      - For kind C(postgresql), a libpq service name, looked up in the service file
        (C(~/.pg_service.conf) of the run-as user or the system C(pg_service.conf)).
    type: str
  encrypt_to:
    description:
      - Recipients new backups are encrypted to with age, each an age public key (C(age1...)) or an SSH public key
        (C(ssh-ed25519 ...) or C(ssh-rsa ...) of 2048 bits or more); empty means not encrypted. A recipient that
        does not parse is refused in one sentence, before anything changes.
      - The host holds only public keys. Restoring needs the private key (C(--identity FILE), or the
        M(reposerver.backup.repository_import) options O(reposerver.backup.repository_import#module:identity_file) and
        O(reposerver.backup.repository_import#module:identity)). A change applies to new backups only; older ones
        stay readable with their own keys.
    type: list
    elements: str
    default: []
  compression:
    description:
      - C(zstd) or C(none), for data files not compressed already (SQLite files, PostgreSQL globals); PostgreSQL's
        custom format and git's bundles keep their own compression.
    type: str
    choices: [none, zstd]
    default: none
  drill_days:
    description:
      - Days of the week, C(mon) to C(sun), on which scheduled restore drills run (C(repobackup drill)).
      - A drill restores each covered repository's newest good backup into scratch (never the live repository),
        checks it, records the result in status and removes the scratch.
    type: list
    elements: str
    default: [mon, tue, wed, thu, fri, sat, sun]
  drill_times:
    description:
      - Times of day, quoted C("HH:MM") strings in host local time, of scheduled restore drills; a second line of
        the cron file, on and off with the backups.
      - Empty (the default) means no scheduled drills; C(repobackup drill) still runs one by hand.
    type: list
    elements: raw
    default: []
  drill_identity_file:
    description:
      - For encrypted backups, the private key scheduled drills read (a path on the host); empty means none.
      - It must be readable by the run-as user only (mode 0600 or stricter). It is the one private key kept on the
        host, by choice; whoever reads it reads every backup encrypted to it.
    type: str
  drill_max_age_days:
    description:
      - Days, 1 to 3650, after which a repository whose newest backup proven restorable by a drill is older is
        flagged (status C(drill_state=stale), C(fleet_status)).
    type: int
    default: 8
  drill_postgresql_host:
    description:
      - For kind C(postgresql), the drill cluster that drills restore into instead of a scratch database on the
        server's own cluster (host name, address or Unix socket folder).
      - Unset, with O(drill_postgresql_port) 0 and O(drill_postgresql_service) unset, means the server's own
        cluster. Any one of them set means a drill cluster, whose unset values are the server's.
    type: str
  drill_postgresql_port:
    description: For kind C(postgresql), the drill cluster's port; C(0) means the server's (O(postgresql_port)).
    type: int
    default: 0
  drill_postgresql_service:
    description: For kind C(postgresql), the drill cluster's libpq service name.
    type: str
  git_root:
    description:
      - For kind C(git), the folder whose bare repositories, and those one folder below it (C(owner/name.git) as
        Gitea, Forgejo and cgit lay them out), are the repositories, named by their path below it.
    type: path
    default: /srv/git
  settings:
    description:
      - A whole settings document, as RV(settings) returns it (for example from a run in check mode), instead of
        the options that make one; it is checked as strictly as they are. An unset C(host_id) in it is resolved
        as for O(host_id).
      - The role C(reposerver.backup.autobackup) checks each server's options in check mode first and then applies
        the document that check returned.
      - Mutually exclusive with every option but O(state).
    type: dict
attributes:
  check_mode:
    description: Computes what would change and changes nothing.
    support: full
  diff_mode:
    description: Shows the settings document and the cron file before and after.
    support: full
notes:
  - The cron file's command line is fixed (C(repobackup run --server NAME)); no user text reaches it.
  - The settings file is mode 0640, group of O(run_as); it holds no secrets (for C(sftp://), the path of the
    key file, not the key).
  - An C(sftp://) destination needs the Python library paramiko for C(/usr/bin/python3) (package
    C(python3-paramiko)); RV(missing_python_modules) says whether it is missing. The role
    C(reposerver.backup.autobackup) installs it when needed.
"""

EXAMPLES = r"""
- name: Back up every SQLite repository at 01:00 and 13:30 on weekdays
  reposerver.backup.autobackup_settings:
    server_name: main
    sqlite_root: /var/lib/reposerver/sqlite
    days: [mon, tue, wed, thu, fri]
    times: ["01:00", "13:30"]
    destination: /var/backups/repobackup
    keep_last: 14

- name: Back up the databases of the local PostgreSQL cluster at 02:00, as the postgres user over the socket
  reposerver.backup.autobackup_settings:
    server_name: pg_main
    kind: postgresql
    times: ["02:00"]
    destination: /var/backups/repobackup

- name: Keep 7 daily, 4 weekly and 12 monthly backups besides the last 3, on a share that must be mounted
  reposerver.backup.autobackup_settings:
    server_name: main
    destination: /mnt/backups
    require_mount: true
    keep_last: 3
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 12

- name: Upload backups over SFTP with the run-as user's key, the server's host key pinned
  reposerver.backup.autobackup_settings:
    server_name: main
    destination: sftp://backup@files.example.com/srv/backups
    sftp_key_file: /root/.ssh/id_ed25519
    sftp_host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb7YxG+JtTIp0xwznAxw1i3N0eA3M1rwUh1bQPvgbDd
    sftp_verify_upload: false

- name: Pause auto-backup over the holidays, keeping the schedule
  reposerver.backup.autobackup_settings:
    server_name: main
    destination: /var/backups/repobackup
    suspended_until: "2027-01-04"

- name: Check the settings in check mode, then apply the document the check returned
  reposerver.backup.autobackup_settings:
    server_name: main
    destination: /var/backups/repobackup
  check_mode: true
  register: checked

- name: Apply the checked settings
  reposerver.backup.autobackup_settings:
    settings: "{{ checked.settings }}"

- name: Remove settings and cron file, keep the backups
  reposerver.backup.autobackup_settings:
    server_name: main
    state: absent
"""

RETURN = r"""
settings:
  description: The settings document as written (or as it would be written in check mode); O(settings) takes it back.
  returned: state is present
  type: dict
notify:
  description: The notification targets as stored, each URL shown by its scheme and host only.
  returned: state is present
  type: list
  elements: dict
cron_file:
  description: Path of the cron file.
  returned: always
  type: str
  sample: /etc/cron.d/repobackup_main
cron:
  description: Content of the cron file.
  returned: state is present
  type: str
next_run:
  description: Next scheduled run that will back up, host local time, or null when off.
  returned: state is present
  type: str
  sample: "2026-11-28T01:00"
schedule_text:
  description: The schedule in words, with the splay offset (O(splay_minutes)) applied.
  returned: state is present
  type: str
  sample: every day at 01:00
missing:
  description: Named repositories that are not present on the server now.
  returned: state is present
  type: list
  elements: str
missing_python_modules:
  description:
    - Python modules the settings need that C(/usr/bin/python3), which runs the engine, cannot import now
      (C(paramiko) for an C(sftp://) destination). Empty when nothing is missing.
  returned: state is present
  type: list
  elements: str
  sample: [paramiko]
missing_programs:
  description:
    - Programs the engine runs for these settings that this host lacks (C(git) for a C(git) server, C(age) for
      O(encrypt_to), C(zstd) for O(compression)). Empty when nothing is missing; the role installs the packages then.
  returned: state is present
  type: list
  elements: str
  sample: [git]
destination_mounted:
  description:
    - With O(require_mount=true), whether the destination is a mount point now; runs refuse to write while
      it is not. Null when O(require_mount=false).
  returned: state is present
  type: bool
"""

import json
import os
import pwd
import shutil

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.engine import make_server, selection
from ..module_utils.errors import RepoBackupError, SettingsError
from ..module_utils.kinds import driver_class
from ..module_utils.layers import missing_programs as layer_programs
from ..module_utils.sftp_url import url_passwords
from ..module_utils.layout import Paths, atomic_write, dump_json, host_name, makedirs
from ..module_utils.notify import check_targets, notify_file, shown
from ..module_utils.notify import document as notify_document
from ..module_utils.privilege import call_as, folder_problem
from ..module_utils.schedule import effective_text, next_run, render_cron
from ..module_utils.settings import argument_spec as settings_argument_spec
from ..module_utils.settings import check_server_name, from_document, setting_keys, validate


def argument_spec() -> dict:
    """One option per setting of the option table (module_utils/settings.py), and ``settings``: a whole document."""
    return dict(settings_argument_spec(), settings=dict(type="dict"), managed_by=dict(type="str", choices=["role"]))


def wanted_settings(params: dict):
    """The settings the options (or the ``settings`` document) ask for.

    An unset host_id is this host's FQDN now, stored: the folder never moves with the resolver.
    """
    if params["settings"] is not None:
        doc = dict(params["settings"])
        doc["host_id"] = doc.get("host_id") or host_name()
        return from_document(doc)
    raw = {key: params[key] for key in setting_keys()}
    raw["host_id"] = raw["host_id"] or host_name()
    return validate(raw)


class FileState:
    """One managed file: wanted bytes, mode and owner against what is on disk."""

    def __init__(self, path: str, wanted, mode: int, gid: int = 0):
        self.path, self.wanted, self.mode, self.gid = path, wanted, mode, gid
        try:
            with open(path, "rb") as handle:
                self.current = handle.read()
            st = os.stat(path)
            self.current_meta = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
        except FileNotFoundError:
            self.current, self.current_meta = None, None

    @property
    def changed(self) -> bool:
        if self.wanted is None:
            return self.current is not None
        return self.current != self.wanted or self.current_meta != (self.mode, 0, self.gid)

    def apply(self) -> None:
        if self.wanted is None:
            if self.current is not None:
                os.unlink(self.path)
            return
        makedirs(os.path.dirname(self.path), 0o755)
        atomic_write(self.path, self.wanted, mode=self.mode, uid=0, gid=self.gid)

    def diff(self) -> dict:
        def text(data):
            return "" if data is None else data.decode("utf-8", "replace")
        return {"before_header": self.path, "after_header": self.path,
                "before": text(self.current), "after": text(self.wanted)}


class SecretFileState(FileState):
    """The notification targets' file: its diff shows each URL by scheme and host only."""

    def diff(self) -> dict:
        def text(data):
            try:
                doc = json.loads(data) if data else None
                return "" if doc is None else json.dumps(dict(doc, targets=shown(doc.get("targets") or [])),
                                                         indent=2, sort_keys=True) + "\n"
            except (ValueError, TypeError, AttributeError, KeyError):
                return "(not shown: it holds secrets)\n"
        return {"before_header": self.path, "after_header": self.path,
                "before": text(self.current), "after": text(self.wanted)}


def run_as_gid(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError:
        raise SettingsError("run_as user %r does not exist on this host." % user) from None


def missing_repositories(settings, module: AnsibleModule) -> list:
    try:
        # As the run-as user, like the scheduled job: a cluster as Debian installs it has no role root.
        present = call_as(settings.run_as, make_server(settings).list_repositories)
    except RepoBackupError as exc:
        if settings.repositories != "all":
            module.warn("Cannot list repositories now (%s); named repositories are accepted unchecked." % exc)
        return selection(settings, None)["missing"]
    missing = selection(settings, present)["missing"]
    for name in missing:
        module.warn("Repository %r does not exist (yet); it is accepted and shown as missing in status." % name)
    return missing


# The engine's interpreter (the launcher runs it with -I), which is not necessarily the module's.
ENGINE_PYTHON = "/usr/bin/python3"
_FIND_SPEC = "import importlib.util, sys; raise SystemExit(0 if importlib.util.find_spec(sys.argv[1]) else 1)"


def warn_about_sftp_files(module: AnsibleModule, settings) -> None:
    """The key file (and a named known_hosts file) should be there before the first run; warn, do not refuse."""
    if settings.destination_kind() != "sftp":
        return
    for option in ("key_file", "known_hosts"):
        path = settings.sftp.get(option)
        if path and not os.path.isfile(path):
            module.warn("sftp_%s %s does not exist (yet); runs fail until it is there, readable by %s."
                        % (option, path, settings.run_as))


def warn_about_refused_folders(module: AnsibleModule, settings) -> None:
    """Runs refuse a folder a less privileged user can change (module_utils/privilege.py): say so now."""
    folders = [("The %s folder" % {"sqlite": "SQLite", "git": "git"}[settings.kind], settings.options.get("root"))] \
        if settings.kind in ("sqlite", "git") else []
    if settings.destination_kind() != "sftp":
        folders.append(("The destination", settings.destination))
    for what, path in folders:
        if not path or not os.path.isdir(path):
            continue
        try:
            problem = call_as(settings.run_as, folder_problem, path)
        except RepoBackupError:
            return  # e.g. run_as does not exist yet: the run itself will say
        if problem:
            module.warn("%s %s will be refused by every run: %s; make it belong to %s, or set run_as to its owner."
                        % (what, path, problem, settings.run_as))


def missing_python_modules(module: AnsibleModule, settings) -> list:
    """Python modules the engine needs for these settings and cannot import (paramiko for sftp://)."""
    if settings.destination_kind() != "sftp":
        return []
    if not os.access(ENGINE_PYTHON, os.X_OK):
        return ["paramiko"]
    rc, dummy, dummy = module.run_command([ENGINE_PYTHON, "-I", "-c", _FIND_SPEC, "paramiko"])
    return [] if rc == 0 else ["paramiko"]


def missing_programs(settings) -> list:
    """Programs the engine runs for these settings that this host lacks: git for a git server, age for encrypted
    backups, zstd where something is compressed (a kind whose data is not compressed already, or its globals)."""
    missing = []
    if settings.kind == "git" and not shutil.which("git", path="/usr/local/bin:/usr/bin:/bin"):
        missing.append("git")
    kind = driver_class(settings.kind)
    compresses = not kind.data_compressed or kind.has_globals
    return missing + layer_programs(settings.compression if compresses else "none", settings.encrypt_to)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("settings", key) for key in setting_keys()],
                           required_if=[("state", "present", ["destination", "settings"], True)])
    module.no_log_values.update(url_passwords(module.params))  # older ansible-core echo every argument
    params = module.params
    paths = Paths()
    result = {"changed": False}
    try:
        if params["state"] == "absent":
            server = check_server_name(params["settings"].get("server") if params["settings"] is not None
                                       else params["server_name"])
            files = [FileState(paths.settings_file(server), None, 0o640),
                     FileState(paths.cron_file(server), None, 0o644),
                     SecretFileState(notify_file(paths.settings_dir, server), None, 0o640)]
        else:
            settings = wanted_settings(params)
            server = settings.server
            gid = run_as_gid(settings.run_as)
            cron = render_cron(settings, paths.launcher)
            document = dict(settings.to_document(), **({"managed_by": params["managed_by"]} if params["managed_by"] else {}))
            files = [FileState(paths.settings_file(server), dump_json(document), 0o640, gid),
                     FileState(paths.cron_file(server), cron.encode("utf-8"), 0o644)]
            targets = check_targets(params["notify"])  # secrets: a file of their own, never in the document
            files.append(SecretFileState(notify_file(paths.settings_dir, server),
                                         notify_document(targets) if targets else None, 0o640, gid))
            result["notify"] = shown(targets)
            upcoming = next_run(settings)
            warn_about_sftp_files(module, settings)
            warn_about_refused_folders(module, settings)
            result.update(settings=document, cron=cron,
                          next_run=upcoming.isoformat(timespec="minutes") if upcoming else None,
                          schedule_text=effective_text(settings),
                          missing=missing_repositories(settings, module),
                          missing_python_modules=missing_python_modules(module, settings),
                          missing_programs=missing_programs(settings),
                          destination_mounted=os.path.ismount(settings.destination) if settings.require_mount
                          else None)
    except SettingsError as exc:
        module.fail_json(msg=str(exc))
    result["cron_file"] = paths.cron_file(server)
    result["changed"] = any(f.changed for f in files)
    if module._diff:
        result["diff"] = [f.diff() for f in files if f.changed]
    if result["changed"] and not module.check_mode:
        try:
            for state in files:
                state.apply()
        except OSError as exc:
            module.fail_json(msg="Could not write %s: %s." % (exc.filename, exc.strerror), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
