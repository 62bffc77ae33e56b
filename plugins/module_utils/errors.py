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
