# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where backups are written: a local folder (disk or mounted share) or an SFTP server.

Both speak the same small set of operations on POSIX paths, so the store has
one publish and one retention for every destination:

- ``stage(folder, suffix)``: a local path the exporter writes the new file to;
- ``commit(staged, final, size)``: make it appear under ``final``, whole or not
  at all (local: rename in place; SFTP: upload under a temporary name, confirm
  the size, optionally re-read and hash, rename);
- ``write_file`` (the manifest, last), ``read_bytes``,
  ``hash_file``, ``listdir``, ``remove``, ``makedirs``, ``free_space``, ``fetch``.

The SFTP one lives in sftp.py (paramiko is imported only when it connects);
``open_destination`` picks one for the settings.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager

from .errors import BackupError
from .layout import atomic_write, fsync_dir, makedirs
from .privilege import folder_problem

TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


def sha256_stream(handle) -> tuple:
    """(sha256 hex digest, size) of what ``handle`` reads to its end."""
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = handle.read(_CHUNK)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: str) -> tuple:
    """(sha256 hex digest, size) of a local file."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def stage_privately(folder: str, suffix: str) -> str:
    """A path for a new file inside a fresh private folder (0700) in ``folder``.

    Nobody else can create anything in that folder, so the exporter may create the file by name
    without a planted symbolic link ever being followed; ``discard_local`` removes both.  Its name
    carries the process id, so what a killed run left can be told (``layout.remove_dead_scratch``).
    """
    private = tempfile.mkdtemp(prefix="%s%d-" % (TMP_PREFIX, os.getpid()), dir=folder)
    return os.path.join(private, "data" + suffix)


def discard_local(path: str) -> None:
    for leftover in (path, path + "-journal", path + "-wal"):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    private = os.path.dirname(path)
    if os.path.basename(private).startswith(TMP_PREFIX):
        shutil.rmtree(private, ignore_errors=True)


def open_destination(settings, staging: str):
    """The destination of ``settings``; ``staging`` is a local folder for SFTP uploads and downloads."""
    if settings.destination_kind() == "sftp":
        # Imported here: sftp.py builds on this file.
        from .sftp import SftpDestination  # pylint: disable=import-outside-toplevel
        return SftpDestination(settings.destination, dict(settings.sftp or {}, run_as=settings.run_as), staging)
    return LocalDestination(settings.destination, settings.require_mount)


class LocalDestination:
    """A folder on this host: local disk, or a network share mounted by the administrator."""

    kind = "local"

    def __init__(self, root: str, require_mount: bool = False):
        self.root = root
        self.require_mount = require_mount

    def address(self, path: str) -> str:
        return path

    def path_of(self, address: str) -> str:
        return address

    def check_ready(self) -> None:
        """Refuse to write into a missing destination, or under a mount point that is not mounted."""
        if not os.path.isdir(self.root):
            raise BackupError("Destination %s does not exist (an unmounted share?); nothing was written."
                              % self.root)
        problem = folder_problem(self.root)
        if problem:
            raise BackupError("Destination %s is refused: %s; the engine never writes in a folder that a less "
                              "privileged user can change (it could plant symbolic links there): make it belong "
                              "to the run-as user; nothing was written." % (self.root, problem))
        if self.require_mount and not os.path.ismount(self.root):
            raise BackupError("Destination %s is not a mount point, and require_mount is true: the share is "
                              "not mounted; nothing was written." % self.root)

    def makedirs(self, path: str, mode: int = 0o750) -> None:
        makedirs(path, mode)

    def listdir(self, path: str) -> list:
        try:
            return os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    @staticmethod
    def hash_file(path: str) -> tuple:
        return sha256_file(path)

    def stage(self, folder: str, suffix: str) -> str:
        """A fresh private path in ``folder`` itself: the rename that publishes it stays on one disk."""
        return stage_privately(folder, suffix)

    def discard(self, staged: str) -> None:
        discard_local(staged)

    def commit(self, staged: str, final: str, size: int, sha256: str | None = None) -> dict:
        os.chmod(staged, 0o640)
        with open(staged, "rb+") as handle:
            os.fsync(handle.fileno())
        os.rename(staged, final)
        fsync_dir(os.path.dirname(final))
        discard_local(staged)  # the private folder it was made in
        return {"bytes": size}

    def write_file(self, path: str, data: bytes) -> None:
        atomic_write(path, data, mode=0o640)

    def remove(self, path: str) -> None:
        """Remove a file, or a private staging folder a killed run left (never following a link)."""
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def sync_dir(self, path: str) -> None:
        fsync_dir(path)

    def free_space(self, path: str | None = None) -> int | None:
        try:
            stat = os.statvfs(path or self.root)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    @contextmanager
    def fetch(self, path: str):
        """A local path with the file's content: the file itself."""
        yield path

    def close(self) -> None:
        return None


def copy_to_local(handle, target: str) -> None:
    """Write what ``handle`` reads to the new private file ``target`` (a retry starts it over)."""
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(handle, out, 1 << 20)
