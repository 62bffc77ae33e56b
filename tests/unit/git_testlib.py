# -*- coding: utf-8 -*-
"""Helpers for the git kind's tests: real git, repositories owned by an unprivileged user, a real transport.

The tests run as root. The git root and its repositories belong to ``OWNER`` (``nobody``, standing in for
the ``git`` user of a forge), who also runs ``git daemon`` with receive-pack enabled on a free loopback
port: pushes go over the git protocol and receive-pack runs as the owner, as a forge's would.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import tempfile
import threading
import time

OWNER = "nobody"
IDENTITY = ["-c", "user.name=Test Writer", "-c", "user.email=writer@example.com", "-c", "init.defaultBranch=main"]


def env(home: str = "/") -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C"}


def run(args, user: str | None = None, cwd: str = "/", check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """git (or any program) as ``user`` (None: root), output captured as text."""
    ids = {}
    if user and user != "root" and pwd.getpwnam(user).pw_uid != os.geteuid():
        entry = pwd.getpwnam(user)
        ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    # Output through files, not pipes: an engine process forked meanwhile (its privilege drop) would inherit the
    # pipes' write ends and hold them open until it ends, and the pusher thread waiting for EOF would stall.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = subprocess.run(args, cwd=cwd, env=env(), stdout=out, stderr=err, check=False, **ids, **kwargs)
        out.seek(0)
        err.seek(0)
        done.stdout, done.stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, args, done.stdout, done.stderr)
    return done


def git(*args, user: str | None = OWNER, cwd: str = "/", check: bool = True) -> str:
    return run(["git"] + IDENTITY + list(args), user=user, cwd=cwd, check=check).stdout


def chown(path, user: str = OWNER) -> None:
    entry = pwd.getpwnam(user)
    os.chown(str(path), entry.pw_uid, entry.pw_gid)


def bare(root, name: str, user: str = OWNER) -> str:
    """A new bare repository ``name`` (folders made as ``user``) under ``root``."""
    path = os.path.join(str(root), *name.split("/"))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent)
        chown(parent, user)
    git("init", "-q", "--bare", path, user=user)
    return path


def commit_into(repo: str, work, count: int = 3, branch: str = "main", tag: str | None = None,
                user: str = OWNER) -> str:
    """``count`` commits on ``branch`` of the bare ``repo`` through a scratch clone; the new tip."""
    work = str(work)
    if not os.path.isdir(work):
        os.makedirs(work)
        chown(work, user)
        git("clone", "-q", repo, work, user=user)
    git("checkout", "-q", "-B", branch, user=user, cwd=work)
    for number in range(count):
        with open(os.path.join(work, "file-%s.txt" % branch), "a", encoding="utf-8") as handle:
            handle.write("%s line %d %s\n" % (branch, number, os.urandom(8).hex()))
        chown(os.path.join(work, "file-%s.txt" % branch), user)
        git("add", "-A", user=user, cwd=work)
        git("commit", "-q", "-m", "%s %d" % (branch, number), user=user, cwd=work)
    if tag:
        git("tag", "-a", "-m", tag, tag, user=user, cwd=work)
    git("push", "-q", "--tags", "origin", "HEAD:refs/heads/" + branch, user=user, cwd=work)
    return git("rev-parse", "HEAD", user=user, cwd=work).strip()


def refs(repo: str, user: str | None = OWNER) -> dict:
    """{ref: object id} of the repository at ``repo``."""
    out = run(["git", "--git-dir=" + repo, "for-each-ref", "--format=%(refname) %(objectname)"], user=user).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    """``git daemon`` as the owner, serving (and receiving pushes into) every repository under ``root``."""

    def __init__(self, root):
        self.root = str(root)
        self.port = free_port()
        entry = pwd.getpwnam(OWNER)
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", "--port=%d" % self.port, "--export-all",
             "--enable=receive-pack", "--base-path=" + self.root, self.root],
            env=env(), user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd="/")
        deadline = time.monotonic() + 20
        while run(["git", "ls-remote", self.url("")], check=False).returncode not in (0, 128) or \
                not self._listening():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("git daemon did not start")
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def url(self, name: str) -> str:
        return "git://127.0.0.1:%d/%s" % (self.port, name)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class Pusher(threading.Thread):
    """A client pushing commits to ``branch`` of repository ``name`` over the daemon in a loop, until stopped;
    each push's outcome (True/False, stderr) is kept in order."""

    def __init__(self, daemon: Daemon, name: str, work, branch: str = "main", user: str = "root"):
        super().__init__(daemon=True)
        self.url, self.work, self.branch, self.user = daemon.url(name), str(work), branch, user
        self.results = []
        self.stopped = threading.Event()
        os.makedirs(self.work)
        chown(self.work, user)
        run(["git", "clone", "-q", self.url, self.work], user=user)

    def push_once(self) -> tuple:
        path = os.path.join(self.work, "pushed.txt")
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("%d %s\n" % (len(self.results), os.urandom(4).hex()))
        chown(path, self.user)
        for args in (["add", "-A"], ["commit", "-q", "-m", "push %d" % len(self.results)]):
            run(["git"] + IDENTITY + args, cwd=self.work, user=self.user)
        done = run(["git", "push", "-q", "origin", "HEAD:refs/heads/" + self.branch], cwd=self.work, check=False,
                   user=self.user)
        if done.returncode != 0:
            run(["git", "reset", "-q", "--hard", "HEAD~1"], cwd=self.work, user=self.user)
        outcome = (done.returncode == 0, done.stderr)
        self.results.append(outcome)
        return outcome

    def run(self):
        while not self.stopped.is_set():
            self.push_once()

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("the pusher made only %d pushes" % len(self.results))
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopped.set()
        self.join()
