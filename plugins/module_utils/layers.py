# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compression (zstd) and encryption (age) between a kind's plaintext and the destination.

A backup with layers is the kind's own data file, compressed with ``zstd`` when the kind's format is
not compressed already, then encrypted with ``age`` to the settings' recipients: restorable with the
standard programs alone (``age -d -i KEY FILE | zstd -d > repo.sqlite3``).  Both programs run as
argument lists in pipes; every stage's exit status is checked, and a failed stage fails the backup.

Where plaintext lives (``layered_export``): a kind that can check its data from a pipe
(``stream_check``: PostgreSQL's ``pg_restore``) writes into a FIFO in the run's private scratch folder
(0700, in the state folder), and nothing readable touches a disk; other kinds (SQLite's online
snapshot, git's archive) write a file there, which is encoded and removed at once (a killed run's
scratch goes with the next run).  The destination and SFTP staging only ever see the encoded bytes.

The manifest records the layers (``compression``, ``encryption``: scheme and recipients) and the
sha256 and size of the stored bytes, so ``verify`` works without a key.  What describes the
content (facts, database properties, the plaintext's hashes) is ``sealed``: an armored age message
to the same recipients inside the manifest, read back only with the key.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
from contextlib import contextmanager

from .errors import BackupError, FileError, RepoBackupError, SettingsError
from .layout import scratch_folder

CHUNK = 1 << 20
IDENTITY_MAX_BYTES = 64 << 10  # an identity file holds a few keys; a bigger file is not one
SEALED_MAX_CHARS = 4 << 20
COMPRESSIONS = ("none", "zstd")
ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
# Kind manifest fields that stay readable when a backup is encrypted (what verify, import's version check
# and retention need); every other field a kind returns is sealed.
READABLE = ("sessions_ended", "dump_tool", "dump_tool_version", "content")
_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


# -- recipients --------------------------------------------------------------------------------
def check_recipient(text) -> str:
    """The recipient as stored (an ``age1...`` key, or ``TYPE BASE64`` of an SSH key without its comment);
    SettingsError naming the value and what is allowed when age would not take it."""
    if not isinstance(text, str) or not text.strip():
        raise SettingsError("encrypt_to entry %r is not a recipient; use an age public key (age1...) or an "
                            "SSH public key (ssh-ed25519 ... or ssh-rsa ...)." % (text,))
    words = text.split()
    if words[0].startswith("age1") or words[0].lower().startswith("age1"):
        if len(words) != 1 or not _bech32_ok(words[0]):
            raise SettingsError("encrypt_to entry %r is not a valid age public key (age1 followed by 58 bech32 "
                                "characters, as age-keygen -y prints)." % _cut(text))
        return words[0]
    if words[0] in _SSH_TYPES or words[0].startswith(("ssh-", "ecdsa-", "sk-")):
        if words[0] not in _SSH_TYPES:
            raise SettingsError("encrypt_to entry %r is an SSH key of type %s, which age does not accept; use "
                                "ssh-ed25519 or ssh-rsa (2048 bits or more), or an age key." % (_cut(text), words[0]))
        problem = _ssh_key_problem(words[0], words[1] if len(words) > 1 else "")
        if problem:
            raise SettingsError("encrypt_to entry %r is not a valid %s public key: %s."
                                % (_cut(text), words[0], problem))
        return "%s %s" % (words[0], words[1])
    raise SettingsError("encrypt_to entry %r is not a recipient; use an age public key (age1...) or an SSH "
                        "public key (ssh-ed25519 ... or ssh-rsa ...)." % _cut(text))


def shown(recipient: str) -> str:
    """How a recipient is named to people: an age key as it is, an SSH key by type and fingerprint."""
    if recipient.startswith("age1"):
        return recipient
    kind, blob = recipient.split()[:2]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "%s SHA256:%s" % (kind, base64.b64encode(digest).decode().rstrip("="))


def _cut(text: str) -> str:
    return text if len(text) <= 90 else text[:87] + "..."


def _bech32_ok(text: str) -> bool:
    """An age X25519 recipient: bech32 (BIP 173) with the prefix ``age``, a valid checksum and 32 bytes."""
    if text != text.lower() or not text.startswith("age1") or len(text) != 62:
        return False
    data = text[4:]
    if any(c not in _BECH32 for c in data):
        return False
    values = [_BECH32.index(c) for c in data]
    expanded = [ord(c) >> 5 for c in "age"] + [0] + [ord(c) & 31 for c in "age"]
    check = 1
    for value in expanded + values:
        top = check >> 25
        check = (check & 0x1ffffff) << 5 ^ value
        for bit, gen in enumerate((0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3)):
            check ^= gen if (top >> bit) & 1 else 0
    if check != 1:
        return False
    bits = len(values[:-6]) * 5
    return bits // 8 == 32 and bits % 8 < 5


def _ssh_key_problem(kind: str, blob: str) -> str | None:
    try:
        raw = base64.b64decode(blob.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return "the key is not base64"
    fields = []
    rest = raw
    while rest:
        if len(rest) < 4:
            return "the key is cut short"
        size = struct.unpack(">I", rest[:4])[0]
        if size > len(rest) - 4:
            return "the key is cut short"
        fields.append(rest[4:4 + size])
        rest = rest[4 + size:]
    if not fields or fields[0] != kind.encode():
        return "the key inside is not of type %s" % kind
    if kind == "ssh-ed25519":
        return None if len(fields) == 2 and len(fields[1]) == 32 else "an ed25519 key is 32 bytes"
    if len(fields) != 3:
        return "an RSA key has an exponent and a modulus"
    bits = int.from_bytes(fields[2], "big").bit_length()
    return None if bits >= 2048 else "the key has %d bits; age needs 2048 or more" % bits


# -- what a backup's layers are -------------------------------------------------------------------
class Layers:
    """The layers of one backup: ``compression`` (``zstd`` or None) and the age ``recipients`` (a tuple)."""

    def __init__(self, compression: str | None = None, recipients=()):
        self.compression = compression or None
        self.recipients = tuple(recipients)

    @classmethod
    def for_export(cls, settings, compressible: bool) -> "Layers":
        """What the settings ask for a data file of a kind whose format is (not) ``compressible``."""
        compression = settings.compression if compressible and settings.compression != "none" else None
        return cls(compression, settings.encrypt_to)

    @classmethod
    def of(cls, manifest: dict) -> "Layers":
        encryption = manifest.get("encryption") or {}
        return cls(manifest.get("compression"), encryption.get("recipients", ()))

    def __bool__(self) -> bool:
        return bool(self.compression or self.recipients)

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    def suffix(self, base: str) -> str:
        return base + (".zst" if self.compression else "") + (".age" if self.recipients else "")

    def fields(self) -> dict:
        """The manifest's readable record of the layers."""
        found = {}
        if self.compression:
            found["compression"] = self.compression
        if self.recipients:
            found["encryption"] = {"scheme": "age", "recipients": list(self.recipients)}
        return found

    def encode_stages(self) -> list:
        stages = []
        if self.compression:
            stages.append([program("zstd"), "-q", "-c", "-T0"])
        if self.recipients:
            args = [program("age"), "--encrypt"]
            for recipient in self.recipients:
                args += ["-r", recipient]
            stages.append(args)
        return stages

    def decode_stages(self, identity_fd: int | None) -> list:
        stages = []
        if self.recipients:
            stages.append([program("age"), "--decrypt", "-i", "/dev/fd/%d" % identity_fd])
        if self.compression:
            stages.append([program("zstd"), "-q", "-d", "-c"])
        return stages

    def needs(self) -> list:
        """The programs these layers run."""
        return (["zstd"] if self.compression else []) + (["age"] if self.recipients else [])


def program(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/bin")
    if not found:
        raise BackupError("The program %s is not installed on this host; the backup's layers need it (Debian "
                          "package %s)." % (name, name))
    return found


def missing_programs(compression: str, encrypt_to) -> list:
    wanted = (["zstd"] if compression == "zstd" else []) + (["age"] if encrypt_to else [])
    return [name for name in wanted
            if not shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/bin")]


# -- identities ---------------------------------------------------------------------------------
def read_identity(path: str, private: bool = False) -> str:
    """The text of an identity file, never read through a symbolic link; ``private``: refused unless only its
    owner may read it (the drill identity, which stays on the host)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise BackupError("Identity file %s cannot be read: %s." % (path, why)) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BackupError("Identity file %s is not a regular file." % path)
        if private and info.st_mode & 0o077:
            raise BackupError("Identity file %s has mode %04o; a key kept on the host must be readable by its "
                              "owner only (chmod 600)." % (path, stat.S_IMODE(info.st_mode)))
        data = handle.read(IDENTITY_MAX_BYTES + 1)
    if len(data) > IDENTITY_MAX_BYTES or not data.strip():
        raise BackupError("Identity file %s is %s, so it holds no age or SSH private key."
                          % (path, "empty" if not data.strip() else "larger than %d bytes" % IDENTITY_MAX_BYTES))
    return data.decode("utf-8", "replace")


def _identity_pipe(identity: str) -> int:
    """The read end of a pipe holding ``identity``: age reads the key from it, and it never lies on a disk."""
    data = identity.encode("utf-8")
    if len(data) > IDENTITY_MAX_BYTES:
        raise BackupError("The identity given is larger than %d bytes, so it is not a key." % IDENTITY_MAX_BYTES)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)  # fits the pipe's buffer (64 KiB on Linux)
    finally:
        os.close(write_end)
    return read_end


# -- pipelines ------------------------------------------------------------------------------------
class _Pipeline:
    """Stages chained stdout to stdin, the first fed by the caller, the last writing to ``out`` (a descriptor)
    or to a pipe the caller reads; each stage's errors in a private temporary file."""

    def __init__(self, stages: list, out=None, stdin_fd=None, pass_fds=()):
        self.procs = []
        self.errors = []
        upstream = stdin_fd if stdin_fd is not None else subprocess.PIPE
        try:
            for index, args in enumerate(stages):
                last = index == len(stages) - 1
                errors = tempfile.TemporaryFile()
                self.errors.append(errors)
                proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
                    args, stdin=upstream, stdout=(out if out is not None else subprocess.PIPE) if last
                    else subprocess.PIPE, stderr=errors, pass_fds=pass_fds, close_fds=True)
                if index and self.procs[-1].stdout is not None:
                    self.procs[-1].stdout.close()  # the next stage holds it now
                self.procs.append(proc)
                upstream = proc.stdout
        except OSError as exc:
            self.abort()
            raise BackupError("%s could not be started: %s." % (os.path.basename(args[0]), exc.strerror)) from None

    @property
    def stdin(self):
        return self.procs[0].stdin

    @property
    def stdout(self):
        return self.procs[-1].stdout

    def abort(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        self.finish(check=False)

    def finish(self, check: bool = True) -> None:
        """Wait for every stage; BackupError naming the first that failed and its message."""
        for proc in self.procs:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            proc.wait()
        failed = None
        for proc, errors in zip(self.procs, self.errors):
            if proc.returncode != 0 and failed is None:
                errors.seek(0)
                failed = (os.path.basename(proc.args[0]), proc.returncode, _first_line(errors.read()))
            errors.close()
        if check and failed:
            raise StageFailed(*failed)


class StageFailed(BackupError):
    """A stage of a pipeline exited with an error (``program``, ``message``)."""

    def __init__(self, program_name: str, returncode: int, message: str):
        super().__init__("%s exited with status %d: %s." % (program_name, returncode, message))
        self.program = program_name
        self.message = message


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("age: report"):
            return line.rstrip(".")
    return "no message"


class _Feed:
    """Writes plaintext to the encoder (and the kind's stream check), hashing it on the way."""

    def __init__(self, pipeline: _Pipeline, check: _Pipeline | None):
        self.targets = [pipeline.stdin] + ([check.stdin] if check else [])
        self.digest = hashlib.sha256()
        self.size = 0
        self.broken = False

    def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        for target in self.targets:
            try:
                target.write(chunk)
            except (BrokenPipeError, ValueError):
                self.broken = True  # the stage's exit status says why

    def copy_from(self, fd: int) -> None:
        while not self.broken:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                return
            self.write(chunk)

    def close(self) -> None:
        for target in self.targets:
            try:
                target.close()
            except OSError:
                pass


def encode_file(layers: Layers, plain: str, staged: str) -> dict:
    """Encode the plaintext file ``plain`` into the new file ``staged``; {plain_sha256, plain_size}."""
    fd = os.open(plain, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        return _encode(layers, staged, lambda feed: feed.copy_from(fd))
    finally:
        os.close(fd)


def _encode(layers: Layers, staged: str, produce, check_args: list | None = None) -> dict:
    out = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        pipeline = _Pipeline(layers.encode_stages(), out=out)
    finally:
        os.close(out)
    check = None
    try:
        if check_args:
            check = _Pipeline([check_args], out=subprocess.DEVNULL)
    except BackupError:
        pipeline.abort()
        raise
    feed = _Feed(pipeline, check)
    try:
        produce(feed)
    except BaseException:
        feed.close()
        pipeline.abort()
        if check:
            check.abort()
        raise
    feed.close()
    pipeline.finish()
    if check:
        try:
            check.finish()
        except StageFailed as exc:
            raise BackupError("The data did not pass %s as it was written: %s" % (exc.program, exc.message)) from None
    return {"plain_sha256": feed.digest.hexdigest(), "plain_size": feed.size}


class StreamedExport:
    """A FIFO in a private folder for a kind's export to write into while it is encoded
    (``with StreamedExport(...) as fifo: kind.export(..., fifo)``; then ``result()``)."""

    def __init__(self, layers: Layers, folder: str, suffix: str, staged: str, check_args: list | None):
        self.layers, self.staged, self.check_args = layers, staged, check_args
        self.fifo = os.path.join(folder, "plain" + suffix)
        self.done = None
        self.error = None
        self.thread = None
        self.read_fd = self.hold_fd = None

    def __enter__(self) -> str:
        os.mkfifo(self.fifo, 0o600)
        self.read_fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO from reading as ended before the kind's program opens it.
        self.hold_fd = os.open(self.fifo, os.O_WRONLY)
        os.set_blocking(self.read_fd, True)
        self.thread = threading.Thread(target=self._run, name="repobackup-encode", daemon=True)
        self.thread.start()
        return self.fifo

    def _run(self) -> None:
        try:
            self.done = _encode(self.layers, self.staged, lambda feed: feed.copy_from(self.read_fd), self.check_args)
        except BaseException as exc:  # pylint: disable=broad-except
            self.error = exc
        finally:
            os.close(self.read_fd)  # a writer still writing gets EPIPE: a failed stage stops the export

    def __exit__(self, *exc_info) -> None:
        os.close(self.hold_fd)
        self.thread.join()
        os.unlink(self.fifo)

    def result(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.done


def decode_file(layers: Layers, stored: str, plain: str, identity: str | None, where: str) -> dict:
    """Decode the stored file ``stored`` into the new private file ``plain``; {plain_sha256, plain_size}.
    ``where`` names the backup in refusals."""
    if layers.encrypted and not identity:
        raise BackupError("Backup %s is encrypted to %s; give its private key (--identity FILE, or the module "
                          "options identity_file or identity)." % (where, ", ".join(map(shown, layers.recipients))))
    identity_fd = _identity_pipe(identity) if layers.encrypted else None
    source = os.open(stored, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        pipeline = _Pipeline(layers.decode_stages(identity_fd), stdin_fd=source,
                             pass_fds=(identity_fd,) if identity_fd is not None else ())
    finally:
        os.close(source)
        if identity_fd is not None:
            os.close(identity_fd)
    digest = hashlib.sha256()
    size = 0
    try:
        out = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(out, "wb") as handle:
            for chunk in iter(lambda: pipeline.stdout.read(CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
    except BaseException:
        pipeline.abort()
        raise
    try:
        pipeline.finish()
    except StageFailed as exc:
        if exc.program == "age" and "no identity matched" in exc.message:
            raise BackupError("Backup %s is encrypted to %s, and the identity given matches none of them; nothing "
                              "was changed." % (where, ", ".join(map(shown, layers.recipients)))) from None
        raise FileError("Backup ", where, " cannot be decoded: %s" % exc) from None
    return {"plain_sha256": digest.hexdigest(), "plain_size": size}


# -- sealed facts ---------------------------------------------------------------------------------
def seal(doc: dict, recipients) -> str:
    """``doc`` as an armored age message to ``recipients``."""
    args = [program("age"), "--encrypt", "--armor"]
    for recipient in recipients:
        args += ["-r", recipient]
    proc = subprocess.run(args, input=json.dumps(doc, sort_keys=True).encode(),  # pylint: disable=ansible-bad-function
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise BackupError("age could not seal the backup's facts: %s." % _first_line(proc.stderr))
    return proc.stdout.decode("ascii")


def unseal(text: str, identity: str, where: str, recipients) -> dict:
    identity_fd = _identity_pipe(identity)
    try:
        proc = subprocess.run([program("age"), "--decrypt", "-i", "/dev/fd/%d" % identity_fd],  # pylint: disable=ansible-bad-function
                              input=text.encode("ascii", "replace"), capture_output=True, check=False,
                              pass_fds=(identity_fd,))
    finally:
        os.close(identity_fd)
    if proc.returncode != 0:
        message = _first_line(proc.stderr)
        if "no identity matched" in message:
            raise BackupError("Backup %s is encrypted to %s, and the identity given matches none of them; nothing "
                              "was changed." % (where, ", ".join(map(shown, recipients))))
        raise BackupError("The sealed facts of backup %s cannot be read: %s." % (where, message))
    try:
        doc = json.loads(proc.stdout.decode("utf-8"))
    except ValueError as exc:
        raise BackupError("The sealed facts of backup %s are not JSON: %s." % (where, exc)) from None
    if not isinstance(doc, dict):
        raise BackupError("The sealed facts of backup %s are not an object." % where)
    return doc


def split_fields(extra: dict, layers: Layers, plain: dict, content: str | None) -> dict:
    """The manifest fields of a layered export: the layers, the kind's readable fields, and the rest (with the
    plaintext's hashes) sealed when encrypted, plain when only compressed."""
    private = dict(plain)
    if content is not None:
        private["content_sha256"] = content
    fields = layers.fields()
    for key, value in extra.items():
        if key in READABLE or not layers.encrypted:
            fields[key] = value
        else:
            private[key] = value
    if layers.encrypted:
        fields["sealed"] = seal(private, layers.recipients)
    else:
        fields.update(private)
    return fields


def opened_fields(manifest: dict, identity: str | None) -> dict:
    """``manifest`` with its sealed fields read back (the key is needed when it has any)."""
    sealed = manifest.get("sealed")
    if not sealed:
        return manifest
    where = manifest.get("manifest_path", "?")
    layers = Layers.of(manifest)
    if not identity:
        raise BackupError("Backup %s is encrypted to %s; give its private key (--identity FILE, or the module "
                          "options identity_file or identity)." % (where, ", ".join(map(shown, layers.recipients))))
    found = dict(manifest)
    for key, value in unseal(sealed, identity, where, layers.recipients).items():
        found.setdefault(key, value)
    return found


def layered_export(layers: Layers, produce, scratch: str | None, suffix: str, stream_check: list | None = None,
                   content_of=None):
    """What ``BackupStore.publish`` runs to write a layered backup into its staged file: ``produce(path)``
    (the kind's export, returning its manifest fields) writes plaintext into the private ``scratch``, through
    a FIFO when the kind has a ``stream_check`` and no content hash is asked (``content_of``), else into a
    file removed as soon as it is encoded.  Returns the manifest fields, with ``_content`` (the content hash,
    or None) for publish to compare and keep out of the readable manifest."""

    def export(staged: str) -> dict:
        with scratch_folder(scratch) as work:
            if stream_check and content_of is None:
                streamed = StreamedExport(layers, work, suffix, staged, stream_check)
                try:
                    with streamed as fifo:
                        extra = produce(fifo) or {}
                except RepoBackupError:
                    if streamed.error is not None:  # the encoder stopped first: the kind's error only echoes it
                        raise streamed.error from None
                    raise
                plain, content = streamed.result(), None
            else:
                path = os.path.join(work, "plain" + suffix)
                try:
                    extra = produce(path) or {}
                    content = content_of(path) if content_of else None
                    plain = encode_file(layers, path, staged)
                finally:
                    for leftover in (path, path + "-journal", path + "-wal"):
                        if os.path.lexists(leftover):
                            os.unlink(leftover)
        fields = split_fields(extra, layers, plain, content)
        fields["_content"] = content
        fields["_plain_size"] = plain["plain_size"]
        return fields

    return export


@contextmanager
def opened_backup(manifest: dict, local: str, identity: str | None, scratch: str | None):
    """(manifest with its sealed fields, path of the plaintext) of a backup whose stored bytes at ``local`` were
    checked: a layered one is decoded into a private scratch folder (removed afterwards) and its plaintext
    checked against the sha256 its manifest recorded; a plain one is given as it is."""
    layers = Layers.of(manifest)
    if not layers:
        yield manifest, local
        return
    where = manifest.get("manifest_path", local)
    manifest = opened_fields(manifest, identity)
    with scratch_folder(scratch) as work:
        plain = os.path.join(work, "plain")
        got = decode_file(layers, local, plain, identity, where)
        expected = manifest.get("plain_sha256")
        if expected is not None and got["plain_sha256"] != expected:
            raise FileError("Backup ", where, " decodes to data whose sha256 is not the one its manifest recorded "
                            "for the plaintext: it is corrupt or was altered.")
        yield manifest, plain
