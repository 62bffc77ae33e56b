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
- ``default_run_as``: the OS user its job runs as when ``run_as`` is not set;
- ``kind_options``: its own settings as ``settings.Option`` entries, each
  declared once (stored under ``options`` in the settings document; module
  options and ``autobackup_servers`` keys ``<kind>_<name>``, role variables
  ``autobackup_<kind>_<name>``);
- ``drill_options``: where its restore drills may restore instead, as ``settings.Option`` entries
  (module options and role variables ``drill_<kind>_<name>``; ``Settings.drill_target``);
- ``left_out_of_all``: repositories that ``all`` leaves out unless named;
- ``has_globals``: whether each run also saves cluster-wide objects
  (``export_globals``) in the reserved globals folder.

What a kind does (methods, below): list its repositories and tell whether one
exists and how big it is; export one under an in-use action to a file and
return the facts its manifest records; check a data file with its own tool;
restore aside and swap into place; restore into scratch for a drill; give a
content hash that two copies of the same content share; repair what a killed
run left on the server; remove what a killed run left in its folders.
"""

from __future__ import annotations

import abc
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

    @abc.abstractmethod
    def restore(self, data_file: str, name: str) -> None:
        """Restore aside, check, then swap into ``name`` (created or replaced); the live repository is
        untouched unless the restored copy is complete."""

    @abc.abstractmethod
    @contextmanager
    def restored_in_scratch(self, data_file: str):
        """Restore a backup where no client sees it (a scratch file or database), yield how to reach it
        (a path, a database name), and remove it afterwards: what a restore drill checks."""

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
