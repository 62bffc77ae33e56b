# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's operations on one repository server: run, export, import, verify, status."""

from __future__ import annotations

import dataclasses
import functools
import datetime
import os
import stat
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

from . import notify, privilege, schedule
from .errors import BackupError, FileError, LockHeld, RepoBackupError, RepositoryError, SettingsError
from .kinds import driver_class, kind_names, make_driver
from .clock import iso, utc_now
from .destination import TMP_PREFIX, LocalDestination, open_destination
from .layers import Layers, layered_export, opened_backup, opened_fields, read_identity
from .layout import Paths, encode_name, host_name, human_size, read_json, remove_dead_scratch
from .metrics import write_metrics
from .results import UNSET, Attempt, Drill, RunResult
from .settings import Settings, check_name, check_server_name, from_document, validate_destination
from .state import PendingRepairs, State
from .status import record_crash, record_drills, record_run, run_record
from .status import report as status_report
from .store import LOCAL_FILES, BackupStore, check_data, resolve

SPACE_MARGIN = 1.2  # free space needed at the destination, times the expected backup size
DRILL_NICE = 10  # drills run (and start the client tools) at this lower priority


def make_server(settings: Settings):
    return make_driver(settings.kind, settings.options, wait=settings.disconnect_wait)


def load_settings(server: str, paths: Paths = Paths()) -> Settings:
    path = paths.settings_file(check_server_name(server))
    try:
        doc = read_json(path)
    except ValueError as exc:
        raise SettingsError("Settings file %s is not valid JSON: %s." % (path, exc)) from None
    except PermissionError:
        raise SettingsError("Settings file %s cannot be read by this user." % path) from None
    if doc is None:
        raise SettingsError("Server %r has no settings (%s); apply the autobackup role first." % (server, path))
    return from_document(doc)


def servers_on_host(paths: Paths = Paths()) -> list:
    try:
        names = [n[:-5] for n in os.listdir(paths.settings_dir) if n.endswith(".json")]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _is_server_name(n))  # a stray file there is no server


def _is_server_name(name: str) -> bool:
    try:
        check_server_name(name)
    except SettingsError:
        return False
    return True


def selection(settings: Settings, present: list | None) -> dict:
    """covered / not_covered / missing, given the repositories present (None: unknown).

    ``all`` also leaves out what the driver lists as ``present.not_connectable`` (PostgreSQL
    databases that accept no connection: nothing can back them up)."""
    if settings.repositories == "all":
        if present is None:
            return {"covered": [], "not_covered": [], "missing": []}
        left_out = set(settings.exclude) | set(driver_class(settings.kind).left_out_of_all)
        left_out |= set(getattr(present, "not_connectable", ()))
        return {"covered": [n for n in present if n not in left_out],
                "not_covered": [n for n in present if n in left_out],
                "missing": []}
    named = list(settings.repositories)
    if present is None:
        return {"covered": [], "not_covered": [], "missing": named}
    return {"covered": [n for n in named if n in present],
            "not_covered": [n for n in present if n not in named],
            "missing": [n for n in named if n not in present]}


def _reason(exc: Exception, doing: str = "") -> str:
    """One line for a failure: the engine's own sentence, or the OS error and its file, else what was being done."""
    if isinstance(exc, RepoBackupError):
        return str(exc)
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if getattr(exc, "filename", None):
        return "%s: %s" % (text, exc.filename)
    return "%s %s" % (text, doing) if doing else text


def _real_dir(path: str) -> bool:
    """A folder, and not through a symbolic link."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _real_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class Engine:
    def __init__(self, settings: Settings, paths: Paths = Paths(), host: str | None = None):
        self.settings = settings
        self.paths = paths
        self.host = host or settings.host_id or host_name()
        self.server = make_server(settings)
        self.state = State(paths, settings.server)
        self.state_dir = self.state.folder
        self.store = self._store(settings)
        self.unreachable = ""
        self.server.pending = PendingRepairs(self._state("pending"))
        # Copies a run makes for itself (content hashes): in the state folder, removed by the next run.
        self.server.scratch = self._state("scratch")
        self.notify_budget = notify.BUDGET  # seconds a run spends on notifications at most (tests lower it)
        # The private key of encrypted backups, as text, for this restore, drill or verify only (the doors
        # set it); never written anywhere: age reads it from a pipe (layers.py).
        self.identity = None

    # -- the doors: every operation is done as the run-as user (privilege.py) --------------
    def _as_run_as(self, method, *args, **kwargs):
        return privilege.call_as(self.settings.run_as, method, *args, sftp=self.settings.sftp is not None, **kwargs)

    def run(self, scheduled: bool = False) -> dict:
        """The scheduled job: skips (recorded) when off, suspended or already running."""
        return self._as_run_as(self._run, scheduled)

    def plan(self, names: list | None = None) -> dict:
        """What ``export(names)`` would back up, read only (for check mode)."""
        return self._as_run_as(self._plan, names)

    def export(self, names: list | None = None, destination: str | None = None, skip_unchanged: bool = False) -> dict:
        """Back up ``names`` (any repository present) or every included one, now.

        ``destination`` overrides the configured one; with ``skip_unchanged`` a
        backup whose content equals the last good backup's is not published.
        """
        return self._as_run_as(self._export, names, destination, skip_unchanged)

    def import_backup(self, backup: str | None = None, repository: str | None = None, force: bool = False,
                      latest_of: str | None = None, dry_run: bool = False, create_roles: bool = True) -> dict:
        """Restore a repository from a backup (a path, an sftp:// address, or the latest good one of a repository).

        ``create_roles``: roles the backup needs that the server lacks are created from the globals saved by
        the same run (PostgreSQL); false: they are named in one refusal, before anything changes.
        """
        return self._as_run_as(self._import_backup, backup, repository, force, latest_of, dry_run, create_roles)

    def import_all(self, force: bool = False, dry_run: bool = False, create_roles: bool = True) -> dict:
        """Disaster recovery: the globals first (missing roles, without passwords), then every repository of
        this host and server from its newest good backup; each result reported, one failure stops no other."""
        return self._as_run_as(self._import_all, force, dry_run, create_roles)

    def drill(self, names: list | None = None, scheduled: bool = False) -> dict:
        """Restore drills: each repository's newest good backup (``names``, else every included one)
        restored into scratch (never the live repository), checked, recorded in status; scratch removed.

        ``scheduled``: skipped (recorded) when off, suspended or another run holds the lock.
        Encrypted backups are read with ``identity`` (set by the door), else the drill identity file of the
        settings (``drill_identity_file``), read as the run-as user and only when its mode is 0600 or stricter.
        """
        return self._as_run_as(self._drill, names, scheduled)

    def verify(self, backup: str) -> dict:
        """``verify_backup`` for a backup named by path or by an address on this server's destination."""
        return self._as_run_as(self._verify, backup)

    def destination_problem(self, destination: str | None = None) -> str | None:
        """Why backups cannot be written to ``destination`` (default: the configured one) now, or None."""
        return self._as_run_as(self._destination_problem, destination)

    def status(self, now: datetime.datetime | None = None) -> dict:
        """Everything at a glance; reads only."""
        return self._as_run_as(self._status_closed, now)

    def _store(self, settings: Settings) -> BackupStore:
        return BackupStore(open_destination(settings, self._state("staging")), self.host, settings.server)

    def _store_for(self, destination: str | None) -> BackupStore:
        """The configured store, or with ``destination`` one at that destination instead (checked as a setting;
        an sftp:// one uses this server's SFTP settings, so the configured destination must be sftp:// too)."""
        if not destination:
            return self.store
        other = validate_destination(destination)
        if other.startswith("sftp://") and not self.settings.sftp:
            raise SettingsError("destination %r is an sftp:// URL, but server %s has no SFTP settings (key file, "
                                "host key); configure its destination as sftp:// first." % (other, self.settings.server))
        return self._store(dataclasses.replace(self.settings, destination=other, require_mount=False))

    def close(self) -> None:
        """Drop the destination's connection (SFTP); the next operation opens a new one."""
        self.store.fs.close()

    # -- state files and log (state.py) ------------------------------------------
    def _state(self, name: str) -> str:
        return self.state.path(name)

    def read_status(self) -> dict:
        return self.state.read_status()

    def _write_state(self, name: str, doc: dict) -> None:
        self.state.write(name, doc)

    def log(self, line: str) -> None:
        self.state.log(line)

    def lock(self):
        """The server's lock (flock on ``state/lock``), in a state folder only this user (or root) can change."""
        return self.state.lock()

    # -- what is there ----------------------------------------------------------
    def present(self) -> list | None:
        """The repositories on the server, or None when it cannot be reached (why: ``unreachable``)."""
        try:
            return self.server.list_repositories()
        except RepositoryError as exc:
            self.unreachable = str(exc)
            return None

    def repair_pending(self) -> list:
        """Repairs left by a crashed run (none for kinds whose locks die with the process); then the
        leftovers of a killed run (scratch copies, the kind's own) are removed.  Call under the lock."""
        self._clean_leftovers()
        folder = self._state("pending")
        repaired = []
        for entry in sorted(os.listdir(folder)) if _real_dir(folder) else []:
            path = os.path.join(folder, entry)
            if entry.startswith(".") or not entry.endswith(".json") or not _real_file(path):
                continue  # a temporary file of atomic_write, or nothing of ours
            try:
                record = read_json(path)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                self.log("repair record %s is not readable and was left in place" % path)
                continue
            try:
                self.server.repair(record)
            except RepositoryError as exc:  # e.g. the server is down: the record stays for the next run
                self.log("repair repository=%r failed error=%r" % (record.get("repository", entry), str(exc)))
                continue
            os.unlink(os.path.join(folder, entry))
            repaired.append(record.get("repository", entry))
        return repaired

    def _clean_leftovers(self) -> None:
        scratch = self._state("scratch")
        if os.path.lexists(scratch) and not _real_dir(scratch):
            os.unlink(scratch)
        leftovers = remove_dead_scratch(scratch)
        staging = self._state("staging")  # SFTP: exports before upload, downloads for import and verify
        if _real_dir(staging):
            leftovers += remove_dead_scratch(staging, TMP_PREFIX)
        for path in leftovers:
            self.log("removed %s, left by a run that was killed" % path)
        for path in self.server.remove_leftovers():
            self.log("removed %s, left by a run that was killed" % path)
        target = self.settings.drill_target()
        if target:  # a drill cluster: scratch a killed drill left there
            try:
                for path in self._drill_server(target).remove_leftovers():
                    self.log("removed %s on the drill target, left by a drill that was killed" % path)
            except RepoBackupError as exc:  # unreachable now: the next drill tries again
                self.log("leftovers on the drill target not checked: %s" % exc)

    def _drill_server(self, target: dict):
        """A driver for the drill target (the kind's drill options over the server's own)."""
        driver = make_driver(self.settings.kind, dict(self.settings.options, **target), wait=self.settings.disconnect_wait)
        driver.scratch = self.server.scratch
        return driver

    # -- operations -------------------------------------------------------------
    def skip_reason(self, now: datetime.datetime | None = None) -> str | None:
        if not self.settings.enabled:
            return "auto-backup is off"
        resume = self.settings.suspended_until_datetime()
        if resume is not None and (now or datetime.datetime.now()) < resume:
            return "suspended until %s" % self.settings.suspended_until
        return None

    def record_skip(self, reason: str, trigger: str) -> dict:
        record = {"time": iso(utc_now()), "reason": reason, "trigger": trigger}
        try:
            self._write_state("last_skip.json", record)
        except (OSError, RepoBackupError):
            pass
        self.log("%s result=skipped reason=%r" % (trigger, reason))
        return RunResult.skipped(reason).to_dict()

    def _run(self, scheduled: bool) -> dict:
        trigger = "scheduled" if scheduled else "run"
        started = utc_now()
        notifier = self._notifier()
        reason = self.skip_reason()
        if reason:
            return self._tell(notifier, self.record_skip(reason, trigger), trigger, started)
        try:
            with self.state.lock(wait=self.settings.lock_wait):  # lock_wait: a run in progress may end first
                self._tell(notifier, {"result": "start"}, trigger, started)
                done = self._export_locked(None, trigger).to_dict()
        except LockHeld:
            done = self.record_skip("already running", trigger)
        except Exception as exc:  # pylint: disable=broad-except
            done = self._crashed(started, trigger, exc).to_dict()
        finally:
            self.close()
        return self._tell(notifier, done, trigger, started)

    def _notifier(self) -> notify.Notifier:
        """This run's notification targets (notify.py); none when their file is missing or unusable (logged)."""
        try:
            targets = notify.load(self.paths.settings_dir, self.settings.server)
        except (ValueError, OSError, RepoBackupError) as exc:
            self.log("notifications not sent: %s cannot be used: %s" % (
                notify.notify_file(self.paths.settings_dir, self.settings.server), _reason(exc)))
            targets = []
        return notify.Notifier(targets, budget=self.notify_budget)

    def _tell(self, notifier: notify.Notifier, done: dict, trigger: str, started: datetime.datetime) -> dict:
        """Send the event of ``done`` (a run's result, or {"result": "start"}); never fails the run."""
        event = {"start": "start", "ok": "success", "skipped": "skipped"}.get(done["result"], "failure")
        if not any(event in target["events"] for target in notifier.targets):
            return done
        try:
            upcoming = schedule.next_run(self.settings)
            payload = {"host": self.host, "server": self.settings.server, "kind": self.settings.kind,
                       "trigger": trigger, "result": done["result"], "error": done.get("error"),
                       "reason": done.get("reason"), "start": iso(started),
                       "duration_seconds": round((utc_now() - started).total_seconds(), 3),
                       "next_run": upcoming.isoformat(timespec="minutes") if upcoming else None,
                       "repositories": {name: {"result": r.get("result"), "error": r.get("error")}
                                        for name, r in (done.get("repositories") or {}).items()}}
            text = notify.summary(done, self.settings.server, self.host, trigger) if event != "start" else \
                "repobackup %s: server %s on %s: started" % (trigger, self.settings.server, self.host)
            text += "\n\n" + notify.log_tail(self.state.log_file)
            for outcome in notifier.send(event, text, payload):
                self.log("notify event=%s target=%s style=%s result=%s%s" % (
                    event, outcome["target"], outcome["style"], outcome["outcome"],
                    " error=%r" % outcome["error"] if outcome.get("error") else ""))
            self._write_state("last_notify.json", {"time": iso(utc_now()), "event": event,
                                                   "targets": notifier.outcomes})
        except Exception as exc:  # pylint: disable=broad-except  # a notification never fails a backup
            self.log("notify event=%s not completed: %s" % (event, _reason(exc)))
        return done

    def _crashed(self, started: datetime.datetime, trigger: str, exc: Exception) -> RunResult:
        """Whatever stopped a run (a refused folder, a bug): one log line and a failed status, never silence."""
        if isinstance(exc, RepoBackupError):
            error = str(exc)
        else:
            where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            error = "internal error %s: %s%s" % (type(exc).__name__, _reason(exc).rstrip(": "),
                                                 " (%s:%d)" % (os.path.basename(where[0].filename), where[0].lineno)
                                                 if where else "")
        self.log("%s result=failed error=%r" % (trigger, error))
        run = run_record(started, trigger, "failed", error, {}, [])
        try:
            self._write_state("status.json", record_crash(self.read_status(), self.settings.server, run))
        except (OSError, RepoBackupError) as write_error:
            self.log("%s status not written: %s" % (trigger, _reason(write_error)))
        return RunResult.crashed(error)

    def _plan(self, names: list | None) -> dict:
        present = self.present()
        if names:
            wanted = [check_name("repository", n) for n in dict.fromkeys(names)]
        else:
            chosen = selection(self.settings, present)
            wanted = chosen["covered"] + chosen["missing"]
        known = present or []
        return {"export": [n for n in wanted if n in known], "missing": [n for n in wanted if n not in known],
                "reachable": present is not None}

    def _export(self, names: list | None, destination: str | None, skip_unchanged: bool) -> dict:
        for name in names or []:
            check_name("repository", name)
        store = self._store_for(destination)
        started = utc_now()
        try:
            with self.lock():
                return self._export_locked(names, "export", store, skip_unchanged).to_dict()
        except LockHeld:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            return self._crashed(started, "export", exc).to_dict()
        finally:
            store.fs.close()

    def _export_locked(self, names: list | None, trigger: str, store: BackupStore | None = None,
                       skip_unchanged: bool = False) -> RunResult:
        started = utc_now()
        repaired = self.repair_pending()
        present = self.present()
        if names:
            wanted = list(dict.fromkeys(names))
        else:
            chosen = selection(self.settings, present)
            wanted = chosen["covered"] + chosen["missing"]
        store = store or self.store
        results = {}
        globals_result = None
        if present is None:
            unreachable = "repository server unreachable: %s" % self.unreachable
            if self.server.has_globals:
                globals_result = self._failure(utc_now(), 0.0, unreachable)
            if not wanted:
                return self._finish(started, trigger, results, repaired, unreachable, globals_result, store)
        todo = []
        unusable = self._unusable(store) if present is not None and wanted else None
        for name in wanted:
            if present is None:
                results[name] = self._failure(utc_now(), 0.0, unreachable)
            elif unusable and name in present:
                results[name] = self._failure(utc_now(), 0.0, unusable, tried=True)
            elif name not in present:
                results[name] = self._failure(utc_now(), 0.0, "repository %r does not exist" % name)
            else:
                results[name] = None  # keeps the order of ``wanted``
                todo.append(name)
        workers = min(self.settings.workers(), len(todo))
        if workers > 1:
            # Each repository has its own folder and export; status and log are written after.
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="repobackup") as pool:
                futures = {name: pool.submit(self._export_one, name, store, skip_unchanged)
                           for name in todo}
                for name, future in futures.items():
                    results[name] = future.result()
        else:
            for name in todo:
                results[name] = self._export_one(name, store, skip_unchanged)
        if present is not None and self.server.has_globals:
            # PostgreSQL: roles and tablespaces, every run, after the databases (a failure here
            # never holds a database export back).
            globals_result = self._failure(utc_now(), 0.0, "globals not saved: " + unusable, tried=True) \
                if unusable else self._export_globals(store)
        return self._finish(started, trigger, results, repaired, unusable, globals_result, store,
                            usable=not unusable)

    @staticmethod
    def _unusable(store: BackupStore) -> str | None:
        """Why the destination cannot take backups now (asked once per run, not per repository), or None."""
        try:
            store.fs.check_ready()
        except RepoBackupError as exc:
            return str(exc)
        return None

    def _export_globals(self, store: BackupStore) -> Attempt:
        """Save the cluster's globals (no role passwords) in the reserved globals folder."""
        start = utc_now()
        t0 = time.monotonic()
        meta = {"kind": self.settings.kind, "content": "globals"}
        try:
            meta["server_version"] = self.server.version()
            layers = Layers.for_export(self.settings, compressible=True)
            produce = self.server.export_globals
            if layers:
                produce = layered_export(layers, produce, self.server.scratch, ".sql")
            with store.one_reading():
                manifest = store.publish(None, layers.suffix(".sql"), produce, meta)
                store.prune(None, self.settings.retention(), verified={manifest["manifest_path"]})
        except (RepoBackupError, OSError) as exc:
            doing = "while writing the globals to %s" % store.address(store.repo_dir(None))
            return self._failure(start, time.monotonic() - t0, "globals not saved: " + _reason(exc, doing),
                                 tried=True)
        return Attempt.globals_published(store, manifest, start, time.monotonic() - t0)

    @staticmethod
    def _failure(start: datetime.datetime, duration: float, error: str, tried: bool = False) -> Attempt:
        return Attempt.failed(start, duration, error, tried)

    def last_good(self, name: str, store: BackupStore | None = None) -> dict | None:
        """The newest backup of ``name`` whose data matches its manifest."""
        store = store or self.store
        for manifest in reversed(store.backups(name)):
            if store.is_good(manifest):
                return manifest
        return None

    def check_space(self, name: str, store: BackupStore, newest: dict | None) -> None:
        """Refuse to start unless the destination has SPACE_MARGIN times the expected size free.

        The expected size is the last backup's, else the repository's own size.  A manifest is
        untrusted input: when the size it claims would refuse the export, the repository's own
        size is asked, and the smaller one decides.  Where the free space is unknown (a server
        without the statvfs extension), nothing is refused.
        """
        if newest is None:
            problem = self._space_problem(store, self.server.size_estimate(name), "repository")
        else:
            problem = self._space_problem(store, newest["size"], "last backup")
            if problem:
                own = self.server.size_estimate(name)
                if own < newest["size"]:
                    problem = self._space_problem(store, own, "repository")
        if problem:
            raise BackupError(problem)

    @staticmethod
    def _space_problem(store: BackupStore, expected: int, what: str) -> str | None:
        needed = int(expected * SPACE_MARGIN)
        places = [(store.address(store.fs.root), store.fs.free_space())]
        if store.fs.kind == "sftp":  # the export is written here first, then uploaded
            staging = store.fs.staging if os.path.isdir(store.fs.staging) else os.path.dirname(store.fs.staging)
            places.append((store.fs.staging, LocalDestination(staging).free_space()))
        for where, free in places:
            if free is not None and free < needed:
                return ("Not enough free space at %s: %s free, %s needed (%.1f x the %s of %s); nothing was "
                        "written." % (where, human_size(free), human_size(needed), SPACE_MARGIN, what,
                                      human_size(expected)))
        return None

    def _export_one(self, name: str, store: BackupStore, skip_unchanged: bool) -> Attempt:
        start = utc_now()
        t0 = time.monotonic()
        try:
            with store.one_reading():  # each manifest read once: sequence, free space, retention
                meta = {"kind": self.settings.kind, "server_version": self.server.version(),
                        "in_use": self.settings.in_use}
                self.check_space(name, store, store.newest(name))
                last = self.last_good(name, store) if skip_unchanged else None
                same_as = self._content_of_backup(name, store, last) if last is not None else None
                layers = Layers.for_export(self.settings, not self.server.data_compressed)
                produce = functools.partial(self._export_repository, name)
                content_of = self.server.content_hash if skip_unchanged else None
                if layers:  # compressed or encrypted: the plaintext stays in the private scratch (layers.py)
                    produce = layered_export(layers, produce, self.server.scratch, self.server.data_suffix,
                                             self.server.stream_check(), content_of)
                    content_of = None
                manifest = store.publish(name, layers.suffix(self.server.data_suffix), produce, meta,
                                         content_of=content_of, same_as=same_as)
                if not manifest.get("unchanged"):
                    # Only after this backup is published and verified (size and sha256 on write).
                    store.prune(name, self.settings.retention(), verified={manifest["manifest_path"]})
        except (RepoBackupError, OSError) as exc:
            doing = "while writing the backup of %r to %s%s" % (name, store.address(store.repo_dir(name)), (
                " (staged in %s)" % store.fs.staging) if store.fs.kind == "sftp" else "")
            return self._failure(start, time.monotonic() - t0, _reason(exc, doing), tried=True)
        if manifest.get("unchanged"):
            manifest = dict(last, content_sha256=manifest["content_sha256"])
            result = "unchanged"
        else:
            result = "ok"
        skipped = store.rejected_in(name)  # corrupt backups seen on the way: reported, never fatal
        for why in skipped:
            self.log("repository=%r corrupt backup skipped: %s" % (name, why))
        return Attempt.published(store, manifest, start, time.monotonic() - t0, result, skipped)

    def _export_repository(self, name: str, target: str) -> dict:
        return self.server.export(name, target, self.settings.in_use)

    def _content_of_backup(self, name: str, store: BackupStore, last: dict) -> str | None:
        """The content hash of backup ``last``: its manifest's, else (sealed) the one this host recorded when it
        wrote it, else computed from its data when that is plaintext; None when it cannot be known here."""
        if last.get("content_sha256"):
            return last["content_sha256"]
        if Layers.of(last):
            entry = (self.read_status().get("repositories") or {}).get(name) or {}
            recorded = entry.get("last_success") or {}
            return recorded.get("content_sha256") if recorded.get("sha256") == last["sha256"] else None
        with store.fs.fetch(last["path"]) as local:
            return self.server.content_hash(local)

    def _finish(self, started, trigger, results, repaired, error, globals_result=None, store=None,
                usable=None) -> RunResult:
        """Count the run in status.json, the log and the metrics file; ``results``: name -> Attempt."""
        store = store or self.store
        failed = [n for n, r in results.items() if r.result == "failed"]
        globals_failed = globals_result is not None and globals_result.result == "failed"
        if error or (failed and len(failed) == len(results)):
            result = "failed"
        elif failed or globals_failed:
            result = "partial"  # a run without the globals cannot rebuild the owners on a fresh server
        else:
            result = "ok"
        run = run_record(started, trigger, result, error, results, repaired, globals_result)
        status = record_run(self.read_status(), self.settings.server, run, results, globals_result, store.fs.kind)
        if usable is not None and self.settings.metrics_file:  # for the metrics file, which drills rewrite too
            status["destination_state"] = {"kind": store.fs.kind, "usable": usable,
                                           "free": store.fs.free_space() if usable else None}
        self._write_state("status.json", status)
        self.log("%s result=%s ok=%d failed=%d%s" % (
            trigger, result, len(results) - len(failed), len(failed), " error=%r" % error if error else ""))
        for name in failed:
            self.log("%s repository=%r error=%r" % (trigger, name, results[name].error))
        if globals_failed:
            self.log("%s globals error=%r" % (trigger, globals_result.error))
        if self.settings.metrics_file:
            self._write_metrics(status)
        return RunResult(result=result, error=error, repositories=results, repaired=repaired,
                         globals=UNSET if globals_result is None else globals_result)

    def _write_metrics(self, status: dict) -> None:
        """The metrics file from ``status`` (as status.json holds it): repositories, drills, the destination."""
        try:
            write_metrics(self.settings.metrics_file, self.settings.server, status.get("repositories", {}),
                          status.get("destination_state"), schedule.max_age(self.settings).total_seconds())
        except OSError as exc:
            self.log("metrics file %s not written: %s" % (self.settings.metrics_file, exc.strerror))

    # -- restore drills -----------------------------------------------------------
    def _drill(self, names: list | None, scheduled: bool) -> dict:
        trigger = "scheduled drill" if scheduled else "drill"
        for name in names or []:
            check_name("repository", name)
        if scheduled:
            reason = self.skip_reason()
            if reason:
                return self.record_skip(reason, trigger)
        started = utc_now()
        try:
            with self.lock(), _niced(DRILL_NICE):
                return self._drill_locked(names, trigger).to_dict()
        except LockHeld:
            if scheduled:
                return self.record_skip("already running", trigger)
            raise
        except Exception as exc:  # pylint: disable=broad-except
            return self._drill_crashed(started, trigger, exc).to_dict()
        finally:
            self.close()

    def _drill_locked(self, names: list | None, trigger: str) -> RunResult:
        """Under the lock: leftovers of killed runs and drills first, then one repository after the other
        (a database server does a restore's work itself: one at a time limits the load)."""
        started = utc_now()
        repaired = self.repair_pending()
        target = self.settings.drill_target()
        present = self.present()
        if names:
            wanted = list(dict.fromkeys(names))
        elif present is not None:
            chosen = selection(self.settings, present)
            wanted = chosen["covered"] + chosen["missing"]
        else:  # the server is down: its backups can still be drilled (elsewhere, or they fail by name)
            wanted = sorted(self.read_status().get("repositories", {}))
        identity = self.identity
        kept = self.settings.drill.get("identity_file")
        if identity is None and kept:
            try:
                identity = read_identity(kept, private=True)
            except BackupError as exc:
                identity = exc  # fails the drills of encrypted backups only, with this sentence
        results = {name: self._drill_one(name, target, identity) for name in wanted}
        return self._finish_drill(started, trigger, results, repaired)

    def _drill_one(self, name: str, target: dict | None, identity) -> Drill:
        start = utc_now()
        t0 = time.monotonic()
        where = self._drill_where(target)
        skipped, unchecked = [], []
        manifest = None
        try:
            newest = self._newest_own(name)
            if newest is None:
                raise BackupError("Repository %r has no backup of this host in %s."
                                  % (name, self.store.address(self.store.base)))
            unchecked = self._drill_space(name, newest, target, identity)
            with self._fetched(None, name, check=self._importable, skipped=skipped) as (store, manifest, stored):
                manifest = dict(manifest, path=store.address(manifest["path"]),
                                manifest_path=store.address(manifest["manifest_path"]))
                if isinstance(identity, BackupError) and Layers.of(manifest).encrypted:
                    raise identity
                key = identity if isinstance(identity, str) else None
                with opened_backup(manifest, stored, key, self.server.scratch) as (opened, local):
                    checks = self.server.check_restorable(local, dict(opened, path=local), target)
        except (RepoBackupError, OSError) as exc:
            drill = Drill.failed(start, time.monotonic() - t0, _reason(exc, "in the drill of %r" % name), where,
                                 manifest, skipped, unchecked)
        else:
            drill = Drill.passed(start, time.monotonic() - t0, list(checks), where, manifest, skipped, unchecked)
        for note in unchecked:
            self.log("drill repository=%r %s" % (name, note))
        return drill

    def _newest_own(self, name: str) -> dict | None:
        """The newest backup of ``name`` this host wrote (whatever its data), or None."""
        for manifest in reversed(self.store.backups(check_name("repository", name))):
            if manifest.get("host") == self.host:
                return manifest
        return None

    def _drill_where(self, target: dict | None) -> str:
        if not target:
            return "scratch on the server"
        shown = ", ".join("%s %s" % (key, value) for key, value in sorted(target.items()) if value not in (None, ""))
        return "drill target (%s)" % shown

    def _drill_space(self, name: str, newest: dict, target: dict | None, identity=None) -> list:
        """Refuse to start without room for the restore; the places whose free space cannot be asked
        (said in the result and the log).  A compressed or encrypted backup is decoded into the private
        scratch folder first, and restores as its plaintext's size (read from its sealed fields with
        ``identity``; the stored size when it cannot be known here)."""
        size = newest["size"]
        places = []
        if self.store.fs.kind == "sftp":  # the backup is downloaded into the staging folder first
            staging = self.store.fs.staging
            places.append((staging, LocalDestination(staging if _real_dir(staging) else self.state_dir).free_space(),
                           size))
        if Layers.of(newest):
            size = self._plain_size(newest, identity) or size
            decode_at = self.server.scratch
            places.append((decode_at, LocalDestination(decode_at if _real_dir(decode_at) else self.state_dir)
                           .free_space(), size))
        server = self._drill_server(target) if target else self.server
        places += server.scratch_space(name, size)
        needs, free_at = {}, {}  # a place named twice (SQLite decodes and restores in one scratch): the sum
        for where, free, needed in places:
            needs[where] = needs.get(where, 0) + needed
            free_at[where] = free
        unchecked = []
        for where, needed in needs.items():
            free = free_at[where]
            if free is None:
                unchecked.append("free space not checked at %s (it cannot be asked from here)" % where)
            elif free < int(needed * SPACE_MARGIN):
                raise BackupError("Not enough free space for the drill at %s: %s free, %s needed (%.1f x %s); "
                                  "nothing was restored." % (where, human_size(free), human_size(int(
                                      needed * SPACE_MARGIN)), SPACE_MARGIN, human_size(needed)))
        return unchecked

    def _plain_size(self, manifest: dict, identity) -> int | None:
        """The size of a layered backup's plaintext, or None when it cannot be read here (no key)."""
        try:
            where = self.store.address(manifest["manifest_path"])
            opened = opened_fields(dict(manifest, manifest_path=where),
                                   identity if isinstance(identity, str) else None)
        except RepoBackupError:
            return None  # the drill names why when it opens the backup
        size = opened.get("plain_size")
        return size if isinstance(size, int) and size >= 0 else None

    def _finish_drill(self, started, trigger: str, results: dict, repaired: list) -> RunResult:
        failed = [n for n, r in results.items() if r.result == "failed"]
        result = "failed" if failed and len(failed) == len(results) else "partial" if failed else "ok"
        run = run_record(started, trigger, result, None, results, repaired)
        status = record_drills(self.read_status(), self.settings.server, run, results)
        self._write_state("status.json", status)
        self.log("%s result=%s ok=%d failed=%d" % (trigger, result, len(results) - len(failed), len(failed)))
        for name, drill in results.items():
            if drill.result == "failed":
                self.log("%s repository=%r backup=%r error=%r" % (trigger, name, drill.backup, drill.error))
        if self.settings.metrics_file:
            self._write_metrics(status)
        return RunResult(result=result, repositories=results, repaired=repaired)

    def _drill_crashed(self, started: datetime.datetime, trigger: str, exc: Exception) -> RunResult:
        """Whatever stopped a drill before any result (a refused folder, a bug): logged and in status."""
        error = _reason(exc) if isinstance(exc, RepoBackupError) else "internal error %s: %s" % (
            type(exc).__name__, _reason(exc))
        self.log("%s result=failed error=%r" % (trigger, error))
        run = run_record(started, trigger, "failed", error, {}, [])
        try:
            self._write_state("status.json", record_drills(self.read_status(), self.settings.server, run, {}))
        except (OSError, RepoBackupError) as write_error:
            self.log("%s status not written: %s" % (trigger, _reason(write_error)))
        return RunResult.crashed(error)

    def _import_backup(self, backup, repository, force, latest_of, dry_run, create_roles=True) -> dict:
        try:
            return self._import(backup, repository, force, latest_of, dry_run, create_roles)
        finally:
            self.close()

    def _import_all(self, force: bool, dry_run: bool, create_roles: bool) -> dict:
        try:
            done = {"globals": self._import_globals(dry_run, create_roles), "repositories": {}}
            for name in self.store.repositories():
                try:
                    found = self._import(None, None, force, name, dry_run, create_roles)
                    done["repositories"][name] = dict(found, result="ok" if found["changed"] else "unchanged")
                except (RepoBackupError, OSError) as exc:
                    done["repositories"][name] = {"repository": name, "result": "failed", "error": _reason(exc)}
                    self.log("import repository=%r result=failed error=%r" % (name, _reason(exc)))
        finally:
            self.close()
        parts = [r["result"] for r in done["repositories"].values()] + [done["globals"]["result"]]
        failed = parts.count("failed")
        done["result"] = "ok" if not failed else "failed" if failed == len(parts) else "partial"
        done["changed"] = bool(done["globals"].get("roles_created")) or any(
            r.get("changed") for r in done["repositories"].values())
        return done

    def _import_globals(self, dry_run: bool, create_roles: bool) -> dict:
        """The roles of the newest good globals backup that the server lacks, created without passwords."""
        if not self.server.has_globals:
            return {"result": "none"}
        saved = [m for m in reversed(self.store.backups(None)) if m.get("host") == self.host]
        chosen = next((m for m in saved if self.store.is_good(m)), None)
        if chosen is None:
            return {"result": "failed", "error": "server %s has no good globals backup in %s"
                    % (self.settings.server, self.store.address(self.store.repo_dir(None)))}
        where = self.store.address(chosen["manifest_path"])
        if not create_roles:
            return {"result": "skipped", "backup": where, "roles_created": []}
        try:
            with ExitStack() as stack, self.store.fs.fetch(chosen["path"]) as stored:
                check_data(dict(chosen, path=stored, manifest_path=where))
                local = stack.enter_context(opened_backup(dict(chosen, manifest_path=where), stored, self.identity,
                                                          self.server.scratch))[1]
                if dry_run:
                    created = self.server.restore_globals(local, dry_run=True)
                else:
                    with self.lock():
                        created = self.server.restore_globals(local)
        except (RepoBackupError, OSError) as exc:
            return {"result": "failed", "backup": where, "error": _reason(exc)}
        self.log("import globals from=%r roles_created=%r" % (where, created))
        return {"result": "ok", "backup": where, "roles_created": created}

    @contextmanager
    def _globals_of(self, store: BackupStore, manifest: dict):
        """A local copy of the globals saved by the run that wrote ``manifest`` (the first good globals backup
        started after it ended; else the newest one before), or None when there is none."""
        saved = store.globals_beside(manifest)
        ended = manifest.get("end", manifest["start"])
        order = [g for g in saved if g["start"] >= ended] + [g for g in reversed(saved) if g["start"] < ended]
        chosen = next((g for g in order if store.is_good(g)), None)  # checksums read only until one passes
        if chosen is None:
            yield None
            return
        with store.fs.fetch(chosen["path"]) as local:
            where = store.address(chosen["manifest_path"])
            check_data(dict(chosen, path=local, manifest_path=where))
            with opened_backup(dict(chosen, manifest_path=where), local, self.identity, self.server.scratch) \
                    as (dummy, plain):
                yield plain

    def _candidates(self, backup: str | None, latest_of: str | None) -> tuple:
        """(store, manifests newest first) for a backup named by path or sftp:// address, or a repository's."""
        if latest_of:  # only this host's own backups: another host's is imported by path only
            return self.store, [m for m in reversed(self.store.backups(check_name("repository", latest_of)))
                                if m.get("host") == self.host]
        if not backup:
            raise BackupError("Name a backup file or a repository whose latest good backup to import.")
        if not backup.startswith("sftp://"):
            return LOCAL_FILES, [LOCAL_FILES.resolve(os.path.abspath(backup))]
        if self.store.fs.kind != "sftp":
            raise BackupError("%s is an sftp:// address, but server %s's destination is %s."
                              % (backup, self.settings.server, self.settings.destination))
        return self.store, [self.store.resolve(self.store.fs.path_of(backup))]

    @contextmanager
    def _fetched(self, backup: str | None, latest_of: str | None = None, check=check_data,
                 skipped: list | None = None):
        """(store, manifest, local path) of a backup whose data ``check`` accepted on this host.

        For ``latest_of``, the newest backup that passes; an SFTP backup is downloaded once and
        checked here, and the copy removed afterwards.  ``skipped`` (a list) gets the reason of each
        newer backup passed over.
        """
        store, candidates = self._candidates(backup, latest_of)
        for manifest in candidates:
            with ExitStack() as stack:
                local = None
                try:
                    local = stack.enter_context(store.fs.fetch(manifest["path"]))
                    check(dict(manifest, path=local, manifest_path=store.address(manifest["manifest_path"])))
                except (RepoBackupError, OSError) as exc:
                    if latest_of:
                        if skipped is not None:
                            skipped.append(_reason(exc, "reading %s" % store.address(manifest["path"])))
                        continue  # a corrupt, incomplete or unreadable newer backup: try the one before
                    if isinstance(exc, FileError) and local is not None and exc.file == local:
                        raise exc.named(store.address(manifest["path"])) from None  # the copy's original
                    raise
                yield store, manifest, local
                return
        raise BackupError("Repository %r has no good backup in %s." % (latest_of, self.store.address(self.store.base)))

    def _verify(self, backup: str) -> dict:
        try:
            with self._fetched(backup, check=verify_manifest) as (store, manifest, local):
                where = store.address(manifest["manifest_path"])
                return verify_contents(dict(manifest, manifest_path=where), local, self.identity, self.server.scratch)
        finally:
            self.close()

    def _destination_problem(self, destination: str | None) -> str | None:
        store = self.store
        try:
            store = self._store_for(destination)
            store.fs.check_ready()
        except RepoBackupError as exc:
            return str(exc)
        finally:
            store.fs.close()
        return None

    def _import(self, backup, repository, force, latest_of, dry_run, create_roles=True) -> dict:
        with self._fetched(backup, latest_of, check=self._importable) as (store, stored, local), \
                ExitStack() as decoded:
            where = store.address(stored["manifest_path"])
            self.server.check_readable(dict(stored, manifest_path=where))  # before anything is read or changed
            manifest, local = decoded.enter_context(opened_backup(dict(stored, manifest_path=where), local,
                                                                  self.identity, self.server.scratch))
            target = check_name("repository", repository or manifest["repository"])
            wanted = manifest.get("content_sha256") or self.server.content_hash(local)
            exists = self.server.exists(target)
            current = self.server.live_content_hash(target) if exists else None
            done = {"repository": target, "backup": where, "sha256": manifest["sha256"],
                    "changed": current != wanted, "replaced": exists and current != wanted,
                    "before": {"exists": exists, "content_sha256": current},
                    "after": {"backup": where, "start": manifest["start"], "content_sha256": wanted}}
            if not done["changed"]:
                return done
            if exists and not force:
                raise RepositoryError("Repository %r exists; add --force (force: true) to replace it." % target)
            with ExitStack() as stack:
                globals_file = None
                if self.server.has_globals and create_roles and manifest.get("database"):
                    globals_file = stack.enter_context(self._globals_of(store, stored))
                if dry_run:  # what the restore would refuse or create, read only
                    done.update(self.server.plan_restore(dict(manifest, manifest_path=where), target,
                                                         globals_file=globals_file, create_roles=create_roles))
                    return done
                stack.enter_context(self.lock())
                self.repair_pending()
                done.update(self.server.restore_backup(local, target, dict(manifest, manifest_path=where),
                                                       globals_file=globals_file, create_roles=create_roles))
        record = {"time": iso(utc_now()), "backup": where, "sha256": manifest["sha256"],
                  "content_sha256": wanted}
        self._write_state(os.path.join("restored", encode_name(target) + ".json"), record)
        self.log("import repository=%r from=%r result=ok" % (target, where))
        return done

    def _importable(self, manifest: dict) -> None:
        """A repository backup of this server's kind whose data (at ``manifest["path"]``) is whole."""
        if manifest.get("content") == "globals":
            raise BackupError("Backup %s holds the server's globals (roles, tablespaces), not a repository; "
                              "apply it with psql." % manifest["manifest_path"])
        if manifest["kind"] != self.settings.kind:
            raise BackupError("Backup %s is of kind %r, but server %s is of kind %r."
                              % (manifest["manifest_path"], manifest["kind"], self.settings.server, self.settings.kind))
        check_data(manifest)

    # -- status -----------------------------------------------------------------
    def _status_closed(self, now: datetime.datetime | None) -> dict:
        try:
            return self._status(now)
        finally:
            self.close()

    def _status(self, now: datetime.datetime | None) -> dict:
        present = self.present()
        return status_report(settings=self.settings, host=self.host, store=self.store, state=self.state,
                             present=present, chosen=selection(self.settings, present),
                             not_connectable=list(getattr(present, "not_connectable", [])),
                             skipping=self.skip_reason(now) is not None,
                             settings_file=self.paths.settings_file(self.settings.server), now=now)


@contextmanager
def _niced(increment: int):
    """This thread at a lower priority for the block (on Linux the nice value is per thread, and the client
    programs it starts inherit it); put back afterwards where allowed (root; a plain user cannot raise it
    again, and its process, the host command, ends soon)."""
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, before + increment))
    except OSError:
        before = None
    try:
        yield
    finally:
        if before is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, before)
            except OSError:
                pass


def verify_backup(backup: str, identity: str | None = None) -> dict:
    """Check manifest, size, checksum and the kind's own integrity check of a backup on this host; an
    encrypted one's content only with ``identity`` (its private key's text)."""
    manifest = verify_manifest(resolve(backup))
    return verify_contents(manifest, manifest["path"], identity, None)


def verify_manifest(manifest: dict) -> dict:
    """Check a backup's data on this host (at ``manifest["path"]``): size, sha256 and, for a plain backup, the
    kind's own check (a layered one's content: ``verify_contents``)."""
    if manifest["kind"] not in kind_names():
        raise BackupError("Backup %s is of kind %r, which this engine does not know."
                          % (manifest["manifest_path"], manifest["kind"]))
    check_data(manifest)
    if manifest.get("content") != "globals" and not Layers.of(manifest):  # globals: an SQL script
        driver_class(manifest["kind"]).verify_file(manifest["path"])
    return manifest


def verify_contents(manifest: dict, stored: str, identity: str | None, scratch: str | None) -> dict:
    """A layered backup whose stored bytes passed: decoded (with ``identity`` when encrypted), the plaintext's
    sha256 compared, and the kind's own check; ``contents_checked`` says whether its content was read (an
    encrypted backup without a key: only its stored bytes)."""
    layers = Layers.of(manifest)
    if not layers:
        return dict(manifest, contents_checked=True)
    if layers.encrypted and not identity:
        return dict(manifest, contents_checked=False)
    with opened_backup(manifest, stored, identity, scratch) as (opened, plain):
        if manifest.get("content") != "globals":
            driver_class(manifest["kind"]).verify_file(plain)
    return dict(manifest, contents_checked=True)


__all__ = ["Engine", "load_settings", "servers_on_host", "selection", "verify_backup", "encode_name"]
