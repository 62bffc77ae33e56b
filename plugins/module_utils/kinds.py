# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract every kind of repository server keeps, and the registry of kinds.

A kind is one module (``kind_<name>.py``) with one class derived from
``RepositoryServer`` and decorated with ``@register``, plus one name in the
import line at the end of this file.  The engine, the settings and the doors
know kinds only through this contract: no per-kind table lives anywhere else.

What a kind declares (class attributes):

- ``kind``: its name in the settings (``autobackup_kind``);
- ``data_suffix``: the suffix of its data files (``.sqlite3``, ``.dump``);
- ``default_run_as``: the OS user its job runs as when ``run_as`` is not set, or a function of the
  kind's checked options that names it (``git``: the owner of the git root);
- ``kind_options``: its own settings as ``settings.Option`` entries, each
  declared once (stored under ``options`` in the settings document; module
  options and ``autobackup_servers`` keys ``<kind>_<name>``, role variables
  ``autobackup_<kind>_<name>``);
- ``drill_options``: where its restore drills may restore instead, as ``settings.Option`` entries
  (module options and role variables ``drill_<kind>_<name>``; ``Settings.drill_target``);
- ``left_out_of_all``: repositories that ``all`` leaves out unless named;
- ``has_globals``: whether each run also saves cluster-wide objects
  (``export_globals``) in the reserved globals folder;
- ``data_compressed``: whether its data files are compressed already (then
  ``autobackup_compression`` leaves them as they are: layers.py).

What a kind does (methods, below): list its repositories and tell whether one
exists and how big it is; export one under an in-use action to a file and
return the facts its manifest records; check a data file with its own tool;
restore aside and swap into place, giving back what the manifest recorded; refuse
a backup its tools cannot read; restore into scratch and check it against the
recorded facts (a drill's ``check_restorable``); give a content hash that two
copies of the same content share; repair what a killed run left on the server;
remove what a killed run left in its folders and scratch.
"""

from __future__ import annotations

import abc
import os
import tempfile
from contextlib import contextmanager

from .errors import SettingsError
from .settings import register_options

_KINDS = {}


def register(cls):
    """Class decorator: make ``cls`` the driver of ``cls.kind``, and declare its options and run-as user."""
    _KINDS[cls.kind] = cls
    register_options(cls.kind, list(cls.kind_options), run_as=cls.default_run_as, drill=list(cls.drill_options))
    return cls


def kind_names() -> tuple:
    return tuple(sorted(_KINDS))


def driver_class(kind: str):
    try:
        return _KINDS[kind]
    except KeyError:
        raise SettingsError("kind %r is not allowed; use one of %s." % (kind, ", ".join(kind_names()))) from None


def make_driver(kind: str, options: dict, wait: int = 30) -> "RepositoryServer":
    return driver_class(kind)(options, wait=wait)


class RepositoryServer(abc.ABC):
    """One repository server of some kind, on this host, reached with the settings' ``options``."""

    kind = ""
    data_suffix = ""
    default_run_as = "root"
    kind_options = ()
    drill_options = ()
    left_out_of_all = ()
    has_globals = False
    data_compressed = False

    def __init__(self, options: dict, wait: int = 30):
        self.options = dict(options)  # the values of ``kind_options`` from the settings
        self.wait = wait  # seconds to wait for clients (locks, connection ends)
        self.pending = None  # the engine's PendingRepairs: write(name, record) before a change, clear(name) after
        self.scratch = None  # a private folder (in the state folder) for copies the kind makes for itself

    # -- reading the server ------------------------------------------------------------
    @abc.abstractmethod
    def version(self) -> str:
        """The server's version as the manifest records it ("unknown" when it cannot be asked)."""

    @abc.abstractmethod
    def list_repositories(self) -> list:
        """Names of the repositories present, sorted; raises RepositoryError when the server cannot be read."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether repository ``name`` is present (as the listing would show it)."""

    @abc.abstractmethod
    def size_estimate(self, name: str) -> int:
        """Bytes a backup of ``name`` may take, for the free-space check."""

    # -- export ----------------------------------------------------------------------------
    @abc.abstractmethod
    def export(self, name: str, target: str, in_use: str) -> dict:
        """Write one consistent backup of ``name`` to the new file ``target`` under ``in_use``
        (``keep_connections`` or ``disconnect``); return the facts the manifest records
        (at least ``sessions_ended``: a number, or None where the kind cannot know)."""

    def stream_check(self) -> list | None:
        """The argument list of the kind's own tool that reads a data file whole from its standard input and
        exits non-zero unless it can.  A kind that has one exports an encrypted or compressed backup into a
        FIFO (``export`` then writes ``target`` once, front to back, and does not read it back), so its
        plaintext never touches a disk.  Default: None (export into a private scratch file)."""
        return None

    def export_globals(self, target: str) -> None:
        """Cluster-wide objects, for kinds with ``has_globals``."""
        raise NotImplementedError("kind %s has no globals" % self.kind)

    # -- content -------------------------------------------------------------------------------
    @staticmethod
    @abc.abstractmethod
    def content_hash(path: str) -> str:
        """A hash of a data file's content that two backups of unchanged content share."""

    @abc.abstractmethod
    def live_content_hash(self, name: str) -> str:
        """The same hash of the live repository (from a copy in ``scratch``)."""

    # -- verify and restore ----------------------------------------------------------------------
    @staticmethod
    @abc.abstractmethod
    def verify_file(path: str) -> None:
        """Raise BackupError unless the kind's own tool reads the data file whole."""

    def check_readable(self, manifest: dict) -> None:
        """Raise BackupError, before anything changes, when this host's tools cannot read a backup written by
        the tool and version its manifest records (``dump_tool``, ``dump_tool_version``); one sentence naming
        both versions.  Default: every backup is readable."""
        return None

    @abc.abstractmethod
    def restore(self, data_file: str, name: str) -> None:
        """Restore aside, check, then swap into ``name`` (created or replaced); the live repository is
        untouched unless the restored copy is complete."""

    def restore_backup(self, data_file: str, name: str, manifest: dict, globals_file: str | None = None,
                       create_roles: bool = True) -> dict:
        """What an import calls: ``restore`` of a backup, giving back what its ``manifest`` recorded (a kind
        with ``has_globals``: the roles it needs are created from ``globals_file``, without passwords, unless
        ``create_roles`` is false; then they are refused by name before anything changes).  Returns what
        the result reports (``roles_created``).  Default: the version check, then ``restore``."""
        self.check_readable(manifest)
        self.restore(data_file, name)
        return {"roles_created": []}

    def plan_restore(self, manifest: dict, name: str, globals_file: str | None = None,
                     create_roles: bool = True) -> dict:
        """Check mode of ``restore_backup``, read only: raise what it would refuse before changing anything
        (``check_readable``; PostgreSQL: missing roles), and return what it would report (``roles_created``)."""
        self.check_readable(manifest)
        return {"roles_created": []}

    def restore_globals(self, globals_file: str, dry_run: bool = False) -> list:
        """Kinds with ``has_globals``: create what the saved globals hold that the server lacks (PostgreSQL:
        roles, without passwords; existing ones are never altered); the names created (or, with
        ``dry_run``, that would be).  Default: nothing."""
        return []

    @abc.abstractmethod
    @contextmanager
    def restored_in_scratch(self, data_file: str):
        """Restore a backup where no client sees it (a scratch file or database), yield how to reach it
        (a path, a database name), and remove it afterwards: what a restore drill checks."""

    def check_restorable(self, data_file: str, manifest: dict, target: dict | None = None) -> list:
        """Restore the backup at ``data_file`` into scratch that is never the live repository (on the
        server named by ``target`` when given, e.g. ``{"host", "port", "service"}`` of a PostgreSQL drill
        cluster), run the kind's integrity checks, compare with the facts ``manifest`` recorded (tables,
        row counts, schema objects), remove the scratch (also on error), and return the names of the checks
        that passed (``restore``, ``integrity_check``, ``amcheck``, ``row_counts``, ``objects``...).

        Raises RestoreCheckFailed (a BackupError) whose sentence names the cause.  Never creates or alters
        anything on the live server but its own scratch: a role the backup needs that is missing fails the
        check.  Scratch left by a check killed with SIGKILL is removed by ``remove_leftovers``.
        ``data_file`` is plaintext: the engine decodes an encrypted or compressed backup first (a kind never
        sees a key).

        Default (a kind with no facts to compare): the backup restores into scratch."""
        with self.restored_in_scratch(data_file):
            pass
        return ["restore"]

    def scratch_space(self, name: str, size: int) -> list:
        """Where a restore into scratch of a backup of ``name`` (``size`` bytes) writes, for the free-space
        check a drill makes first: (place, free bytes or None when it cannot be asked, bytes needed).
        Default: the scratch folder, which needs about the backup's size."""
        folder = self.scratch or tempfile.gettempdir()
        while folder and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        try:
            stat = os.statvfs(folder or "/")
            free = stat.f_bavail * stat.f_frsize
        except OSError:
            free = None
        return [(self.scratch or folder, free, size)]

    # -- after a crash ------------------------------------------------------------------------------
    def repair(self, record: dict) -> None:
        """Undo what a killed run left on the server, from a pending record it wrote (default: nothing)."""
        return None

    def remove_leftovers(self) -> list:
        """Remove what a killed run left in the kind's own folders (call under the lock); their paths."""
        return []


# The registration lines, one per kind: each kind module registers its class when imported (in this order,
# which is the order of the kinds and their options in the docs).
from . import kind_sqlite  # noqa: E402,F401,I100  pylint: disable=unused-import,wrong-import-position
from . import kind_postgresql  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position
from . import kind_git  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position
