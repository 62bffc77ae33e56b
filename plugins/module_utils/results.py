# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a run or an export did: small records, each turned into a dict by one ``to_dict()``.

The dicts are what the doors return and what ``status.json`` keeps (``last``, ``last_success``), so
their shapes are a contract: a field left ``UNSET`` is one this kind of result does not have, and
is left out of the dict (a failed attempt has no ``sha256`` key, not a null one).  Results cross
the run-as child's boundary as these dicts (privilege.call_as sends JSON).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from .clock import iso
from .layers import Layers, shown


class _Unset:
    """A field this kind of result does not have."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _present(record) -> dict:
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)
            if getattr(record, field.name) is not UNSET}


@dataclasses.dataclass
class Attempt:
    """One repository's export in a run (or the globals', for PostgreSQL): failed, ok or unchanged.

    ``backup`` and ``data_file_path`` are addresses (a path, or an sftp:// URL); ``upload`` says how
    the data file reached the destination, None when the destination was to be written but nothing
    reached it (status's ``last_upload`` records such a failure), UNSET when it was never tried.
    """

    time: str
    result: str
    error: str | None = None
    size: int | None = None
    duration: float | None = None
    backup: str | None = None
    data_file_path: Any = UNSET
    sha256: Any = UNSET
    content_sha256: Any = UNSET
    sessions_ended: Any = UNSET
    upload: Any = UNSET
    skipped_backups: Any = UNSET  # why corrupt backups met on the way were skipped
    replaces: Any = UNSET  # status only: the last success whose backup is gone, replaced by the newest there
    # Layers (layers.py): who the backup is encrypted to (the keys that can read it, as shown), its compression,
    # and the plaintext's size (known to the run that wrote it; a sealed manifest keeps it from anyone else).
    encrypted_to: Any = UNSET
    compression: Any = UNSET
    plain_size: Any = UNSET

    @classmethod
    def failed(cls, start: datetime.datetime, duration: float, error: str, tried: bool = False) -> "Attempt":
        """``tried``: the destination was to be written (the repository existed and the export began)."""
        return cls(time=iso(start), result="failed", error=error, duration=round(duration, 3),
                   upload=None if tried else UNSET)

    @classmethod
    def published(cls, store, manifest: dict, start: datetime.datetime, duration: float, result: str = "ok",
                  skipped: Any = UNSET) -> "Attempt":
        """A repository's backup in ``store``: just published, or (``unchanged``) the one holding the same content."""
        return cls(time=iso(start), result=result, size=manifest["size"], duration=round(duration, 3),
                   backup=store.address(manifest["manifest_path"]), data_file_path=store.address(manifest["path"]),
                   sha256=manifest["sha256"], content_sha256=manifest.get("content_sha256"),
                   sessions_ended=manifest.get("sessions_ended"), upload=manifest.get("upload"),
                   skipped_backups=skipped, **layer_fields(manifest))

    @classmethod
    def globals_published(cls, store, manifest: dict, start: datetime.datetime, duration: float) -> "Attempt":
        """The cluster's globals, just published (no content hash, no sessions)."""
        return cls(time=iso(start), result="ok", size=manifest["size"], duration=round(duration, 3),
                   backup=store.address(manifest["manifest_path"]), data_file_path=store.address(manifest["path"]),
                   sha256=manifest["sha256"], upload=manifest["upload"], **layer_fields(manifest))

    @classmethod
    def found(cls, store, manifest: dict, replaces: str | None) -> "Attempt":
        """A backup found in ``store`` that stands in for the recorded last success (whose backup is gone)."""
        return cls(time=manifest["start"], result="ok", size=manifest["size"], duration=None,
                   backup=store.address(manifest["manifest_path"]), data_file_path=store.address(manifest["path"]),
                   sha256=manifest["sha256"], content_sha256=manifest.get("content_sha256"),
                   sessions_ended=manifest.get("sessions_ended"), upload=None, replaces=replaces,
                   **layer_fields(manifest))

    def to_dict(self) -> dict:
        return _present(self)


def layer_fields(manifest: dict) -> dict:
    """The Attempt fields of a backup's layers; none for a plain backup."""
    layers = Layers.of(manifest)
    if not layers:
        return {}
    found = {"encrypted_to": [shown(r) for r in layers.recipients], "compression": layers.compression or "none"}
    if isinstance(manifest.get("plain_size"), int):
        found["plain_size"] = manifest["plain_size"]
    return found


@dataclasses.dataclass
class Drill:
    """One repository's restore drill: its newest good backup restored into scratch and checked.

    ``backup`` is the manifest's address and ``backup_start`` when that backup began (what a passed drill
    proves restorable); ``checks`` the checks that passed; ``target`` where the scratch was; ``error`` the
    cause of a failure; ``skipped_backups`` why newer backups were passed over (corrupt, unreadable);
    ``space_unchecked`` the places whose free space could not be asked before the restore.
    """

    time: str
    result: str
    duration: float
    target: str
    backup: str | None = None
    backup_start: str | None = None
    sha256: str | None = None
    checks: list = dataclasses.field(default_factory=list)
    error: str | None = None
    skipped_backups: list = dataclasses.field(default_factory=list)
    space_unchecked: list = dataclasses.field(default_factory=list)

    @classmethod
    def passed(cls, start: datetime.datetime, duration: float, checks: list, target: str, manifest: dict,
               skipped: list, unchecked: list) -> "Drill":
        return cls(time=iso(start), result="ok", duration=round(duration, 3), target=target,
                   backup=manifest["manifest_path"], backup_start=manifest["start"], sha256=manifest["sha256"],
                   checks=checks, skipped_backups=skipped, space_unchecked=unchecked)

    @classmethod
    def failed(cls, start: datetime.datetime, duration: float, error: str, target: str, manifest: dict | None,
               skipped: list, unchecked: list) -> "Drill":
        """``manifest``: the backup that failed its check, None when none was reached."""
        manifest = manifest or {}
        return cls(time=iso(start), result="failed", duration=round(duration, 3), target=target,
                   backup=manifest.get("manifest_path"), backup_start=manifest.get("start"),
                   sha256=manifest.get("sha256"), error=error, skipped_backups=skipped, space_unchecked=unchecked)

    def to_dict(self) -> dict:
        return _present(self)


@dataclasses.dataclass
class RunResult:
    """A run's or an export's result: skipped (with ``reason``), or done (``ok``, ``partial``, ``failed``)."""

    result: str
    error: Any = UNSET
    reason: Any = UNSET
    repositories: dict = dataclasses.field(default_factory=dict)  # name: Attempt (a drill: Drill), in order
    repaired: Any = UNSET
    globals: Any = UNSET  # Attempt (PostgreSQL)

    @classmethod
    def skipped(cls, reason: str) -> "RunResult":
        return cls(result="skipped", reason=reason)

    @classmethod
    def crashed(cls, error: str) -> "RunResult":
        """Whatever stopped a run before any repository's result."""
        return cls(result="failed", error=error, repaired=[])

    def to_dict(self) -> dict:
        done = _present(self)
        done["repositories"] = {name: attempt.to_dict() for name, attempt in self.repositories.items()}
        if self.globals is not UNSET:
            done["globals"] = self.globals.to_dict()
        return done
