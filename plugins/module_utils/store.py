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
import hashlib
import json
import os
import tempfile

from .errors import BackupError
from .layout import VERSION, atomic_write, decode_name, dump_json, encode_name, fsync_dir, makedirs

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
TMP_PREFIX = ".tmp-"
# The folder of a server's cluster-wide globals (PostgreSQL roles, tablespaces), beside the
# repositories' folders.  encode_name turns every '%' into '%25', so no repository's folder
# can be named this.  Store methods take the repository name None for it.
GLOBALS_DIR = "%globals"
_CHUNK = 1 << 20


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def sha256_file(path: str) -> tuple:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class BackupStore:
    def __init__(self, destination: str, host: str, server: str):
        self.destination = destination
        self.host = host
        self.server = server
        self.base = os.path.join(destination, encode_name(host), server)

    def repo_dir(self, name: str | None) -> str:
        """The folder of repository ``name``; None: the reserved globals folder."""
        return os.path.join(self.base, GLOBALS_DIR if name is None else encode_name(name))

    def repositories(self) -> list:
        """Names of the repositories that have a folder here."""
        try:
            return sorted(decode_name(e.name) for e in os.scandir(self.base)
                          if e.is_dir() and e.name != GLOBALS_DIR)
        except FileNotFoundError:
            return []

    # -- publish --------------------------------------------------------------
    def publish(self, name: str | None, suffix: str, export, meta: dict, content_of=None, same_as: str | None = None) -> dict:
        """Run ``export(temp_path) -> dict`` and publish its file and manifest.

        With ``content_of(path) -> hash``, the manifest records the content hash;
        when it equals ``same_as`` nothing is published and the result carries
        ``unchanged: True``.
        """
        if not os.path.isdir(self.destination):
            raise BackupError("Destination %s does not exist (an unmounted share?); nothing was written."
                              % self.destination)
        folder = self.repo_dir(name)
        for level in (os.path.dirname(self.base), self.base, folder):  # host, server, repository
            makedirs(level, 0o750)
        start = utc_now()
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
        os.close(fd)
        os.unlink(tmp)  # the exporter creates the file itself
        try:
            extra = export(tmp) or {}
            os.chmod(tmp, 0o640)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            digest, size = sha256_file(tmp)
            content = content_of(tmp) if content_of else None
            if content is not None and content == same_as:
                os.unlink(tmp)
                return {"unchanged": True, "content_sha256": content, "size": size}
            end = utc_now()
            stamp = self._free_stamp(folder, start, suffix)
            data_path = os.path.join(folder, stamp + suffix)
            os.rename(tmp, data_path)
        except BaseException:
            for leftover in (tmp, tmp + "-journal", tmp + "-wal"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            raise
        fsync_dir(folder)
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
            "data_file": os.path.basename(data_path),
        })
        if content is not None:
            manifest["content_sha256"] = content
        manifest.update(extra)
        atomic_write(os.path.join(folder, stamp + MANIFEST_SUFFIX), dump_json(manifest), mode=0o640)
        manifest["path"] = data_path
        manifest["manifest_path"] = os.path.join(folder, stamp + MANIFEST_SUFFIX)
        return manifest

    @staticmethod
    def _free_stamp(folder: str, start: datetime.datetime, suffix: str) -> str:
        base = start.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        stamp, count = base, 1
        while (os.path.exists(os.path.join(folder, stamp + suffix))
               or os.path.exists(os.path.join(folder, stamp + MANIFEST_SUFFIX))):
            count += 1
            stamp = "%s-%d" % (base, count)
        return stamp

    # -- read -----------------------------------------------------------------
    def backups(self, name: str | None) -> list:
        """Complete backups of ``name`` (manifest readable, data present), oldest first."""
        folder = self.repo_dir(name)
        try:
            entries = [e.name for e in os.scandir(folder)]
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if not entry.endswith(MANIFEST_SUFFIX) or entry.startswith("."):
                continue
            try:
                manifest = load_manifest(os.path.join(folder, entry))
            except BackupError:
                continue
            if os.path.exists(manifest["path"]):
                found.append(manifest)
        found.sort(key=_age_key)
        return found

    # -- retention ------------------------------------------------------------
    def prune(self, name: str | None, keep_last: int) -> list:
        """Keep the newest ``keep_last`` backups; drop older ones and leftovers.

        Call only while holding the server's lock: leftovers of killed runs
        (temporary files, data files without a manifest) are removed too.
        """
        keep_last = max(1, keep_last)
        backups = self.backups(name)
        removed = []
        for manifest in backups[:-keep_last]:
            os.unlink(manifest["manifest_path"])  # no longer a backup from here on
            if os.path.exists(manifest["path"]):
                os.unlink(manifest["path"])
            removed.append(manifest["data_file"])
        folder = self.repo_dir(name)
        entries = os.listdir(folder) if os.path.isdir(folder) else []
        stems = {e[:-len(MANIFEST_SUFFIX)] for e in entries if e.endswith(MANIFEST_SUFFIX)}
        for entry in entries:
            orphan = not entry.startswith(".") and not entry.endswith(MANIFEST_SUFFIX) \
                and entry.split(".", 1)[0] not in stems
            if entry.startswith(TMP_PREFIX) or orphan:
                os.unlink(os.path.join(folder, entry))
                removed.append(entry)
        if removed:
            fsync_dir(folder)
        return removed


def _age_key(manifest: dict) -> tuple:
    """Oldest first: by stamp, then by the collision counter (``-2``, ``-3``...)."""
    stem = os.path.basename(manifest["manifest_path"])[:-len(MANIFEST_SUFFIX)]
    base, dummy, count = stem.partition("-")
    return (manifest["start"], base, int(count) if count.isdigit() else 1)


def load_manifest(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise BackupError("Manifest %s does not exist." % path) from None
    except (OSError, ValueError) as exc:
        raise BackupError("Manifest %s cannot be read: %s." % (path, exc)) from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise BackupError("%s is not a repobackup manifest." % path)
    if manifest["format"] != MANIFEST_FORMAT:
        raise BackupError("Manifest %s has format %r; this engine reads format %d."
                          % (path, manifest["format"], MANIFEST_FORMAT))
    for key in ("kind", "repository", "sha256", "size", "data_file", "start"):
        if key not in manifest:
            raise BackupError("Manifest %s lacks the field %r." % (path, key))
    if os.path.basename(manifest["data_file"]) != manifest["data_file"]:
        raise BackupError("Manifest %s names a data file outside its folder." % path)
    folder = os.path.dirname(os.path.abspath(path))
    manifest["path"] = os.path.join(folder, manifest["data_file"])
    manifest["manifest_path"] = os.path.abspath(path)
    return manifest


def resolve(path: str) -> dict:
    """The manifest of a backup named by its data file or its manifest."""
    if path.endswith(MANIFEST_SUFFIX):
        return load_manifest(path)
    folder, base = os.path.split(os.path.abspath(path))
    stem = base.split(".", 1)[0]
    manifest_path = os.path.join(folder, stem + MANIFEST_SUFFIX)
    if not os.path.exists(manifest_path):
        raise BackupError("%s has no manifest beside it (%s), so it is not a complete backup."
                          % (path, os.path.basename(manifest_path)))
    manifest = load_manifest(manifest_path)
    if manifest["data_file"] != base:
        raise BackupError("Manifest %s describes %s, not %s." % (manifest_path, manifest["data_file"], base))
    return manifest


def check_data(manifest: dict) -> None:
    """The data file is there, of the recorded size, with the recorded sha256."""
    path = manifest["path"]
    if not os.path.exists(path):
        raise BackupError("Backup data file %s is missing." % path)
    digest, size = sha256_file(path)
    if size != manifest["size"]:
        raise BackupError("Backup %s is %d bytes but its manifest says %d: it is truncated or altered."
                          % (path, size, manifest["size"]))
    if digest != manifest["sha256"]:
        raise BackupError("Backup %s does not match the sha256 in its manifest: it is corrupt." % path)
