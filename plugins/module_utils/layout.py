# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where things live on a host, safe names for paths, and careful file writes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

VERSION = "0.2.0"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+@")


@dataclass(frozen=True)
class Paths:
    """The fixed file layout of DESIGN.md; tests may point it elsewhere."""

    settings_dir: str = "/etc/repobackup"
    cron_dir: str = "/etc/cron.d"
    state_root: str = "/var/lib/repobackup"
    log_dir: str = "/var/log/repobackup"
    engine_root: str = "/usr/local/lib/repobackup"
    launcher: str = "/usr/local/sbin/repobackup"

    def settings_file(self, server: str) -> str:
        return os.path.join(self.settings_dir, server + ".json")

    def cron_file(self, server: str) -> str:
        return os.path.join(self.cron_dir, "repobackup_" + server)

    def state_dir(self, server: str) -> str:
        return os.path.join(self.state_root, server)

    def log_file(self, server: str) -> str:
        return os.path.join(self.log_dir, server + ".log")


def encode_name(name: str) -> str:
    """Reversible, safe file name for any repository or host name.

    Letters, digits and ``-_.+@`` stay; every other byte of the UTF-8 text,
    '%' itself and a leading '.', becomes %XX.  The result never contains '/',
    is never '.' or '..', and never starts with '-' or '.'.
    """
    out = []
    for index, byte in enumerate(name.encode("utf-8")):
        char = chr(byte)
        if char in _SAFE and not (index == 0 and char in ".-"):
            out.append(char)
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def decode_name(encoded: str) -> str:
    data = bytearray()
    index = 0
    while index < len(encoded):
        char = encoded[index]
        if char == "%":
            data.append(int(encoded[index + 1:index + 3], 16))
            index += 3
        else:
            data.extend(char.encode("ascii"))
            index += 1
    return data.decode("utf-8")


def host_name(hostname: str | None = None, fqdn: str | None = None) -> str:
    """This host's default id in backup paths, meant to be unique in a fleet: its FQDN.

    The host name itself when it has a dot; else ``socket.getfqdn()`` when that names this
    host (its first label is the host name, so not the ``localhost.localdomain`` of a
    loopback line in /etc/hosts); else the host name alone.  The arguments stand in for
    the two lookups.
    """
    name = (socket.gethostname() if hostname is None else hostname).strip().rstrip(".")
    if not name:
        return "localhost"
    if "." in name:
        return name
    full = (socket.getfqdn(name) if fqdn is None else fqdn).strip().rstrip(".")
    return full if full.lower().startswith(name.lower() + ".") else name


def short_host_name() -> str:
    """The folder name engines before host ids used: the host name up to its first dot (see legacy folders)."""
    return socket.gethostname().split(".")[0] or "localhost"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: str, mode: int = 0o750, uid: int = -1, gid: int = -1) -> None:
    """Create ``path`` with exactly ``mode`` whatever the umask; missing parents get 0755."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        leaf = directory == missing[0]
        try:
            os.mkdir(directory, mode if leaf else 0o755)
        except FileExistsError:
            continue
        os.chmod(directory, mode if leaf else 0o755)  # parents stay traversable
        if leaf and (uid != -1 or gid != -1):
            os.chown(directory, uid, gid)


def human_size(count) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``; ``-`` for None."""
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return ("%d %s" % (count, unit)) if unit == "B" else ("%.1f %s" % (count, unit))
        count /= 1024.0
    return "-"


def state_owner(folder: str) -> tuple:
    """(uid, gid) for what the engine creates in ``folder``: its owner when running as root, else unchanged.

    The doors (modules, an administrator's ``repobackup`` as root) and the scheduled job (as the run-as
    user) share the state folder; files and folders root makes there must stay usable by the job.
    """
    if os.geteuid() != 0:
        return -1, -1
    try:
        info = os.stat(folder)
    except OSError:
        return -1, -1
    return info.st_uid, info.st_gid


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def read_json(path: str) -> dict | None:
    text = read_text(path)
    return None if text is None else json.loads(text)


def atomic_write(path: str, data: bytes, mode: int = 0o640, uid: int = -1, gid: int = -1) -> None:
    """Write through a temporary file in the same folder, fsync, then rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if uid != -1 or gid != -1:
                os.fchown(handle.fileno(), uid, gid)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def dump_json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@contextmanager
def scratch_folder(base: str | None):
    """A private folder (0700) under ``base`` for copies a run makes for itself, removed afterwards.

    Its name starts with the process id, so ``remove_dead_scratch`` can tell what a killed run left.
    """
    if base is None:  # a kind used on its own, outside the engine (which always gives one)
        folder = tempfile.mkdtemp(prefix="repobackup-")
    else:
        makedirs(base, 0o700)
        folder = tempfile.mkdtemp(prefix="%d-" % os.getpid(), dir=base)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: str) -> bool:
    """Whether process ``pid`` (digits) still runs: a zombie, killed and not yet reaped, does not."""
    try:
        with open("/proc/%s/stat" % pid, "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")  # the state follows the command's closing paren


def remove_dead_scratch(base: str, prefix: str = "") -> list:
    """Remove the entries under ``base`` named ``<prefix><pid>-...`` whose process is gone; their paths.

    Without a prefix every entry counts (a scratch folder holds nothing else); with one, only those
    that start with it (the SFTP staging folder).
    """
    try:
        entries = [e for e in os.listdir(base) if e.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for entry in entries:
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and process_alive(pid):
            continue
        path = os.path.join(base, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
        removed.append(path)
    return removed
