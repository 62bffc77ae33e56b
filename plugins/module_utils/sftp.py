# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An sftp:// destination through paramiko.

Trust: the server's host key must match the pinned key (``host_key``) or an
entry of a known_hosts file; an unknown or changed key stops the connection
before authentication, and nothing is ever added to a known_hosts file.
Authentication is by a private key file only.

Uploads go to a temporary name in the target folder, are size-checked (and,
with ``verify_upload``, read back and hashed), then renamed; the manifest is
written the same way after the data file.  A dropped connection is retried up
to ``retries`` times, each attempt starting the file over under a new name.
All remote operations of one destination are serialised (one SSH connection).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import posixpath
import pwd
import socket
import stat as statmod
import threading
import time
import uuid
from contextlib import contextmanager

from .destination import TMP_PREFIX, copy_to_local, discard_local, sha256_stream, stage_privately
from .errors import BackupError, MissingFile
from .layout import makedirs, state_owner
from .sftp_url import parse_sftp_url

_CHUNK = 1 << 20
_SMALL_REQUEST = 32768  # what every SFTP server takes; OpenSSH says how much more through limits@openssh.com
_NET_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
               errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
_SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


class _Dropped(Exception):
    """The connection failed or broke: worth another attempt."""


class _Unsupported(IOError):
    """The SFTP server does not know the request (status SSH_FX_OP_UNSUPPORTED)."""


def _paramiko():
    try:
        import paramiko  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise BackupError("sftp:// destinations need paramiko on this host (Debian, Ubuntu: apt install "
                          "python3-paramiko; the autobackup role installs it).") from None
    if paramiko.__version__.split(".")[0] in ("1", "2") and not getattr(paramiko.Message, "_repobackup", False):
        # paramiko 2 builds (and drops) an error text with repr() of every packet it sends; the repr of a
        # 32 KiB packet took half of an upload's time (make bench).  A short repr changes nothing else.
        paramiko.Message.__repr__ = lambda self: "paramiko.Message(%d bytes)" % len(self.packet.getvalue())
        paramiko.Message._repobackup = True  # pylint: disable=protected-access
    return paramiko


def default_known_hosts(run_as: str | None) -> list:
    """The run-as user's ~/.ssh/known_hosts and the system's file, whoever runs the engine (cron or a door)."""
    home = None
    if run_as:
        try:
            home = pwd.getpwnam(run_as).pw_dir
        except KeyError:
            home = None
    home = home or os.path.expanduser("~")
    return [os.path.join(home, ".ssh", "known_hosts"), _SYSTEM_KNOWN_HOSTS]


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def load_private_key(path: str):
    """A private key from ``path``; refused with one sentence when unreadable or protected by a passphrase."""
    paramiko = _paramiko()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise BackupError("SFTP key file %s cannot be read: %s." % (path, exc.strerror)) from None
    loaders = [getattr(paramiko, name).from_private_key_file
               for name in ("Ed25519Key", "ECDSAKey", "RSAKey") if hasattr(paramiko, name)]
    for load in loaders:
        try:
            return load(path)
        except paramiko.PasswordRequiredException:
            raise BackupError("SFTP key file %s is protected by a passphrase; unattended backups need a key "
                              "without one (passwords are never stored)." % path) from None
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    raise BackupError("SFTP key file %s is not a private key this host can read (ed25519, ecdsa or rsa)." % path)


class SftpDestination:
    kind = "sftp"

    def __init__(self, url: str, options: dict, staging: str):
        self.url = parse_sftp_url(url)
        self.root = self.url.path
        self.options = options
        self.staging = staging
        self.retries = int(options.get("retries", 3))
        self.timeout = int(options.get("timeout", 30))
        self.verify_upload = bool(options.get("verify_upload"))
        self._transport = None
        self._sftp = None
        self._lock = threading.RLock()
        self.reconnects = 0
        self._write_size = self._read_size = _SMALL_REQUEST

    # -- names ----------------------------------------------------------------------
    def address(self, path: str) -> str:
        return self.url.url(path)

    def path_of(self, address: str) -> str:
        """The remote path of an sftp:// address on this destination's server."""
        other = parse_sftp_url(address)
        if (other.user, other.host, other.port) != (self.url.user, self.url.host, self.url.port):
            raise BackupError("%s is not on this server's destination %s." % (address, self.address(self.root)))
        return other.path

    # -- connection -------------------------------------------------------------------
    def _expected_keys(self) -> tuple:
        """(set of key blobs, where they came from) for this server."""
        pinned = self.options.get("host_key")
        if pinned:
            return {base64.b64decode(pinned.split()[1])}, "sftp_host_key"
        paramiko = _paramiko()
        files = [self.options["known_hosts"]] if self.options.get("known_hosts") else default_known_hosts(
            self.options.get("run_as"))
        blobs = set()
        for path in files:
            if not os.path.exists(path):
                continue
            try:
                entries = paramiko.HostKeys(path).lookup(self.url.known_hosts_name()) or {}
            except (OSError, paramiko.SSHException) as exc:
                raise BackupError("known_hosts file %s cannot be read: %s." % (path, exc)) from None
            blobs.update(key.asbytes() for key in entries.values())
        return blobs, " or ".join(files)

    @staticmethod
    def _key_types(blobs: set) -> list:
        types = []
        for blob in blobs:
            name = blob[4:4 + int.from_bytes(blob[:4], "big")].decode("ascii", "replace")
            types.extend(_RSA_ALGORITHMS if name == "ssh-rsa" else (name,))
        return types

    def _connect(self) -> None:
        try:
            self._open()
        except BaseException:
            self.close()  # nothing half-open stays behind a refusal
            raise

    def _open(self) -> None:
        paramiko = _paramiko()
        expected, source = self._expected_keys()
        where = "%s:%d" % (self.url.host, self.url.port)
        try:
            sock = socket.create_connection((self.url.host, self.url.port), timeout=self.timeout)
        except OSError as exc:
            raise _Dropped("cannot connect to %s: %s" % (where, getattr(exc, "strerror", None) or exc)) from None
        transport = paramiko.Transport(sock)
        self._transport = transport
        try:
            options = transport.get_security_options()
            wanted = [t for t in self._key_types(expected) if t in options.key_types]
            if wanted:  # negotiate the key type we know, as OpenSSH does
                options.key_types = wanted
            transport.banner_timeout = self.timeout
            transport.auth_timeout = self.timeout
            transport.start_client(timeout=self.timeout)
            offered = transport.get_remote_server_key()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self._is_dropped(exc, transport):  # e.g. no algorithm in common: the same every time
                raise BackupError("SSH handshake with %s failed: %s." % (where, exc)) from None
            raise _Dropped("SSH handshake with %s failed: %s" % (where, exc)) from None
        blob = offered.asbytes()
        if not expected:
            raise BackupError(
                "The host key of %s is unknown (the server offers %s %s): it is in neither sftp_host_key nor %s, and "
                "keys are never accepted automatically; pin it with sftp_host_key after checking it out of band."
                % (self.url.known_hosts_name(), offered.get_name(), fingerprint(blob), source))
        if blob not in expected:
            raise BackupError(
                "The host key of %s does not match %s: the server offers %s %s. Nothing was sent; if the server's "
                "key was replaced on purpose, update %s." % (self.url.known_hosts_name(), source,
                                                             offered.get_name(), fingerprint(blob), source))
        key = load_private_key(self.options["key_file"])
        try:
            transport.auth_publickey(self.url.user, key)
        except paramiko.AuthenticationException:
            raise BackupError("The SFTP server %s refused the key %s for user %r."
                              % (where, self.options["key_file"], self.url.user)) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self._is_dropped(exc, transport):
                raise BackupError("Authentication with %s failed: %s." % (where, exc)) from None
            raise _Dropped("authentication with %s broke off: %s" % (where, exc)) from None
        transport.set_keepalive(15)
        try:
            client = _sftp_client_class(paramiko).from_transport(transport)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self._is_dropped(exc, transport):  # e.g. the server refuses the subsystem to this user
                raise BackupError("The SFTP subsystem of %s did not start: %s." % (where, exc)) from None
            raise _Dropped("the SFTP subsystem of %s did not start: %s" % (where, exc)) from None
        client.get_channel().settimeout(self.timeout)
        self._write_size, self._read_size = _request_sizes(client)
        self._sftp = client

    def close(self) -> None:
        with self._lock:
            for thing in (self._sftp, self._transport):
                if thing is not None:
                    try:
                        thing.close()
                    except Exception:  # pylint: disable=broad-except
                        pass
            self._sftp = self._transport = None

    def _client(self):
        if self._sftp is None or self._transport is None or not self._transport.is_active():
            self.close()
            self._connect()
        return self._sftp

    def _is_dropped(self, exc: BaseException, transport=None) -> bool:
        """Whether ``exc`` may go away on a new connection: the network failed or the connection broke (a socket
        error, EOF, a timeout, an SSH or OS error once the transport is down).  Never a refusal, which a new
        attempt meets again: authentication, host key, no algorithm in common, an answer of the server."""
        paramiko = _paramiko()
        if isinstance(exc, (_Dropped, EOFError, socket.timeout)):
            return True
        refusals = (paramiko.AuthenticationException, paramiko.BadHostKeyException,
                    getattr(paramiko, "IncompatiblePeer", ()))
        if isinstance(exc, refusals):
            return False
        if isinstance(exc, OSError) and exc.errno in _NET_ERRNOS:
            return True
        if isinstance(exc, (OSError, paramiko.SSHException)):
            transport = transport or self._transport
            return transport is None or not transport.is_active()
        return False

    def _do(self, what: str, action):
        """``action(sftp_client)``, reconnecting after a dropped connection up to ``retries`` times."""
        with self._lock:
            attempt = 0
            while True:
                try:
                    return action(self._client())
                except BackupError:
                    raise
                except Exception as exc:  # pylint: disable=broad-except
                    if not self._is_dropped(exc):
                        raise self._remote_error(what, exc) from None
                    self.close()
                    if attempt >= self.retries:
                        raise BackupError("SFTP %s at %s failed after %d attempt(s): %s."
                                          % (what, self.address(self.root), attempt + 1,
                                             str(exc) or type(exc).__name__)) from None
                    attempt += 1
                    self.reconnects += 1
                    time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))

    def _remote_error(self, what: str, exc: BaseException) -> BackupError:
        code = getattr(exc, "errno", None)
        target = getattr(exc, "filename", None) or ""
        if code == errno.EACCES:
            return BackupError("SFTP %s refused: permission denied for user %r on %s%s."
                               % (what, self.url.user, self.address(self.root), " (%s)" % target if target else ""))
        if code == errno.ENOENT:
            return MissingFile("SFTP %s failed: " % what, target or self.root, " does not exist on the server.")
        return BackupError("SFTP %s at %s failed: %s." % (what, self.address(self.root), str(exc) or type(exc).__name__))

    # -- operations -------------------------------------------------------------------
    def check_ready(self) -> None:
        """The destination folder exists on the server (the engine never creates it)."""
        def probe(client):
            try:
                mode = client.stat(self.root).st_mode
            except IOError as exc:
                if exc.errno == errno.ENOENT:
                    raise BackupError("Destination %s does not exist on the SFTP server; create it there first. "
                                      "Nothing was written." % self.address(self.root)) from None
                raise
            if not statmod.S_ISDIR(mode or 0):
                raise BackupError("Destination %s is not a folder on the SFTP server." % self.address(self.root))
        self._do("check of the destination", probe)

    def makedirs(self, path: str, mode: int = 0o750) -> None:
        def make(client):
            missing, current = [], path
            while current not in ("/", ""):
                try:
                    client.stat(current)
                    break
                except IOError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    missing.append(current)
                    current = posixpath.dirname(current)
            for folder in reversed(missing):
                client.mkdir(folder, mode)
                client.chmod(folder, mode)
        self._do("creation of %s" % path, make)

    def listdir(self, path: str) -> list:
        def names(client):
            try:
                return client.listdir(path)
            except IOError as exc:
                if exc.errno == errno.ENOENT:
                    return []
                raise
        return self._do("listing of %s" % path, names)

    def exists(self, path: str) -> bool:
        def probe(client):
            try:
                client.stat(path)
                return True
            except IOError as exc:
                if exc.errno == errno.ENOENT:
                    return False
                raise
        return self._do("check of %s" % path, probe)

    def read_bytes(self, path: str) -> bytes:
        def read(client):
            with client.open(path, "rb") as handle:
                return handle.read()
        return self._do("read of %s" % path, read)

    def hash_file(self, path: str) -> tuple:
        """(sha256, size) of a remote file, read with prefetch."""
        def digest(client):
            with self._reader(client, path) as handle:
                return sha256_stream(handle)
        return self._do("read of %s" % path, digest)

    def _reader(self, client, path: str):
        """``path`` opened for reading, large requests prefetched in parallel."""
        handle = client.open(path, "rb")
        handle.MAX_REQUEST_SIZE = self._read_size
        handle.prefetch(client.stat(path).st_size)
        return handle

    def _make_staging(self) -> None:
        """The staging folder, 0700, owned like the state folder it is in (root may make it for the job)."""
        if not os.path.isdir(self.staging):
            makedirs(self.staging, 0o700, *state_owner(os.path.dirname(self.staging)))

    def stage(self, folder: str, suffix: str) -> str:
        """A local temporary path (in the staging folder) for the exporter to write to."""
        self._make_staging()
        return stage_privately(self.staging, suffix)

    def discard(self, staged: str) -> None:
        discard_local(staged)

    def commit(self, staged: str, final: str, size: int, sha256: str | None = None) -> dict:
        """Upload ``staged`` to ``final``: temporary name, size check, optional hash check, rename."""
        folder = posixpath.dirname(final)
        started = time.monotonic()
        leftovers = []

        def upload(client):
            for old in list(leftovers):  # a temporary file of an attempt the connection dropped
                try:
                    client.remove(old)
                except IOError:
                    pass
                leftovers.remove(old)
            name = "%s%s%s" % (TMP_PREFIX, uuid.uuid4().hex[:12], posixpath.splitext(final)[1])
            remote_tmp = posixpath.join(folder, name)
            leftovers.append(remote_tmp)
            try:
                self._send(client, staged, remote_tmp)
                got = client.stat(remote_tmp).st_size
                if got != size:  # pipelined writes may lose the server's "Failure" reply: a full disk ends here
                    self._forget(client, remote_tmp)
                    self._raise_if_full(client, folder, final, size)
                    raise BackupError("SFTP upload of %s stored %d bytes instead of %d; nothing was published."
                                      % (self.address(final), got, size))
                if self.verify_upload and sha256 is not None:
                    self._verify(client, remote_tmp, sha256, final)
                client.rename(remote_tmp, final)
            except BackupError:
                self._forget(client, remote_tmp)
                leftovers.remove(remote_tmp)
                raise
            except Exception as exc:
                if not self._is_dropped(exc):
                    self._forget(client, remote_tmp)
                    leftovers.remove(remote_tmp)
                    self._raise_if_full(client, folder, final, size)
                raise
            leftovers.remove(remote_tmp)
        try:
            self._do("upload of %s" % posixpath.basename(final), upload)
        finally:
            discard_local(staged)
        return {"bytes": size, "seconds": round(time.monotonic() - started, 3), "verified": self.verify_upload}

    def _send(self, client, source: str, target: str) -> None:
        with open(source, "rb") as src:
            with client.open(target, "wb") as dst:
                dst.MAX_REQUEST_SIZE = self._write_size
                dst.set_pipelined(True)
                client.chmod(target, 0o640)
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    dst.write(chunk)
                dst.flush()
                _extended(client, "fsync@openssh.com", dst.handle)

    def _raise_if_full(self, client, folder: str, final: str, size: int) -> None:
        """After a failed upload (its temporary file removed): say so if the file cannot fit at all."""
        try:
            free = self._free(client, folder)
        except Exception:  # pylint: disable=broad-except
            return
        if free is not None and free < size:
            raise BackupError("SFTP upload of %s failed: the remote disk is full (%d bytes free, %d needed); "
                              "nothing was published." % (self.address(final), free, size))

    def _verify(self, client, remote: str, sha256: str, final: str) -> None:
        with self._reader(client, remote) as handle:
            digest = sha256_stream(handle)[0]
        if digest != sha256:
            raise BackupError("SFTP upload of %s reads back with a different sha256; nothing was published."
                              % self.address(final))

    @staticmethod
    def _forget(client, remote: str) -> None:
        try:
            client.remove(remote)
        except Exception:  # pylint: disable=broad-except
            pass

    def write_file(self, path: str, data: bytes) -> None:
        """Write a small file (a manifest) whole: temporary name, then rename."""
        def put(client):
            remote_tmp = posixpath.join(posixpath.dirname(path), TMP_PREFIX + uuid.uuid4().hex[:12])
            try:
                with client.open(remote_tmp, "wb") as dst:
                    client.chmod(remote_tmp, 0o640)
                    dst.write(data)
                    dst.flush()
                    _extended(client, "fsync@openssh.com", dst.handle)
                if client.stat(remote_tmp).st_size != len(data):
                    raise BackupError("SFTP write of %s was cut short." % self.address(path))
                client.rename(remote_tmp, path)
            except BaseException:
                self._forget(client, remote_tmp)
                raise
        self._do("write of %s" % posixpath.basename(path), put)

    def remove(self, path: str) -> None:
        def unlink(client):
            try:
                client.remove(path)
            except IOError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        self._do("removal of %s" % posixpath.basename(path), unlink)

    def sync_dir(self, path: str) -> None:
        return None  # the server's rename is what makes a file appear; OpenSSH has no directory fsync

    def free_space(self, path: str | None = None) -> int | None:
        """Bytes free at the destination (OpenSSH's statvfs extension), or None when unknown."""
        try:
            return self._do("free space query", lambda client: self._free(client, path or self.root))
        except BackupError:
            return None

    @staticmethod
    def _free(client, path: str) -> int | None:
        reply = _extended(client, "statvfs@openssh.com", path)
        if reply is None:
            return None
        fields = [reply.get_int64() for index in range(5)]  # bsize, frsize, blocks, bfree, bavail
        return fields[4] * fields[1]

    @contextmanager
    def fetch(self, path: str):
        """Download ``path`` to the staging folder; the local copy is removed afterwards."""
        self._make_staging()
        local = stage_privately(self.staging, "")  # a new file in a fresh private folder, never a reused name

        def download(client):
            with self._reader(client, path) as handle:
                copy_to_local(handle, local)
        try:
            self._do("download of %s" % posixpath.basename(path), download)
            yield local
        finally:
            discard_local(local)


def _request_sizes(client) -> tuple:
    """(write, read) request sizes the server takes: OpenSSH's limits@openssh.com, else 32 KiB."""
    try:
        reply = _extended(client, "limits@openssh.com")
    except IOError:
        reply = None
    if reply is None:
        return _SMALL_REQUEST, _SMALL_REQUEST
    dummy_packet, read_length, write_length = reply.get_int64(), reply.get_int64(), reply.get_int64()
    # The server's own figures already leave room for the request headers; 0 means "no limit given".
    return (min(max(write_length, _SMALL_REQUEST), _CHUNK) if write_length else _SMALL_REQUEST,
            min(max(read_length, _SMALL_REQUEST), _CHUNK) if read_length else _SMALL_REQUEST)


def _extended(client, name: str, *args):
    """An OpenSSH extension request; None when the server does not know it."""
    from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY  # pylint: disable=import-outside-toplevel
    try:
        kind, message = client._request(CMD_EXTENDED, name, *args)  # pylint: disable=protected-access
    except _Unsupported:
        return None
    return message if kind == CMD_EXTENDED_REPLY else None


def _sftp_client_class(paramiko):
    """paramiko's SFTPClient, except that a request the server does not know raises ``_Unsupported``.

    paramiko turns every status but "no such file", "permission denied" and EOF into an IOError that
    carries only the server's text; the status code says what happened.
    """
    from paramiko.sftp import SFTP_OP_UNSUPPORTED  # pylint: disable=import-outside-toplevel

    class Client(paramiko.SFTPClient):
        def _convert_status(self, msg):
            start = msg.packet.tell()
            if msg.get_int() == SFTP_OP_UNSUPPORTED:
                raise _Unsupported(msg.get_text())
            msg.packet.seek(start)
            return super()._convert_status(msg)
    return Client
