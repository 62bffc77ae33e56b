# -*- coding: utf-8 -*-
"""Helpers shared by the unit tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from urllib.parse import quote

import pytest

HOST = "testhost"


def make_db(path, rows=(), journal="delete", filler_kb=0):
    """An SQLite database with table t(n, v) holding ``rows`` (numbers)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=%s" % journal)
        conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("BEGIN")
        for n in rows:
            conn.execute("INSERT INTO t (n, v) VALUES (?, ?)", (n, "row %d" % n))
        conn.execute("COMMIT")
        if filler_kb:
            conn.execute("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, pad BLOB)")
            conn.execute("BEGIN")
            for dummy in range(filler_kb // 64):
                conn.execute("INSERT INTO filler (pad) VALUES (randomblob(65536))")
            conn.execute("COMMIT")
    finally:
        conn.close()
    return str(path)


def numbers(path):
    conn = sqlite3.connect("file:%s?mode=ro" % quote(str(path)), uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT n FROM t ORDER BY n")]
    finally:
        conn.close()


def sha256(path):
    with open(str(path), "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class FakeClock:
    """Stands in for the ``datetime`` module inside one engine module."""

    def __init__(self, now):
        clock = self

        class _DT(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return clock.now if tz is None else clock.now.astimezone(tz)

        self.now = now
        self.datetime = _DT
        self.date = datetime.date
        self.time = datetime.time
        self.timedelta = datetime.timedelta
        self.timezone = datetime.timezone


def hand_over(paths, destination, server: str = "main", user: str = "postgres") -> None:
    """What the role does for a server whose run-as user is ``user``: the state folder, the log file and
    the destination belong to it, and the folders above them can be passed through."""
    import pwd
    entry = pwd.getpwnam(user)
    state = os.path.join(paths.state_root, server)
    for folder in (paths.state_root, paths.log_dir):
        os.makedirs(folder, mode=0o755, exist_ok=True)
    os.makedirs(state, mode=0o750, exist_ok=True)
    log = paths.log_file(server)
    open(log, "a").close()
    for path in (state, log, str(destination)):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    traversable(str(destination))
    traversable(state)


def traversable(path: str) -> None:
    """Let every user pass through the folders above ``path`` (pytest makes its own 0700)."""
    current = os.path.dirname(os.path.abspath(path))
    while current not in ("/", ""):
        mode = os.stat(current).st_mode
        if not mode & 0o001:
            os.chmod(current, (mode & 0o7777) | 0o011)
        current = os.path.dirname(current)


def give_tmp_to(tmp_path, paths, destination, user: str) -> None:
    """tmp_path belongs to ``user`` (the engine works there as its run-as user, whoever starts it),
    with the state folder, log file and destination handed over as the role would."""
    import pwd
    entry = pwd.getpwnam(user)
    os.chown(str(tmp_path), entry.pw_uid, entry.pw_gid)
    traversable(str(tmp_path / "x"))
    hand_over(paths, destination, user=user)


def rehash(manifest_path: str) -> None:
    """Make a manifest agree with its (altered) data file again: the checksum is right, the content is not."""
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    data = os.path.join(os.path.dirname(manifest_path), manifest["data_file"])
    manifest.update(sha256=sha256(data), size=os.path.getsize(data))
    manifest.pop("content_sha256", None)
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


# ``repobackup export --server main`` in a child process of its own (to be killed):
# argv = [sys.executable, "-c", EXPORT_CHILD, collections_root(), settings_dir, state_root, log_dir]
EXPORT_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.reposerver.backup.plugins.module_utils import cli, layout
paths = layout.Paths(settings_dir=sys.argv[2], state_root=sys.argv[3], log_dir=sys.argv[4])
sys.exit(cli.main(["export", "--server", "main"], paths=paths))
"""


def collections_root() -> str:
    """The folder that holds ansible_collections/, as the engine was imported from it."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.reposerver.backup.plugins.module_utils import engine
    path = os.path.abspath(engine.__file__)
    return path[:path.rindex(os.sep + "ansible_collections" + os.sep)]


def kill_export_when(paths, ready, retry, tries: int = 5) -> tuple:
    """Start ``repobackup export`` in a child (EXPORT_CHILD) and SIGKILL its process group as soon as
    ``ready()`` holds; when the export finishes first, ``retry()`` and start again, ``tries`` times at most.
    Returns (the killed child's pid or None, its stdout, its stderr)."""
    out = err = b""
    for dummy in range(tries):
        child = subprocess.Popen(
            [sys.executable, "-c", EXPORT_CHILD, collections_root(), paths.settings_dir, paths.state_root, paths.log_dir],
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        killed = None
        while time.monotonic() < deadline and child.poll() is None:
            if ready():
                os.killpg(child.pid, signal.SIGKILL)
                killed = child.pid
                break
        out, err = child.communicate()
        if killed:
            return killed, out, err
        retry()
    return None, out, err


@contextmanager
def small_tmpfs(path, size: str = "6m", mode: int = 0o750):
    """A tmpfs of ``size`` mounted at ``path`` (made when missing) for a disk that fills; the test is skipped
    where it cannot be mounted (not root, or no mount allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=%o" % (size, mode), "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % done.stderr.strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
