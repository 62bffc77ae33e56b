# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups on a destination: layout, manifests, atomic publish, retention, verification.

Layout: ``<destination>/<host>/<server>/<repository>/<stamp><suffix>`` for the
data file and ``<stamp>.manifest.json`` beside it, host and repository names
through ``encode_name``.  A backup exists only once its manifest is published;
the manifest is written last.

Manifests and data files are untrusted input: they lie on a destination other
people may write.  ``parse_manifest`` checks the type and range of every field
the engine uses; a manifest that fails, or a data file that is not a regular
file of the recorded size and sha256, is a corrupt backup: skipped, noted in
``BackupStore.rejected``, never fatal, and never a reason to remove a good one.
Backups are ordered by their manifest's ``sequence`` (one more than the highest
of the repository's backups when it was published), then by start and stamp, so
a clock that stepped back or forward cannot make an older backup look newer.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import posixpath
import re
import stat
import threading
from contextlib import contextmanager

from .clock import iso, parse_iso, utc_now
from .destination import TMP_PREFIX, LocalDestination, sha256_file, sha256_stream
from .errors import BackupError, FileError, MissingFile, SettingsError
from .facts import facts_problem
from .layers import ARMOR_BEGIN, SEALED_MAX_CHARS, check_recipient
from .layout import VERSION, decode_name, dump_json, encode_name
from .retention import keep
from .settings import KINDS

# Format 2 (0.2.0) adds what a faithful restore and a drill need (versions, facts, database properties); an
# engine that reads only format 1 refuses it by name instead of restoring less than the backup holds.
MANIFEST_FORMAT = 2
OLDEST_MANIFEST_FORMAT = 1  # written by 0.1.0; still read, verified, imported and pruned
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_MAX_BYTES = 16 << 20  # a manifest is a few hundred bytes; a bigger file is not one
SIZE_MAX = SEQUENCE_MAX = 2 ** 63 - 1  # the largest file offset; sequence numbers stop there too
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The folder of a server's cluster-wide globals (PostgreSQL roles, tablespaces), beside the
# repositories' folders.  encode_name turns every '%' into '%25', so no repository's folder
# can be named this.  Store methods take the repository name None for it.
GLOBALS_DIR = "%globals"
__all__ = ["BackupStore", "sha256_file", "TMP_PREFIX"]


def _open_regular(path: str):
    """A local file opened for reading: never through a symbolic link, and only a regular file (a directory, FIFO
    or device is refused without blocking on it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileError("", path, " is a symbolic link; the engine never follows one there.") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileError("", path, " is not a regular file.")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class BackupStore:
    """One host's and one server's backups on a destination (a ``destination.*Destination``)."""

    def __init__(self, destination, host: str, server: str):
        self.fs = LocalDestination(destination) if isinstance(destination, str) else destination
        self.destination = self.fs.root
        self.host = host
        self.server = server
        self.base = posixpath.join(self.fs.root, encode_name(host), server)
        # Per repository folder: {path of a manifest or data file: why that backup was skipped}, as last seen.
        self.rejected = {}
        # Within ``one_reading()``: the valid manifests read or written, by path, so that an export reads each
        # once (its sequence before, retention after); None outside.  Kept per thread: parallel exports.
        self._memo = threading.local()

    @contextmanager
    def one_reading(self):
        """Read each manifest once until the block ends (the server's lock is held: nothing else writes)."""
        self._memo.parsed = {}
        try:
            yield
        finally:
            self._memo.parsed = None

    @property
    def _parsed(self) -> dict:
        """The manifests read in this ``one_reading`` block; outside one, an empty dict that keeps nothing."""
        parsed = getattr(self._memo, "parsed", None)
        return {} if parsed is None else parsed

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
        the destination.  The manifest's ``sequence`` is one more than the
        highest among the repository's backups: their order, whatever the clock.
        """
        self.fs.check_ready()
        folder = self.repo_dir(name)
        for level in (posixpath.dirname(self.base), self.base, folder):  # host, server, repository
            self.fs.makedirs(level, 0o750)
        sequence = self.next_sequence(name)
        start = utc_now()
        staged = self.fs.stage(folder, suffix)
        try:
            extra = dict(export(staged) or {})
            # What a layered export knows of its plaintext (``_content``, ``_plain_size``) is this run's to report,
            # not the manifest's: it records them where they belong (sealed when encrypted).
            private = {key[1:]: extra.pop(key) for key in list(extra) if key.startswith("_")}
            content = private.pop("content", None)
            digest, size = sha256_file(staged)
            if content_of:
                content = content_of(staged)
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
        if content is not None and content_of:
            manifest["content_sha256"] = content
        manifest.update(extra)
        manifest["sequence"] = sequence
        manifest_path = posixpath.join(folder, stamp + MANIFEST_SUFFIX)
        self.fs.write_file(manifest_path, dump_json(manifest))
        manifest["path"] = data_path
        manifest["manifest_path"] = manifest_path
        self._parsed[manifest_path] = dict(manifest)
        if content is not None:  # the run's own record (status), also when the manifest keeps it sealed
            manifest.setdefault("content_sha256", content)
        for key, value in private.items():
            manifest.setdefault(key, value)
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
    def _manifests(self, name: str | None) -> tuple:
        """(names in the folder of ``name``, its valid manifests); the others are noted in ``rejected``."""
        folder = self.repo_dir(name)
        entries = set(self.fs.listdir(folder))
        rejected = {}
        found = []
        for entry in sorted(entries):
            if not entry.endswith(MANIFEST_SUFFIX) or entry.startswith("."):
                continue
            path = posixpath.join(folder, entry)
            try:
                found.append(self._load_here(path, name))
            except BackupError as exc:
                rejected[path] = _safe(str(exc))
        self.rejected[folder] = rejected
        return entries, found

    def _load_here(self, path: str, name: str | None) -> dict:
        """The manifest at ``path``, in the folder of repository ``name``: it must name that repository."""
        if path in self._parsed:
            return dict(self._parsed[path])
        if _safe(path) != path:
            raise BackupError("Manifest %s has a name that is not UTF-8 text, so the engine never wrote it."
                              % _safe(self.address(path)))
        manifest = self.load(path)
        if manifest["repository"] != name:
            raise BackupError("Manifest %s names repository %s, but lies in the folder of %s."
                              % (self.address(path), _shown(manifest["repository"]),
                                 "the globals" if name is None else repr(name)))
        self._parsed[path] = dict(manifest)
        return manifest

    def backups(self, name: str | None) -> list:
        """Complete backups of ``name`` (manifest valid, data present), oldest first (by sequence, start, stamp)."""
        entries, manifests = self._manifests(name)
        found = []
        for manifest in manifests:
            if manifest["data_file"] in entries:
                found.append(manifest)
            else:
                self._reject(manifest["manifest_path"], "Backup %s has no data file %s beside it."
                             % (self.address(manifest["manifest_path"]), manifest["data_file"]))
        found.sort(key=_age_key)
        return found

    def globals_beside(self, manifest: dict) -> list:
        """The complete globals backups of the same host in the globals folder beside the folder of the backup
        ``manifest`` (wherever it lies: a path named on the command line, too), oldest first."""
        folder = posixpath.join(posixpath.dirname(posixpath.dirname(manifest["manifest_path"])), GLOBALS_DIR)
        try:
            entries = set(self.fs.listdir(folder))
        except (OSError, BackupError):
            return []
        found = []
        for entry in sorted(entries):
            if not entry.endswith(MANIFEST_SUFFIX) or entry.startswith("."):
                continue
            try:
                saved = self.load(posixpath.join(folder, entry))
            except BackupError:
                continue
            if saved["repository"] is None and saved.get("content") == "globals" \
                    and saved["data_file"] in entries and saved.get("host") == manifest.get("host"):
                found.append(saved)
        found.sort(key=_age_key)
        return found

    def next_sequence(self, name: str | None) -> int:
        """The sequence number of the next backup of ``name``: one more than the highest there (1 for the first)."""
        highest = max((m.get("sequence", 0) for m in self._manifests(name)[1]), default=0)
        return min(highest + 1, SEQUENCE_MAX)

    def rejected_in(self, name: str | None) -> list:
        """Why backups of ``name`` were skipped, as the last reads here found them."""
        found = self.rejected.get(self.repo_dir(name), {})
        return [found[path] for path in sorted(found)]

    def _reject(self, path: str, why: str) -> None:
        self.rejected.setdefault(posixpath.dirname(path), {})[path] = _safe(why)

    def newest(self, name: str | None) -> dict | None:
        """The complete backup of ``name`` with the newest stamp, reading as few manifests as it takes (usually
        one).  Stamps follow the clock, so this is for estimates (the expected size); ``backups`` gives the order."""
        folder = self.repo_dir(name)
        entries = set(self.fs.listdir(folder))
        stems = [e[:-len(MANIFEST_SUFFIX)] for e in entries if e.endswith(MANIFEST_SUFFIX) and not e.startswith(".")]
        for stem in sorted(stems, key=_stem_key, reverse=True):
            path = posixpath.join(folder, stem + MANIFEST_SUFFIX)
            try:
                manifest = self._load_here(path, name)
            except BackupError as exc:
                self._reject(path, str(exc))
                continue
            if manifest["data_file"] in entries:
                return manifest
        return None

    def gone(self, address: str | None) -> bool:
        """True when ``address`` names a backup here (its manifest) whose manifest or data file is no longer there.

        Addresses elsewhere (another destination, another host's folder) are not judged: False.
        """
        if not isinstance(address, str) or not address.endswith(MANIFEST_SUFFIX):
            return False
        try:
            path = self.fs.path_of(address)
        except BackupError:
            return False
        if not path.startswith(self.base + "/"):
            return False
        folder = posixpath.dirname(path)
        entries = set(self.fs.listdir(folder))
        if posixpath.basename(path) not in entries:
            return True
        try:
            manifest = self.load(path)
        except BackupError:
            return True
        return manifest["data_file"] not in entries

    def load(self, manifest_path: str) -> dict:
        """The manifest at ``manifest_path`` on this destination."""
        try:
            data = self._read_manifest(manifest_path)
        except FileNotFoundError:
            raise MissingFile("Manifest ", self.address(manifest_path), " does not exist.") from None
        except OSError as exc:
            raise BackupError("Manifest %s cannot be read: %s." % (self.address(manifest_path), exc)) from None
        return parse_manifest(data, manifest_path, self.address(manifest_path))

    def _read_manifest(self, path: str) -> bytes:
        if isinstance(self.fs, LocalDestination):
            with _open_regular(path) as handle:
                data = handle.read(MANIFEST_MAX_BYTES + 1)
        else:
            data = self.fs.read_bytes(path)
        if len(data) > MANIFEST_MAX_BYTES:
            raise BackupError("Manifest %s is larger than %d bytes, so it is not one."
                              % (self.address(path), MANIFEST_MAX_BYTES))
        return data

    def _hash(self, path: str) -> tuple:
        if not isinstance(self.fs, LocalDestination):
            return self.fs.hash_file(path)
        try:
            handle = _open_regular(path)
        except FileError as exc:
            raise FileError("Backup data file ", exc.file, exc.after) from None
        with handle:
            return sha256_stream(handle)

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
            digest, size = self._hash(manifest["path"])
        except (FileNotFoundError, MissingFile):  # MissingFile: an SFTP server's "no such file"
            raise MissingFile("Backup data file ", where, " is missing.") from None
        except OSError as exc:
            raise FileError("Backup data file ", where, " cannot be read: %s." % (exc.strerror or exc)) from None
        if size != manifest["size"]:
            raise FileError("Backup ", where, " is %d bytes but its manifest says %d: it is truncated or altered."
                            % (size, manifest["size"]))
        if digest != manifest["sha256"]:
            raise FileError("Backup ", where, " does not match the sha256 in its manifest: it is corrupt.")

    def is_good(self, manifest: dict) -> bool:
        try:
            self.check(manifest)
        except BackupError as exc:
            self._reject(manifest["manifest_path"], str(exc))
            return False
        return True

    # -- retention ------------------------------------------------------------
    def prune(self, name: str | None, policy, verified=()) -> list:
        """Apply the retention ``policy`` (keep_last, keep_daily, keep_weekly, keep_monthly) to ``name``.

        ``policy`` may be a plain keep_last number.  Backups in ``verified``
        (manifest paths of what the caller just published and verified on
        write) are never removed and count as good without a new read.  The
        newest good backup is never removed either: others are checked newest
        first until one passes.  Age is the manifests' order (sequence, then
        start and stamp); backups whose manifest is not valid are not counted
        and never removed.  Call only after a successful backup and while
        holding the server's lock: leftovers of killed runs (temporary files,
        data files without a manifest) are removed too.  A file that cannot be
        removed is noted in ``rejected`` and left; prune never raises for one.
        """
        if not isinstance(policy, dict):
            policy = {"keep_last": policy}
        backups = self.backups(name)
        # Keys are positions in age order: keep() takes that order, and the start only for calendar periods.
        kept = keep([(index, parse_iso(m["start"])) for index, m in enumerate(backups)], ordered=True, **policy)
        kept |= {index for index, m in enumerate(backups) if m["manifest_path"] in verified}
        for index in range(len(backups) - 1, -1, -1):
            if backups[index]["manifest_path"] in verified or self.is_good(backups[index]):
                kept.add(index)
                break
        removed = []
        for index, manifest in enumerate(backups):
            if index in kept:
                continue
            if self._remove(manifest["manifest_path"]):  # no longer a backup from here on
                self._remove(manifest["path"])
                removed.append(manifest["data_file"])
        folder = self.repo_dir(name)
        entries = self.fs.listdir(folder)
        stems = {e[:-len(MANIFEST_SUFFIX)] for e in entries if e.endswith(MANIFEST_SUFFIX)}
        for entry in entries:
            orphan = not entry.startswith(".") and not entry.endswith(MANIFEST_SUFFIX) \
                and entry.split(".", 1)[0] not in stems
            if (entry.startswith(TMP_PREFIX) or orphan) and self._remove(posixpath.join(folder, entry)):
                removed.append(entry)
        if removed:
            self.fs.sync_dir(folder)
        return removed

    def _remove(self, path: str) -> bool:
        self._parsed.pop(path, None)
        try:
            self.fs.remove(path)
        except (OSError, BackupError) as exc:
            why = getattr(exc, "strerror", None) or exc
            self._reject(path, "%s cannot be removed: %s." % (self.address(path), why))
            return False
        return True


def _stem_key(stem: str) -> tuple:
    """A backup's stamp in age order: the UTC second, then the collision counter (``-2``, ``-3``...)."""
    base, dummy, count = stem.partition("-")
    return (base, int(count) if count.isascii() and count.isdigit() else 1)


def _age_key(manifest: dict) -> tuple:
    """Oldest first: by sequence (manifests without one, from older engines, come first), then start, stamp."""
    stem = posixpath.basename(manifest["manifest_path"])[:-len(MANIFEST_SUFFIX)]
    sequence = manifest.get("sequence")
    return (sequence is not None, sequence or 0, parse_iso(manifest["start"])) + _stem_key(stem)


def _utc_time(value) -> str | None:
    """Why ``value`` is not an ISO 8601 time in UTC (such as 2026-11-27T01:00:00Z), or None."""
    if not isinstance(value, str) or len(value) > 40:
        return "is not an ISO 8601 time in UTC"
    try:
        moment = parse_iso(value)
    except (ValueError, OverflowError) as exc:
        return "is not an ISO 8601 time in UTC (%s)" % exc
    if moment.tzinfo is None or moment.utcoffset() != datetime.timedelta(0):
        return "is not in UTC"
    if not 1970 <= moment.year <= 9998:
        return "is not between the years 1970 and 9998"
    return None


def _count(value, low: int, high: int) -> bool:
    """An int (not a bool) from ``low`` to ``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _safe(text: str) -> str:
    """``text`` that can be written as UTF-8: a file name that is not (a byte ``\\xff``) shows its bytes escaped."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to (it came from JSON)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _shown(value) -> str:
    """repr of a value read from a manifest, cut short: whatever a manifest holds, a message stays one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value) -> bool:
    return isinstance(value, str) and value != "" and "\0" not in value


def _data_file_problem(value, stem: str | None) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 255 or "\0" in value:
        return "is not a file name"
    if "/" in value or value.startswith(".") or value.endswith(MANIFEST_SUFFIX):
        return "names a data file outside its folder (a plain file name not starting with '.' is allowed)"
    if stem is not None and not value.startswith(stem + "."):
        return "is not named after its manifest (%s.*)" % stem
    return None


def _field_problem(manifest: dict, stem: str | None) -> str | None:
    """The first field of ``manifest`` whose type or range is wrong, as 'field value is ...', or None."""
    checks = [
        ("kind", manifest["kind"] in KINDS if isinstance(manifest["kind"], str) else False,
         "is not one of %s" % ", ".join(KINDS)),
        ("repository", manifest["repository"] is None or _text(manifest["repository"]),
         "is neither a repository name nor null (the globals)"),
        ("sha256", isinstance(manifest["sha256"], str) and _HEX64.fullmatch(manifest["sha256"]) is not None,
         "is not 64 lowercase hexadecimal digits"),
        ("size", _count(manifest["size"], 0, SIZE_MAX), "is not a whole number of bytes from 0 to %d" % SIZE_MAX),
    ]
    for key, good, what in checks:
        if not good:
            return "%s %s %s" % (key, _shown(manifest[key]), what)
    problem = _data_file_problem(manifest["data_file"], stem)
    if problem:
        return "data_file %s %s" % (_shown(manifest["data_file"]), problem)
    for key in ("start", "end"):
        problem = _utc_time(manifest[key]) if key in manifest else None
        if problem:
            return "%s %s %s" % (key, _shown(manifest[key]), problem)
    optional = [
        ("sequence", lambda v: _count(v, 1, SEQUENCE_MAX), "is not a whole number from 1 to %d" % SEQUENCE_MAX),
        ("host", _text, "is not a host name"),
        ("server", _text, "is not a server name"),
        ("content", lambda v: isinstance(v, str), "is not text"),
        ("content_sha256", lambda v: v is None or (isinstance(v, str) and _HEX64.fullmatch(v) is not None),
         "is neither null nor 64 lowercase hexadecimal digits"),
        ("sessions_ended", lambda v: v is None or _count(v, 0, SIZE_MAX), "is neither null nor a count"),
        ("in_use", lambda v: isinstance(v, str), "is not text"),
        ("dump_tool", _text, "is not text"),
        ("dump_tool_version", _text, "is not text"),
        ("facts", lambda v: facts_problem(v) is None, "is not {tables: {name: row count}, objects: [text]}"),
        ("database", lambda v: isinstance(v, dict), "is not an object"),
        ("compression", lambda v: v == "zstd", "is not zstd (the only compression there is)"),
        ("encryption", _encryption_ok, "is not {scheme: age, recipients: [age or SSH public keys]}"),
        ("sealed", lambda v: isinstance(v, str) and v.startswith(ARMOR_BEGIN) and len(v) <= SEALED_MAX_CHARS,
         "is not an armored age message"),
        ("plain_sha256", lambda v: isinstance(v, str) and _HEX64.fullmatch(v) is not None,
         "is not 64 lowercase hexadecimal digits"),
        ("plain_size", lambda v: _count(v, 0, SIZE_MAX), "is not a whole number of bytes"),
    ]
    for key, good, what in optional:
        if key in manifest and not good(manifest[key]):
            return "%s %s %s" % (key, _shown(manifest[key]), what)
    return None


def _encryption_ok(value) -> bool:
    if not isinstance(value, dict) or value.get("scheme") != "age":
        return False
    recipients = value.get("recipients")
    if not isinstance(recipients, list) or not recipients or len(recipients) > 64:
        return False
    try:
        return all(check_recipient(r) == r for r in recipients)
    except SettingsError:
        return False


def parse_manifest(data: bytes, path: str, where: str | None = None) -> dict:
    """Read and check a manifest's bytes; ``path`` is where it lies, ``where`` how to name it.

    Every field the engine uses is checked for type and range; a manifest that
    fails raises BackupError naming the field, its value and what is allowed.
    """
    where = where or path
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise BackupError("Manifest %s cannot be read: %s." % (where, exc)) from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise BackupError("%s is not a repobackup manifest." % where)
    if not _count(manifest["format"], OLDEST_MANIFEST_FORMAT, MANIFEST_FORMAT):
        raise BackupError("Manifest %s has format %s; this engine reads formats %d to %d."
                          % (where, _shown(manifest["format"]), OLDEST_MANIFEST_FORMAT, MANIFEST_FORMAT))
    for key in ("kind", "repository", "sha256", "size", "data_file", "start"):
        if key not in manifest:
            raise BackupError("Manifest %s lacks the field %r." % (where, key))
    name = posixpath.basename(path)
    problem = _field_problem(manifest, name[:-len(MANIFEST_SUFFIX)] if name.endswith(MANIFEST_SUFFIX) else None)
    if not problem and bool(manifest.get("sealed")) != bool(manifest.get("encryption")):
        problem = "sealed and encryption go together, and only one of them is there"
    if problem:
        raise BackupError("Manifest %s is not valid: %s." % (where, problem))
    manifest["path"] = posixpath.join(posixpath.dirname(path), manifest["data_file"])
    manifest["manifest_path"] = path
    return manifest


def resolve(path: str) -> dict:
    """The manifest of a backup on this host named by its data file or its manifest."""
    return LOCAL_FILES.resolve(os.path.abspath(path))


def check_data(manifest: dict) -> None:
    """A local backup's data file is there, of the recorded size, with the recorded sha256."""
    LOCAL_FILES.check(manifest)


# Backups named by a path on this host, wherever they lie (resolve, load, check only).
LOCAL_FILES = BackupStore(LocalDestination("/"), "-", "-")
