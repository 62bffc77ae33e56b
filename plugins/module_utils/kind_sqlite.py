# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``sqlite`` repository server: each repository is a database file in one folder.

A repository's name is its file name.  Exports are plain SQLite database
files (restorable with ``sqlite3`` alone).

- ``keep_connections``: one consistent snapshot while other processes go on
  reading and writing (writers wait briefly): in rollback-journal mode the
  file is copied as it is under a read transaction; in WAL mode the online
  backup API copies every page in one step from one read snapshot.
- ``disconnect``: an exclusive transaction (bounded wait) holds writers off
  and, in rollback-journal mode, readers too; the database file, and its
  write-ahead log if any, are copied as they are and the copy is folded into
  one file.  In WAL mode readers cannot be kept out by SQLite's locks: they
  keep reading the unchanging data.  Clients continue when the lock is let go.
- Fail closed: the copy counts only once ``PRAGMA quick_check`` passes on it;
  then the facts the manifest records (``facts.py``: each table's row count,
  every schema object) are read from the copy itself, which holds exactly the
  read transaction's snapshot, so clients never wait for the counting.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from contextlib import contextmanager

from .errors import BackupError, FileError, RepositoryError, RestoreCheckFailed
from .facts import compare_facts
from .kinds import RepositoryServer, register
from .layout import fsync_dir, scratch_folder
from .privilege import folder_problem
from .settings import Option, check_path

MAGIC = b"SQLite format 3\x00"
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
_RESTORE_PREFIX, _RESTORE_SUFFIX = ".restore-", ".tmp"
_VOLATILE_HEADER = ((18, 20), (24, 28), (40, 44), (92, 100))
_BUSY, _LOCKED = 5, 6  # SQLITE_BUSY, SQLITE_LOCKED (named in the module only from Python 3.11)


@register
class SqliteServer(RepositoryServer):
    kind = "sqlite"
    data_suffix = ".sqlite3"
    default_run_as = "root"
    kind_options = (Option("root", "path", "The folder whose SQLite database files are the repositories.",
                           default="/var/lib/reposerver/sqlite", check=check_path),)

    def __init__(self, options: dict, wait: int = 30):
        super().__init__(options, wait)
        self.root = self.options["root"]

    def _check_root(self) -> None:
        """The SQLite folder must be one that only this user (or root) can change (privilege.py)."""
        problem = folder_problem(self.root)
        if problem:
            raise RepositoryError("The SQLite folder %s is refused: %s; the engine never works in a folder that a "
                                  "less privileged user can change (it could plant symbolic links there); set "
                                  "run_as to the folder's owner." % (self.root, problem))

    def _plain_files(self, name: str) -> None:
        """Refuse a repository whose file, or any file SQLite opens beside it, is a symbolic link or no file."""
        for path in [self.path(name)] + [self.path(name) + s for s in _SIDE_SUFFIXES]:
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                if path == self.path(name):
                    raise RepositoryError("Repository %r does not exist in %s." % (name, self.root)) from None
                continue
            if not stat.S_ISREG(info.st_mode):
                raise RepositoryError("Repository %r is refused: %s is %s, not a plain file; the engine never "
                                      "follows a link in the SQLite folder." % (
                                          name, path, "a symbolic link" if stat.S_ISLNK(info.st_mode)
                                          else "not a file"))

    # -- reading the server -------------------------------------------------
    def version(self) -> str:
        return sqlite3.sqlite_version

    def list_repositories(self) -> list:
        self._check_root()
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            raise RepositoryError("The SQLite folder %s cannot be read: %s." % (self.root, exc.strerror)) from None
        names = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(_SIDE_SUFFIXES):
                continue
            if entry.is_file(follow_symlinks=False) and _has_magic(entry.path):
                names.append(entry.name)
        return names

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self, name: str) -> bool:
        """A plain SQLite file of that name (a symbolic link is no repository, as in the listing)."""
        path = self.path(name)
        try:
            plain = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False
        return plain and _has_magic(path)

    def remove_leftovers(self) -> list:
        """Remove the restore copies a killed import left in the SQLite folder (call under the lock)."""
        if folder_problem(self.root):
            return []
        removed = []
        try:
            entries = os.listdir(self.root)
        except OSError:
            return []
        for entry in entries:
            stem = entry[:-len("-journal")] if entry.endswith("-journal") else entry
            if stem.startswith(_RESTORE_PREFIX) and stem.endswith(_RESTORE_SUFFIX):
                try:
                    os.unlink(os.path.join(self.root, entry))
                    removed.append(os.path.join(self.root, entry))
                except FileNotFoundError:
                    pass
        return removed

    def size_estimate(self, name: str) -> int:
        """Bytes a backup of ``name`` may take: the database file and its write-ahead log."""
        total = 0
        for path in (self.path(name), self.path(name) + "-wal"):
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
        return total

    # -- export ---------------------------------------------------------------
    def export(self, name: str, target: str, in_use: str) -> dict:
        """Write one consistent copy of repository ``name`` to ``target``."""
        source = self.path(name)
        self._check_root()
        self._plain_files(name)
        if not self.exists(name):
            raise RepositoryError("Repository %r is not an SQLite database in %s." % (name, self.root))
        try:
            if in_use == "disconnect":
                self._export_exclusive(source, target)
            else:
                self._export_online(source, target)
        except sqlite3.Error as exc:
            raise RepositoryError("Export of repository %r failed: %s." % (name, exc)) from None
        facts = snapshot_facts(target, name)
        return {"sessions_ended": None, "facts": facts, "dump_tool": "sqlite3",
                "dump_tool_version": sqlite3.sqlite_version}

    def _export_online(self, source: str, target: str) -> None:
        # Rollback-journal mode: a read transaction (SHARED lock) keeps the file
        # unchanged while it is copied as it is.  WAL mode: the backup API copies
        # every page in one step from one read snapshot.  Either way writers wait
        # only for the copy.  The file is read through a descriptor opened before
        # the lock (closing any descriptor of it would drop this process's locks).
        with _open_plain(source) as data:
            conn = sqlite3.connect(source, timeout=self.wait, isolation_level=None)
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                    self._backup_api(conn, source, target)
                    return
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                try:
                    with open(target, "wb") as out:
                        shutil.copyfileobj(data, out, 1 << 20)
                finally:
                    conn.execute("COMMIT")
            finally:
                conn.close()

    def _backup_api(self, conn: sqlite3.Connection, source: str, target: str) -> None:
        dst = sqlite3.connect(target)
        try:
            deadline = time.monotonic() + self.wait
            conn.backup(dst, pages=-1, progress=_deadline_guard(deadline, source))
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()

    def _export_exclusive(self, source: str, target: str) -> None:
        # POSIX locks belong to the process: closing any descriptor of the database
        # file drops every lock this process holds on it, the holder's too.  So the
        # file is read through one descriptor opened before the lock and closed after.
        with _open_plain(source) as data:
            holder = sqlite3.connect(source, timeout=self.wait, isolation_level=None)
            try:
                try:
                    holder.execute("BEGIN EXCLUSIVE")
                except sqlite3.OperationalError as exc:
                    raise RepositoryError(
                        "Could not hold clients off %s within %d s (%s); nothing was exported."
                        % (source, self.wait, exc)) from None
                try:
                    with open(target, "wb") as out:
                        shutil.copyfileobj(data, out, 1 << 20)
                    if os.path.exists(source + "-wal"):
                        shutil.copyfile(source + "-wal", target + "-wal")
                finally:
                    holder.execute("ROLLBACK")
            finally:
                holder.close()
        copy = sqlite3.connect(target, isolation_level=None)
        try:
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
        for suffix in _SIDE_SUFFIXES:
            if os.path.exists(target + suffix):
                os.unlink(target + suffix)

    # -- content ------------------------------------------------------------
    @staticmethod
    def content_hash(path: str) -> str:
        """sha256 of a database file with the header fields a mere copy changes zeroed.

        Left out: the file format bytes (WAL or rollback journal, 18-19), the
        change counter (24-27), the schema cookie (40-43: the backup API bumps
        it in a restored file so that open connections reload the schema) and
        the version-valid-for and SQLite version numbers (92-99).  Two copies
        of the same pages hash the same.
        """
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            header = bytearray(handle.read(100))
            for start, end in _VOLATILE_HEADER:
                header[start:end] = bytes(len(header[start:end]))
            digest.update(bytes(header))
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def live_content_hash(self, name: str) -> str:
        """Content hash of a live repository, from a consistent copy made aside."""
        with scratch_folder(self.scratch) as folder:
            copy = os.path.join(folder, "copy.sqlite3")
            self.export(name, copy, "keep_connections")
            return self.content_hash(copy)

    # -- verify and import ----------------------------------------------------
    @staticmethod
    def verify_file(path: str) -> None:
        if not _has_magic(path):
            raise FileError("", path, " is not an SQLite database file.")
        try:
            conn = sqlite3.connect(_ro_uri(path, immutable=True), uri=True)
            try:
                result = conn.execute("PRAGMA integrity_check").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise FileError("", path, " cannot be read as an SQLite database: %s." % exc) from None
        if result != [("ok",)]:
            raise FileError("", path, " fails SQLite's integrity check: %s." % result[0][0])

    def check_readable(self, manifest: dict) -> None:
        """Refuse a backup written by an SQLite of another major version (its file format differs)."""
        written = manifest.get("dump_tool_version")
        here = sqlite3.sqlite_version.split(".", maxsplit=1)[0]
        if isinstance(written, str) and written.split(".", maxsplit=1)[0] != here:
            where = manifest.get("manifest_path", "?")
            raise BackupError("Backup %s was written by SQLite %s, whose files the SQLite %s of this host cannot "
                              "read (nothing was changed)." % (where, written, sqlite3.sqlite_version))

    def restore(self, data_file: str, name: str) -> None:
        """Restore aside, verify, then publish into ``name`` (created or replaced)."""
        if not os.path.isdir(self.root):
            raise RepositoryError("The SQLite folder %s does not exist." % self.root)
        self._check_root()
        if "/" in name:  # names with '/' are a git server's (team/app.git)
            raise RepositoryError("Repository name %r is not allowed for an SQLite server: it names a file in %s, "
                                  "without '/'." % (name, self.root))
        live = self.path(name)
        if os.path.lexists(live):
            self._plain_files(name)
        fd, aside = tempfile.mkstemp(prefix=_RESTORE_PREFIX, suffix=_RESTORE_SUFFIX, dir=self.root)
        try:
            _copy_checked(fd, data_file, aside)
            if not os.path.lexists(live):
                folder = os.stat(self.root)  # a new repository belongs to the folder's owner
                os.chown(aside, folder.st_uid, folder.st_gid)
                with open(aside, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.rename(aside, live)
                fsync_dir(self.root)
                return
            self._copy_into_live(aside, live)
        finally:
            for path in (aside, aside + "-journal"):
                if os.path.exists(path):
                    os.unlink(path)

    @contextmanager
    def restored_in_scratch(self, data_file: str):
        """A checked copy of the backup in the state folder's scratch (never the SQLite folder)."""
        with scratch_folder(self.scratch) as folder:
            copy = os.path.join(folder, "restored" + self.data_suffix)
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            _copy_checked(fd, data_file, copy)
            yield copy

    def check_restorable(self, data_file: str, manifest: dict, target: dict | None = None) -> list:
        """Copy the backup into a private scratch folder (never the SQLite folder), run ``PRAGMA
        integrity_check`` and ``foreign_key_check`` on the copy, compare its tables, row counts and schema
        objects with the manifest's facts, remove the copy; the checks that passed.  ``target`` is not used by
        this kind."""
        source = manifest.get("manifest_path") or data_file
        try:
            self.check_readable(manifest)
        except BackupError as exc:
            raise RestoreCheckFailed(str(exc)) from None
        passed = []
        with scratch_folder(self.scratch) as folder:
            copy = os.path.join(folder, "restored" + self.data_suffix)
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                _copy_checked(fd, data_file, copy)  # the copy opens as a database, and integrity_check passes
            except FileError as exc:
                raise RestoreCheckFailed(str(exc.named(source))) from None
            passed += ["restore", "integrity_check"]
            conn = sqlite3.connect(_ro_uri(copy, immutable=True), uri=True)
            try:
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    table, rowid, parent = broken[0][0], broken[0][1], broken[0][2]
                    raise RestoreCheckFailed("Table %s row %s of the copy restored from %s refers to a missing row "
                                             "of %s (PRAGMA foreign_key_check, %d rows)."
                                             % (table, rowid, source, parent, len(broken)))
                passed.append("foreign_key_check")
                found = read_facts(conn)
            except sqlite3.Error as exc:
                raise RestoreCheckFailed("The copy restored from %s cannot be read: %s." % (source, exc)) from None
            finally:
                conn.close()
        passed += compare_facts(manifest.get("facts"), found, source)
        return passed

    def _copy_into_live(self, aside: str, live: str) -> None:
        # Open handles keep writing to the inode they have: replace pages, not the file.
        src = sqlite3.connect(aside)
        dst = sqlite3.connect(live, timeout=self.wait)
        try:
            deadline = time.monotonic() + self.wait
            src.backup(dst, pages=-1, progress=_deadline_guard(deadline, live))
        except sqlite3.Error as exc:
            raise RepositoryError("Restore into %s failed and left it unchanged: %s." % (live, exc)) from None
        finally:
            dst.close()
            src.close()


def _copy_checked(fd: int, data_file: str, path: str) -> None:
    """Copy ``data_file`` into the new file open at ``fd`` (named ``path``), then check it whole."""
    with os.fdopen(fd, "wb") as out, open(data_file, "rb") as source:  # the file just made, not its name
        os.fchmod(out.fileno(), 0o640)
        shutil.copyfileobj(source, out, 1 << 20)
    SqliteServer.verify_file(path)


def read_facts(conn: sqlite3.Connection) -> dict:
    """Each table's row count and every schema object (``table t``, ``index i``...), sorted (facts.py)."""
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    objects = sorted("%s %s" % (kind, name) for kind, name, dummy in rows)
    tables = {}
    for kind, name, sql in rows:
        if kind == "table" and not (sql or "").upper().startswith("CREATE VIRTUAL TABLE"):
            quoted = '"' + name.replace('"', '""') + '"'
            tables[name] = conn.execute("SELECT count(*) FROM " + quoted).fetchone()[0]
    return {"tables": tables, "objects": objects}


def snapshot_facts(path: str, name: str) -> dict:
    """Fail closed: ``PRAGMA quick_check`` on a new copy, then its facts; RepositoryError if the copy is not good."""
    try:
        conn = sqlite3.connect(_ro_uri(path, immutable=True), uri=True)
        try:
            try:
                result = conn.execute("PRAGMA quick_check").fetchall()
            except sqlite3.DatabaseError as exc:  # a page so broken that the check itself stops
                result = [(str(exc),)]
            if result != [("ok",)]:
                raise RepositoryError("The copy of repository %r fails SQLite's quick_check (%s), so it is no "
                                      "backup." % (name, result[0][0] if result else "no answer"))
            return read_facts(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise RepositoryError("The copy of repository %r cannot be read back: %s." % (name, exc)) from None


def _open_plain(path: str):
    """The file at ``path`` for reading, never through a symbolic link at its last step."""
    try:
        return open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW))
    except OSError as exc:
        raise RepositoryError("%s cannot be opened: %s." % (path, exc.strerror)) from None


def _has_magic(path: str) -> bool:
    try:
        with _open_plain(path) as handle:
            return handle.read(16) == MAGIC
    except (OSError, RepositoryError):
        return False


def _ro_uri(path: str, immutable: bool = False) -> str:
    from urllib.parse import quote
    return "file:%s?mode=ro%s" % (quote(path), "&immutable=1" if immutable else "")


def _deadline_guard(deadline: float, path: str):
    def progress(status: int, remaining: int, total: int) -> None:
        if status in (_BUSY, _LOCKED) and time.monotonic() > deadline:
            raise RepositoryError("%s stayed locked by other clients; gave up waiting." % path)
    return progress
