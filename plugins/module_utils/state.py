# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One server's state folder and log: the lock, the state files, the pending repairs.

``/var/lib/repobackup/<server>/`` holds ``status.json``, ``last_skip.json``, ``lock``, ``pending/``,
``restored/``, ``scratch/`` and (SFTP) ``staging/``; ``/var/log/repobackup/<server>.log`` the log.
The engine works in the state folder only when nobody less privileged than itself can change it
(privilege.py), and never follows a link at the lock or the log.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import tempfile
import time
from contextlib import contextmanager

from . import privilege
from .clock import iso, utc_now
from .errors import LockHeld, RepoBackupError
from .layout import Paths, atomic_write, dump_json, encode_name, fsync_dir, makedirs, read_json, state_owner


LOCK_POLL = 0.5  # seconds between tries while a run waits for the lock (lock_wait)


class State:
    """The state folder and the log of server ``server``."""

    def __init__(self, paths: Paths, server: str):
        self.server = server
        self.folder = paths.state_dir(server)
        self.log_dir = paths.log_dir
        self.log_file = paths.log_file(server)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    # -- state files ------------------------------------------------------------
    def read_status(self) -> dict:
        try:
            return read_json(self.path("status.json")) or {}
        except (ValueError, OSError):
            return {}

    def read_skip(self) -> dict | None:
        """The last skipped run (``last_skip.json``), or None."""
        return read_json(self.path("last_skip.json")) if os.path.exists(self.path("last_skip.json")) else None

    def write(self, name: str, doc: dict) -> None:
        """Write ``doc`` to the state file ``name`` (which may lie in a subfolder), whole or not at all."""
        privilege.check_folder(self.folder, "The state folder")
        makedirs(self.folder, 0o750)
        owner = state_owner(self.folder)
        makedirs(os.path.dirname(self.path(name)), 0o750, *owner)
        atomic_write(self.path(name), dump_json(doc), 0o640, *owner)

    def pending_repairs(self) -> list:
        """The records in ``pending/`` (read only: the engine repairs them under the lock)."""
        pending = self.path("pending")
        return sorted(os.listdir(pending)) if os.path.isdir(pending) else []

    # -- log --------------------------------------------------------------------
    def log(self, line: str) -> None:
        """One line in the server's log; a log that cannot be written is said on stderr, never fatal."""
        text = "%s server=%s %s\n" % (iso(utc_now()), self.server, line)
        try:
            makedirs(self.log_dir, 0o755)
            fd = privilege.open_nofollow(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except (OSError, RepoBackupError) as exc:
            why = getattr(exc, "strerror", None) or exc
            sys.stderr.write("repobackup: cannot write the log (%s): %s" % (why, text))

    # -- lock -------------------------------------------------------------------
    @contextmanager
    def lock(self, wait: float = 0):
        """The server's lock (flock on ``state/lock``), in a state folder only this user (or root) can change.

        Held by another run: waits up to ``wait`` seconds for it, then LockHeld.  An flock dies with its
        process, so a killed run's lock file never blocks the next run."""
        privilege.check_folder(self.folder, "The state folder")
        makedirs(self.folder, 0o750)
        fd = self._open_lock()
        deadline = time.monotonic() + wait
        try:
            while wait and not _try_flock(fd) and time.monotonic() < deadline:
                time.sleep(min(LOCK_POLL, max(0.0, deadline - time.monotonic())))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                raise LockHeld("Another run of server %s is in progress (%s); try again when it ends."
                               % (self.server, holder)) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, ("pid %d since %s" % (os.getpid(), iso(utc_now()))).encode(), 0)
            except OSError:
                pass  # a lock file opened read-only still locks; only the holder's note is missing
            yield
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        path = self.path("lock")
        try:
            return privilege.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o640)
        except PermissionError:
            pass
        try:  # flock needs no write access: a lock file another user made still serves
            return privilege.open_nofollow(path, os.O_RDONLY)
        except PermissionError:
            pass
        # Not even readable (an older engine's door left it root's, 0640): this folder is ours, so a
        # fresh lock file replaces it; the old one is named in the log.
        fd, tmp = tempfile.mkstemp(prefix=".lock-", dir=self.folder)
        os.fchmod(fd, 0o640)
        os.rename(tmp, path)
        self.log("lock file %s could not be opened by this user and was replaced" % path)
        return fd

    def running(self) -> bool:
        """Whether a run holds the lock now (a shared, non-blocking probe that changes nothing)."""
        try:
            fd = os.open(self.path("lock"), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)


def _try_flock(fd: int) -> bool:
    """Take the lock if it is free (then taking it again below is a no-op); False while another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


class PendingRepairs:
    """state/pending/<encoded repository>.json: what a driver must undo should its run die.

    Drivers that change the server for the length of an export (PostgreSQL's
    ``disconnect``) write a record before the change and clear it after the undo;
    ``Engine.repair_pending`` hands records left behind to ``driver.repair``.
    """

    def __init__(self, folder: str):
        self.folder = folder

    def path(self, name: str) -> str:
        return os.path.join(self.folder, encode_name(name) + ".json")

    def write(self, name: str, record: dict) -> None:
        makedirs(os.path.dirname(self.folder), 0o750)
        owner = state_owner(os.path.dirname(self.folder))
        makedirs(self.folder, 0o750, *owner)
        atomic_write(self.path(name), dump_json(record), 0o640, *owner)

    def clear(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return
        fsync_dir(self.folder)
