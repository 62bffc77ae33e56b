# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions of the repobackup engine.

Each one carries a single sentence meant for the administrator; the doors
(modules and the host command) print it as it is.
"""

from __future__ import annotations


class RepoBackupError(Exception):
    """Base class: something the administrator has to act on."""


class SettingsError(RepoBackupError):
    """A settings value is not allowed."""


class LockHeld(RepoBackupError):
    """Another run of the same server holds the lock."""


class RepositoryError(RepoBackupError):
    """A repository could not be read, exported or restored."""


class BackupError(RepoBackupError):
    """A backup file is missing, corrupt, truncated or foreign."""


class FileError(BackupError):
    """A file of a backup is missing, cannot be read, or is not what its manifest says.

    The sentence names the file: it reads ``before + file + after``.  Whoever checked a local
    copy (an SFTP backup downloaded for import or verify) names the original with ``named``.
    Across the run-as child's boundary only the sentence travels: ``FileError(sentence)``.
    """

    def __init__(self, before: str, file: str | None = None, after: str = ""):
        super().__init__(before if file is None else before + file + after)
        self.before = before
        self.file = file
        self.after = after

    def named(self, file: str) -> "FileError":
        """The same failure, naming ``file`` instead."""
        return self if self.file is None else type(self)(self.before, file, self.after)


class MissingFile(FileError):
    """The file is not there."""


class RestoreCheckFailed(BackupError):
    """A backup whose checksum is right could not be restored into scratch, or the restored copy is not
    what the backup recorded (row counts, schema objects, an index or integrity check); the sentence names
    the cause."""
