# -*- coding: utf-8 -*-
"""Helpers for the sftp:// destination tests: the private test sshd, real SFTP, no mock.

scripts/setup-test-env runs an sshd on 127.0.0.1:$REPOBACKUP_SSH_PORT and makes
the account REPOBACKUP_SFTP_USER (rbsftp, home REPOBACKUP_SFTP_HOME, shell
nologin: SFTP only, no commands) that logs in with the client key
REPOBACKUP_SSH_KEY, like root does.  The tests run as root on the same machine,
so they see the "remote" side directly in the file system.

Fixtures (import them into the test file that uses them)::

    from sftp_testlib import sftp_server, sftp_dir, tmpfs_mount  # noqa: F401  pylint: disable=unused-import

- ``sftp_server`` (session): an SftpServer; fails (never skips) when the
  environment is missing.
- ``sftp_dir``: (SftpServer, Path) of a fresh directory under the user's home
  (owner rbsftp, 0750), removed afterwards with anything mounted below it.
- ``tmpfs_mount``: ``tmpfs_mount(path, size="4m", owner="rbsftp", mode=0o750)``
  mounts a small tmpfs (a remote disk that fills, or a local mount point);
  ``.unmount()`` on the result, the rest is unmounted at teardown.

Functions: ``cut_sessions(user)`` kills the sshd processes serving ``user`` so
live connections drop; ``wait_for(predicate, timeout)``;
``wait_for_growing_file(directory, prefix, min_bytes, timeout)``;
``connect(server)`` gives a paramiko SSHClient that checks the host key.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

TMPFS_SOURCE = "repobackup-test-tmpfs"
_ENV = ("REPOBACKUP_SSH_PORT", "REPOBACKUP_SSH_KEY", "REPOBACKUP_SSH_KNOWN_HOSTS",
        "REPOBACKUP_SFTP_USER", "REPOBACKUP_SFTP_HOME")
_SETUP_HINT = "run scripts/setup-test-env as root, then '. build/env.sh' before pytest"


class SftpEnvError(Exception):
    """The SFTP test environment is missing or incomplete."""


@dataclasses.dataclass(frozen=True)
class SftpServer:
    host: str
    port: int
    user: str
    key_file: str
    host_key: str       # "ssh-ed25519 AAAA...": type and base64 only
    known_hosts: str    # a file with the host key for "[host]:port"
    home: str

    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else "[%s]:%d" % (self.host, self.port)

    def url(self, path="") -> str:
        """sftp://user@host:port/<path>; a relative path is taken from the user's home."""
        full = os.path.normpath(os.path.join(self.home, str(path)))
        return "sftp://%s@%s:%d/%s" % (self.user, self.host, self.port, full.lstrip("/"))

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    @property
    def gid(self) -> int:
        return pwd.getpwnam(self.user).pw_gid


def _host_key_from(known_hosts: str, name: str) -> str:
    with open(known_hosts, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 3 and name in fields[0].split(","):
                return "%s %s" % (fields[1], fields[2])
    raise SftpEnvError("%s has no host key for %s" % (known_hosts, name))


def load_server() -> SftpServer:
    """The test sshd from build/env.sh's variables; SftpEnvError says what is missing."""
    missing = [name for name in _ENV if not os.environ.get(name)]
    if missing:
        raise SftpEnvError("SFTP test environment missing: %s not set; %s" % (", ".join(missing), _SETUP_HINT))
    env = os.environ
    host = env.get("REPOBACKUP_SSH_HOST") or "127.0.0.1"
    port = int(env["REPOBACKUP_SSH_PORT"])
    user, home = env["REPOBACKUP_SFTP_USER"], env["REPOBACKUP_SFTP_HOME"]
    key_file, known_hosts = env["REPOBACKUP_SSH_KEY"], env["REPOBACKUP_SSH_KNOWN_HOSTS"]
    problems = []
    if os.geteuid() != 0:
        problems.append("the SFTP tests run as root (they look into the user's home and mount tmpfs)")
    for path in (key_file, known_hosts):
        if not os.access(path, os.R_OK):
            problems.append("cannot read %s" % path)
    try:
        entry = pwd.getpwnam(user)
        if os.path.normpath(entry.pw_dir) != os.path.normpath(home):
            problems.append("user %s has home %s, not %s" % (user, entry.pw_dir, home))
        elif not os.path.isfile(os.path.join(home, ".ssh", "authorized_keys")):
            problems.append("%s/.ssh/authorized_keys is missing" % home)
    except KeyError:
        problems.append("no local user %s" % user)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        problems.append("nothing answers on %s:%d (%s)" % (host, port, exc))
    if problems:
        raise SftpEnvError("SFTP test environment incomplete: %s; %s" % ("; ".join(problems), _SETUP_HINT))
    server = SftpServer(host=host, port=port, user=user, key_file=key_file, host_key="",
                        known_hosts=known_hosts, home=home)
    return dataclasses.replace(server, host_key=_host_key_from(known_hosts, server.known_hosts_name()))


def connect(server: SftpServer, timeout: float = 10):
    """A paramiko SSHClient logged in as the SFTP user (known_hosts checked, key only)."""
    import paramiko  # pylint: disable=import-outside-toplevel
    client = paramiko.SSHClient()
    client.load_host_keys(server.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(server.host, server.port, username=server.user, key_filename=server.key_file,
                   look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                   auth_timeout=timeout)
    return client


# --- polling ---------------------------------------------------------------------

def wait_for(predicate, timeout: float = 10, step: float = 0.02):
    """The first true value of predicate(), polled until timeout seconds; AssertionError after."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("condition %r not met within %s s" % (getattr(predicate, "__name__", predicate), timeout))
        time.sleep(step)


def wait_for_growing_file(directory, prefix: str, min_bytes: int, timeout: float = 10) -> Path:
    """Path of a file below directory (searched recursively) whose name starts with
    prefix, once it holds at least min_bytes: the moment to cut an upload."""
    def grown():
        for root, _dirs, files in os.walk(str(directory)):
            for name in files:
                if name.startswith(prefix):
                    path = os.path.join(root, name)
                    try:
                        if os.lstat(path).st_size >= min_bytes:
                            return Path(path)
                    except FileNotFoundError:
                        pass
        return None
    grown.__name__ = "a file %s* of %d bytes under %s" % (prefix, min_bytes, directory)
    return wait_for(grown, timeout)


# --- cutting connections -----------------------------------------------------------

def _proc_status(pid: str) -> dict:
    fields = {}
    with open("/proc/%s/status" % pid, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            key, dummy, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _sshd_processes():
    """(pid, real uid, cmdline) of every live (not zombie) process named sshd."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = _proc_status(pid)
            if status.get("Name") != "sshd" or status.get("State", "").startswith(("Z", "X")):
                continue
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        yield int(pid), int(status["Uid"].split()[0]), cmdline


_MONITOR = r"^sshd: %s \[(priv|net|accepted)\]"


def session_pids(user: str) -> list:
    """The live sshd processes of user's connections: the unprivileged children
    running as user ("sshd: user@notty", "sshd: user@internal-sftp") and their
    root monitors ("sshd: user [priv]")."""
    uid = pwd.getpwnam(user).pw_uid
    monitor = re.compile(_MONITOR % re.escape(user))
    return [pid for pid, puid, cmdline in _sshd_processes() if puid == uid or monitor.match(cmdline)]


def cut_sessions(user: str, timeout: float = 5) -> list:
    """SIGKILL the sshd processes running as user, then wait until they and their
    root monitors are gone (the monitor exits when its child dies): every
    connection user had is closed when this returns, the client sees its socket
    close, the listener keeps running.  Returns the killed pids."""
    uid = pwd.getpwnam(user).pw_uid
    sessions = session_pids(user)
    killed = []
    for pid, puid, _cmdline in _sshd_processes():
        if puid == uid and pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    wait_for(lambda: not set(sessions) & set(session_pids(user)), timeout)
    return killed


# --- mounts ------------------------------------------------------------------------

def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list:
    """Mount points of this mount namespace, in mount order."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [_unescape(line.split()[4]) for line in handle if line.strip()]


def mounts_below(path) -> list:
    """Mount points at or below path, deepest (last mounted) first."""
    top = os.path.realpath(str(path))
    found = [p for p in mount_points() if p == top or p.startswith(top.rstrip("/") + "/")]
    return list(reversed(found))


def unmount(path) -> None:
    """Unmount path (lazily when busy, for example a file still open over SFTP)."""
    path = os.path.realpath(str(path))
    if subprocess.run(["umount", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False).returncode != 0:
        subprocess.run(["umount", "--lazy", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)


def unmount_below(path) -> None:
    for point in mounts_below(path):
        unmount(point)


class TmpfsMount:
    """A tmpfs mounted by the tmpfs_mount fixture."""

    def __init__(self, path: Path, size: str):
        self.path = path
        self.size = size

    @property
    def mounted(self) -> bool:
        return os.path.realpath(str(self.path)) in mount_points()

    def unmount(self) -> None:
        while self.mounted:   # (mounted twice on the same path: all of them)
            unmount(self.path)

    def __repr__(self):
        return "TmpfsMount(%r, size=%r, mounted=%r)" % (str(self.path), self.size, self.mounted)


def _owner_ids(owner):
    if owner is None:
        return 0, 0
    if isinstance(owner, int):
        return owner, pwd.getpwuid(owner).pw_gid
    entry = pwd.getpwnam(owner)
    return entry.pw_uid, entry.pw_gid


def mount_tmpfs(path, size: str = "4m", owner="rbsftp", mode: int = 0o750) -> TmpfsMount:
    """Mount a tmpfs of size at path (made when missing), its root owned by owner
    (a name, a uid or None for root) with mode."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = _owner_ids(owner)
    options = "size=%s,mode=%o,uid=%d,gid=%d,nosuid,nodev" % (size, mode, uid, gid)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, TMPFS_SOURCE, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise OSError("mount -t tmpfs -o %s at %s failed: %s" % (options, path, result.stderr.decode(errors="replace").strip()))
    return TmpfsMount(path, size)


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sftp_server():
    try:
        return load_server()
    except SftpEnvError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def tmpfs_mount():
    made = []

    def mount(path, size="4m", owner="rbsftp", mode=0o750):
        made.append(mount_tmpfs(path, size=size, owner=owner, mode=mode))
        return made[-1]
    mount.made = made
    yield mount
    for each in reversed(made):
        each.unmount()


@pytest.fixture
def sftp_dir(sftp_server, request):
    """(SftpServer, Path): a fresh directory under the user's home, owner user, 0750."""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:40]
    path = Path(sftp_server.home) / ("rbt-%s-%s" % (label, uuid.uuid4().hex[:8]))
    path.mkdir(mode=0o750)
    os.chown(path, sftp_server.uid, sftp_server.gid)
    os.chmod(path, 0o750)
    try:
        yield sftp_server, path
    finally:
        unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)
