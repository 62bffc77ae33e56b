# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who the engine acts as, and the folders it agrees to work in.

One rule: **the engine works as the run-as user, and only in folders that
nobody less privileged than it can change.**

- ``call_as(user, fn)``: a process started as root (a module, the back-up-now
  playbook with become, an administrator typing ``repobackup``) runs ``fn`` in
  a child that has become ``user`` first, exactly as cron starts the job.  So
  what the run-as user plants in its own folders (a ``lock`` or ``pending``
  symlink, a destination folder pointed elsewhere) can only ever reach what
  that user could reach anyway; files made by a door belong to that user, and
  PostgreSQL sees the same role as for the scheduled job (peer
  authentication), never ``root``.
- ``check_folder(path)``: before working in a folder (state, SQLite folder,
  destination, staging), the engine refuses it when a user other than itself
  or root owns it or any folder above it, or when it can be written by others
  (group or world when the engine is root; world without the sticky bit
  otherwise).  A root engine therefore never works where another user can
  plant a symbolic link, and says so in one sentence.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import importlib
import json
import os
import pwd
import signal
import stat

from . import errors
from .errors import RepoBackupError, SettingsError

# Engine modules and the standard library modules they import lazily: a child
# that became another user may no longer be able to read the files they come from
# (Ansible's module payload lies in root's private temporary folder).
_ENGINE_MODULES = ("clock", "layout", "layers", "sftp_url", "settings", "schedule", "destination", "retention", "store",
                   "metrics", "notify", "report", "results", "state", "status", "facts", "kinds", "kind_sqlite",
                   "pg_database", "kind_postgresql", "git_backup", "kind_git",
                   "sftp", "engine", "declared")
_STDLIB = ("_strptime", "urllib.parse", "encodings.idna", "encodings.ascii", "encodings.latin_1", "json.decoder",
           "json.encoder", "concurrent.futures.thread", "sqlite3", "hashlib", "shutil", "subprocess", "tempfile",
           "random", "socket", "traceback", "tarfile", "gzip", "base64", "binascii", "struct")
_PR_SET_PDEATHSIG = 1


def user_ids(user: str) -> tuple:
    """(uid, gid, home) of ``user``, or one sentence saying it does not exist."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SettingsError("run_as user %r does not exist on this host." % user) from None
    return entry.pw_uid, entry.pw_gid, entry.pw_dir


def must_switch(user: str) -> bool:
    """True when this process is root and ``user`` is not: the work must be done as ``user``."""
    return os.geteuid() == 0 and user_ids(user)[0] != 0


def preload(sftp: bool = False) -> None:
    for name in _ENGINE_MODULES:
        try:  # a module's payload carries only the engine files that module imports
            importlib.import_module("." + name, __package__)
        except ImportError:
            pass
    for name in _STDLIB:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if sftp:
        try:
            importlib.import_module("paramiko")
        except ImportError:
            pass


def become(user: str) -> None:
    """Turn this process into ``user`` for good: groups, group, user, home; cwd ``/``."""
    uid, gid, home = user_ids(user)
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(uid)
    os.environ.update(HOME=home, USER=user, LOGNAME=user)
    os.chdir("/")


def _die_with_parent(parent: int) -> None:
    """Linux: this child gets SIGKILL when its parent dies (a killed door takes its engine with it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def call_as(user: str, fn, *args, sftp: bool = False, **kwargs):
    """``fn(*args, **kwargs)`` done as ``user``: in this process when it already is that user (or
    is not root), else in a child that becomes ``user``.  The result must be JSON data; the
    engine's own errors come back as the same exception class with the same sentence.
    """
    if not must_switch(user):
        return fn(*args, **kwargs)
    preload(sftp)
    parent = os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_end)
            become(user)
            _die_with_parent(parent)
            try:
                payload = {"result": fn(*args, **kwargs)}
            except RepoBackupError as exc:
                payload = {"error": type(exc).__name__, "message": str(exc)}
            except BaseException as exc:  # pylint: disable=broad-except
                payload = {"error": "", "message": "%s: %s" % (type(exc).__name__, exc)}
            data = json.dumps(payload, default=str).encode("utf-8")
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
        except BaseException:  # pylint: disable=broad-except
            code = 1
        finally:
            os._exit(code)  # no atexit handlers, no buffered output of the parent's twice
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as source:
        while True:
            chunk = source.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    while True:
        try:
            dummy, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    try:
        payload = json.loads(b"".join(chunks).decode("utf-8")) if chunks else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        how = ("killed by signal %d" % os.WTERMSIG(status)) if os.WIFSIGNALED(status) \
            else "exit status %d" % os.WEXITSTATUS(status)
        raise RepoBackupError("The engine's process as user %s ended without a result (%s)." % (user, how))
    if "error" in payload:
        cls = getattr(errors, payload["error"] or "RepoBackupError", RepoBackupError)
        if not (isinstance(cls, type) and issubclass(cls, RepoBackupError)):
            cls = RepoBackupError
        raise cls(payload["message"])
    return payload["result"]


def _owner(uid: int) -> str:
    try:
        return "user %s" % pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def folder_problem(path: str) -> str | None:
    """Why this process must not work in folder ``path`` (see the module text), or None.

    Every folder from ``/`` down is looked at, as written (a symbolic link on the way must be
    root's or this user's) and as resolved.  A missing tail is fine: whoever may create it is
    decided by the nearest folder that exists.
    """
    uid = os.geteuid()
    me = _owner(uid)[5:]
    absolute = os.path.abspath(path)
    for spelling in (absolute, os.path.realpath(absolute)):
        parts = [p for p in spelling.split("/") if p]
        current = "/"
        chain = ["/"] + ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]
        for index, current in enumerate(chain):
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                break
            except OSError as exc:
                return "%s cannot be examined (%s)" % (current, exc.strerror)
            if info.st_uid not in (0, uid):
                return "%s is owned by %s, and this engine runs as %s" % (current, _owner(info.st_uid), me)
            if stat.S_ISLNK(info.st_mode):
                continue
            last = index == len(chain) - 1
            sticky = bool(info.st_mode & stat.S_ISVTX)
            if info.st_mode & stat.S_IWOTH and (last or not sticky):
                return "%s can be written by every user" % current
            if uid == 0 and info.st_mode & stat.S_IWGRP and info.st_gid != 0 and (last or not sticky):
                return "%s can be written by group %s, and this engine runs as root" % (
                    current, _group(info.st_gid))
    return None


def check_folder(path: str, what: str) -> None:
    """Refuse, in one sentence, to work in ``path`` (``what`` names it: "The SQLite folder")."""
    problem = folder_problem(path)
    if problem:
        raise errors.BackupError(
            "%s %s is refused: %s; the engine never works in a folder that a less privileged user can change "
            "(it could plant symbolic links there); make it belong to the run-as user, or set run_as to its "
            "owner." % (what, path, problem))


def open_nofollow(path: str, flags: int, mode: int = 0o640) -> int:
    """os.open that never follows a symbolic link at the last step; a link is named as such."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.BackupError("%s is a symbolic link; the engine never follows one there." % path) from None
        raise
