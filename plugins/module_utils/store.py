# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups on a destination: layout, manifests, atomic publish, retention, verification.

Layout: ``<destination>/<host>/<server>/<repository>/<stamp><suffix>`` for the
data file and ``<stamp>.manifest.json`` beside it, host and repository names
through ``encode_name``.  A backup exists only once its manifest is published;
the manifest is written last.
"""

from __future__ import annotations

import datetime
import json
import os
import posixpath

from .destination import TMP_PREFIX, LocalDestination, sha256_file
from .errors import BackupError
from .layout import VERSION, decode_name, dump_json, encode_name
from .retention import keep
from .sftp import SftpDestination

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
# The folder of a server's cluster-wide globals (PostgreSQL roles, tablespaces), beside the
# repositories' folders.  encode_name turns every '%' into '%25', so no repository's folder
# can be named this.  Store methods take the repository name None for it.
GLOBALS_DIR = "%globals"
__all__ = ["BackupStore", "sha256_file", "TMP_PREFIX"]


def open_destination(settings, staging: str):
    """The destination of ``settings``; ``staging`` is a local folder for SFTP uploads and downloads."""
    if settings.destination_kind() == "sftp":
        return SftpDestination(settings.destination, dict(settings.sftp or {}, run_as=settings.run_as), staging)
    return LocalDestination(settings.destination, settings.require_mount)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


class BackupStore:
    """One host's and one server's backups on a destination (a ``destination.*Destination``)."""

    def __init__(self, destination, host: str, server: str):
        self.fs = LocalDestination(destination) if isinstance(destination, str) else destination
        self.destination = self.fs.root
        self.host = host
        self.server = server
        self.base = posixpath.join(self.fs.root, encode_name(host), server)

    def address(self, path: str) -> str:
        """How a file here is named to the administrator: its path, or an sftp:// URL."""
        return self.fs.address(path)

    def repo_dir(self, name: str | None) -> str:
        """The folder of repository ``name``; None: the reserved globals folder."""
        return posixpath.join(self.base, GLOBALS_DIR if name is None else encode_name(name))

    def repositories(self) -> list:
        """Names of the repositories that have a folder here."""
        return sorted(decode_name(n) for n in self.fs.listdir(self.base)
                      if n != GLOBALS_DIR and not n.startswith("."))

    # -- publish --------------------------------------------------------------
    def publish(self, name: str | None, suffix: str, export, meta: dict, content_of=None, same_as: str | None = None) -> dict:
        """Run ``export(temp_path) -> dict`` and publish its file and manifest.

        With ``content_of(path) -> hash``, the manifest records the content hash;
        when it equals ``same_as`` nothing is published and the result carries
        ``unchanged: True``.  The result's ``upload`` says how the file reached
        the destination.
        """
        self.fs.check_ready()
        folder = self.repo_dir(name)
        for level in (posixpath.dirname(self.base), self.base, folder):  # host, server, repository
            self.fs.makedirs(level, 0o750)
        start = utc_now()
        staged = self.fs.stage(folder, suffix)
        try:
            extra = export(staged) or {}
            digest, size = sha256_file(staged)
            content = content_of(staged) if content_of else None
            if content is not None and content == same_as:
                self.fs.discard(staged)
                return {"unchanged": True, "content_sha256": content, "size": size}
            end = utc_now()
            stamp = self._free_stamp(folder, start, suffix)
            data_path = posixpath.join(folder, stamp + suffix)
            upload = self.fs.commit(staged, data_path, size, digest)
        except BaseException:
            self.fs.discard(staged)
            raise
        manifest = dict(meta)
        manifest.update({
            "format": MANIFEST_FORMAT,
            "host": self.host,
            "server": self.server,
            "repository": name,
            "start": iso(start),
            "end": iso(end),
            "size": size,
            "sha256": digest,
            "engine_version": VERSION,
            "data_file": posixpath.basename(data_path),
        })
        if content is not None:
            manifest["content_sha256"] = content
        manifest.update(extra)
        manifest_path = posixpath.join(folder, stamp + MANIFEST_SUFFIX)
        self.fs.write_file(manifest_path, dump_json(manifest))
        manifest["path"] = data_path
        manifest["manifest_path"] = manifest_path
        manifest["upload"] = upload
        return manifest

    def _free_stamp(self, folder: str, start: datetime.datetime, suffix: str) -> str:
        taken = set(self.fs.listdir(folder))
        base = start.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        stamp, count = base, 1
        while stamp + suffix in taken or stamp + MANIFEST_SUFFIX in taken:
            count += 1
            stamp = "%s-%d" % (base, count)
        return stamp

    # -- read -----------------------------------------------------------------
    def backups(self, name: str | None) -> list:
        """Complete backups of ``name`` (manifest readable, data present), oldest first."""
        folder = self.repo_dir(name)
        entries = set(self.fs.listdir(folder))
        found = []
        for entry in entries:
            if not entry.endswith(MANIFEST_SUFFIX) or entry.startswith("."):
                continue
            try:
                manifest = self.load(posixpath.join(folder, entry))
            except BackupError:
                continue
            if manifest["data_file"] in entries:
                found.append(manifest)
        found.sort(key=_age_key)
        return found

    def newest(self, name: str | None) -> dict | None:
        """The newest complete backup of ``name``, reading as few manifests as it takes (usually one)."""
        folder = self.repo_dir(name)
        entries = set(self.fs.listdir(folder))
        stems = [e[:-len(MANIFEST_SUFFIX)] for e in entries if e.endswith(MANIFEST_SUFFIX) and not e.startswith(".")]
        for stem in sorted(stems, key=_stem_key, reverse=True):
            try:
                manifest = self.load(posixpath.join(folder, stem + MANIFEST_SUFFIX))
            except BackupError:
                continue
            if manifest["data_file"] in entries:
                return manifest
        return None

    def load(self, manifest_path: str) -> dict:
        """The manifest at ``manifest_path`` on this destination."""
        try:
            data = self.fs.read_bytes(manifest_path)
        except FileNotFoundError:
            raise BackupError("Manifest %s does not exist." % self.address(manifest_path)) from None
        except OSError as exc:
            raise BackupError("Manifest %s cannot be read: %s." % (self.address(manifest_path), exc)) from None
        return parse_manifest(data, manifest_path, self.address(manifest_path))

    def resolve(self, path: str) -> dict:
        """The manifest of a backup here named by its data file or its manifest."""
        if path.endswith(MANIFEST_SUFFIX):
            return self.load(path)
        folder, base = posixpath.split(path)
        manifest_path = posixpath.join(folder, base.split(".", 1)[0] + MANIFEST_SUFFIX)
        if not self.fs.exists(manifest_path):
            raise BackupError("%s has no manifest beside it (%s), so it is not a complete backup."
                              % (self.address(path), posixpath.basename(manifest_path)))
        manifest = self.load(manifest_path)
        if manifest["data_file"] != base:
            raise BackupError("Manifest %s describes %s, not %s."
                              % (self.address(manifest_path), manifest["data_file"], base))
        return manifest

    def check(self, manifest: dict) -> None:
        """The data file is there, of the recorded size, with the recorded sha256."""
        where = self.address(manifest["path"])
        try:
            digest, size = self.fs.hash_file(manifest["path"])
        except FileNotFoundError:
            raise BackupError("Backup data file %s is missing." % where) from None
        except BackupError as exc:
            if "does not exist" in str(exc):
                raise BackupError("Backup data file %s is missing." % where) from None
            raise
        if size != manifest["size"]:
            raise BackupError("Backup %s is %d bytes but its manifest says %d: it is truncated or altered."
                              % (where, size, manifest["size"]))
        if digest != manifest["sha256"]:
            raise BackupError("Backup %s does not match the sha256 in its manifest: it is corrupt." % where)

    def is_good(self, manifest: dict) -> bool:
        try:
            self.check(manifest)
        except BackupError:
            return False
        return True

    # -- retention ------------------------------------------------------------
    def prune(self, name: str | None, policy, verified=()) -> list:
        """Apply the retention ``policy`` (keep_last, keep_daily, keep_weekly, keep_monthly) to ``name``.

        ``policy`` may be a plain keep_last number.  The newest good backup is
        never removed: backups in ``verified`` (manifest paths checked by the
        caller, such as the one just published) count as good without a new
        read; others are checked newest first until one passes.  Call only
        after a successful backup and while holding the server's lock:
        leftovers of killed runs (temporary files, data files without a
        manifest) are removed too.
        """
        if not isinstance(policy, dict):
            policy = {"keep_last": policy}
        backups = self.backups(name)
        # Keys are positions in age order, so backups of one second sort by their counter.
        kept = keep([(index, parse_iso(m["start"])) for index, m in enumerate(backups)], **policy)
        for index in range(len(backups) - 1, -1, -1):
            if backups[index]["manifest_path"] in verified or self.is_good(backups[index]):
                kept.add(index)
                break
        removed = []
        for index, manifest in enumerate(backups):
            if index in kept:
                continue
            self.fs.remove(manifest["manifest_path"])  # no longer a backup from here on
            self.fs.remove(manifest["path"])
            removed.append(manifest["data_file"])
        folder = self.repo_dir(name)
        entries = self.fs.listdir(folder)
        stems = {e[:-len(MANIFEST_SUFFIX)] for e in entries if e.endswith(MANIFEST_SUFFIX)}
        for entry in entries:
            orphan = not entry.startswith(".") and not entry.endswith(MANIFEST_SUFFIX) \
                and entry.split(".", 1)[0] not in stems
            if entry.startswith(TMP_PREFIX) or orphan:
                self.fs.remove(posixpath.join(folder, entry))
                removed.append(entry)
        if removed:
            self.fs.sync_dir(folder)
        return removed


def _stem_key(stem: str) -> tuple:
    """A backup's stamp in age order: the UTC second, then the collision counter (``-2``, ``-3``...)."""
    base, dummy, count = stem.partition("-")
    return (base, int(count) if count.isdigit() else 1)


def _age_key(manifest: dict) -> tuple:
    """Oldest first: by start, then by stamp and collision counter."""
    stem = posixpath.basename(manifest["manifest_path"])[:-len(MANIFEST_SUFFIX)]
    return (manifest["start"],) + _stem_key(stem)


def parse_manifest(data: bytes, path: str, where: str | None = None) -> dict:
    """Read and check a manifest's bytes; ``path`` is where it lies, ``where`` how to name it."""
    where = where or path
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise BackupError("Manifest %s cannot be read: %s." % (where, exc)) from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise BackupError("%s is not a repobackup manifest." % where)
    if manifest["format"] != MANIFEST_FORMAT:
        raise BackupError("Manifest %s has format %r; this engine reads format %d."
                          % (where, manifest["format"], MANIFEST_FORMAT))
    for key in ("kind", "repository", "sha256", "size", "data_file", "start"):
        if key not in manifest:
            raise BackupError("Manifest %s lacks the field %r." % (where, key))
    if posixpath.basename(manifest["data_file"]) != manifest["data_file"]:
        raise BackupError("Manifest %s names a data file outside its folder." % where)
    manifest["path"] = posixpath.join(posixpath.dirname(path), manifest["data_file"])
    manifest["manifest_path"] = path
    return manifest


def load_manifest(path: str) -> dict:
    """A manifest on this host's file system."""
    return LOCAL_FILES.load(os.path.abspath(path))


def resolve(path: str) -> dict:
    """The manifest of a backup on this host named by its data file or its manifest."""
    return LOCAL_FILES.resolve(os.path.abspath(path))


def check_data(manifest: dict) -> None:
    """A local backup's data file is there, of the recorded size, with the recorded sha256."""
    LOCAL_FILES.check(manifest)


# Backups named by a path on this host, wherever they lie (resolve, load, check only).
LOCAL_FILES = BackupStore(LocalDestination("/"), "-", "-")
