# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``git`` repository server: each repository is a bare repository under one folder.

Repositories are the bare repositories in the git root and one folder below it
(``app.git``, ``team/app.git``: the owner/repository layout of Gitea, Forgejo
and cgit), named by their relative path; folders and names starting with ``.``
and symbolic links are never repositories.

A backup (``<stamp>.git.tar``, restorable with ``tar`` and ``git`` alone) is an
uncompressed tar holding:

- ``snapshot.json``: the refs as they were pinned (name and object id), HEAD
  (a symbolic ref or an object id), other symbolic refs, the object format and
  the number of objects;
- ``repository.bundle``: ``git bundle create`` of exactly those refs (with
  HEAD), absent for an empty repository (git refuses an empty bundle);
- ``repository.tar.gz``: the repository's ``config``, ``description``,
  ``hooks/`` and ``info/``.

The refs are snapshotted and pinned at once: each is copied into a private
namespace (``refs/repobackup/<pid>-<random>/``) in one ``update-ref``
transaction, which fails when an object is already gone (then the snapshot is
read again).  A force-push or a deleted branch followed by ``gc --prune=now``
cannot take the pinned objects.  The bundle is made in a scratch repository
that borrows the live objects (``objects/info/alternates``) and holds the
snapshot's refs under their own names, so the bundle names them as the live
repository did and nothing in the live repository's config is read by the
commands that do the heavy work.  The pins are removed afterwards (and, after
a kill, by the repair of the pending record written before them).  Before the
backup counts, its pack is indexed whole (``index-pack --strict`` in an empty
scratch repository: every object, its checksum, deltas and links), and every
snapshot ref must be in it; ``git bundle verify`` alone said "okay" for a
bundle cut in half.

Restore: ``git init --bare`` aside (a hidden folder beside the target), fetch
from the bundle, every ref and HEAD set exactly as in the snapshot, ``git fsck
--full`` clean and the object count as recorded, then config, description,
hooks and info put back; only then is the copy swapped into place (one
``renameat2(RENAME_EXCHANGE)`` where the kernel offers it).  fsck runs before
the repository's own config is back, so no ``fsck.*`` setting of it can hide a
fault.

Who runs git: the engine as the run-as user, by default the owner of the git
root (``default_run_as``).  Every repository (and its ``objects``, ``refs``,
``hooks`` and ``info`` folders) must pass ``privilege.folder_problem``: a root
engine therefore never runs git inside another user's repository (it is
refused, with a hint to set run_as to the owner), and no engine works in a
repository a less privileged user can change.  Git runs with
``GIT_CONFIG_NOSYSTEM``, no global config, ``core.hooksPath=/dev/null`` (no
hook, not even ``reference-transaction``), ``core.fsmonitor=false`` and no
automatic gc or maintenance; the repository's own config is read only by the
light commands run in it (listing and pinning refs), and never by a restored
copy before it is in place.

In-use actions:

- ``keep_connections``: pushes go on; the pinned snapshot is consistent
  because git writes objects before it moves refs.
- ``disconnect``: a temporary ``pre-receive`` hook refuses pushes with a clear
  message for the length of the export.  The repository's own hook is kept
  under a hidden hard link (or, when the kernel refuses a link to a file of
  another user, renamed aside) and renamed back afterwards (the same file:
  bytes, mode and times); the pending record written first lets the next run or
  import put it back after a kill.  Everything that changes the hooks holds a
  ``flock`` on the repository's folder, so two servers sharing a git root never
  take each other's temporary hook for the original.  A repository whose hooks
  come from a ``core.hooksPath`` outside it is refused (the hook would refuse
  pushes to every repository sharing that folder).  A push already past its
  pre-receive hook when the temporary one goes in completes; it may or may not
  be in the snapshot.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tarfile
import time
from contextlib import contextmanager

from .errors import BackupError, FileError, RepositoryError, RestoreCheckFailed
from .kinds import RepositoryServer, register
from .layout import fsync_dir, scratch_folder
from .privilege import folder_problem
from .settings import Option, check_path

SNAPSHOT, BUNDLE, META = "snapshot.json", "repository.bundle", "repository.tar.gz"
SNAPSHOT_FORMAT = 1
PIN_PREFIX = "refs/repobackup/"
ASIDE_PREFIX = ".repobackup-"
META_ENTRIES = ("config", "description", "hooks", "info")
HOOK_MARK = "# repobackup: temporary pre-receive hook"
HOOK = ("#!/bin/sh\n%s (in-use action disconnect); removed when the backup ends.\n"
        "echo 'repobackup: this repository is being backed up; pushes are refused until the backup ends."
        " Try again in a few minutes.' >&2\nexit 1\n" % HOOK_MARK)
_SUBFOLDERS = ("objects", "refs", "hooks", "info")
_RENAME_EXCHANGE = 2


def root_owner(options: dict) -> str:
    """The default run-as user of a git server: the owner of its git root (root while it does not exist)."""
    try:
        return pwd.getpwuid(os.stat(options.get("root") or "/srv/git").st_uid).pw_name
    except (OSError, KeyError):
        return "root"


def git_env() -> dict:
    """The environment git runs with: none of the caller's GIT_* variables, no system or global config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0", LC_ALL="C",
               GIT_ATTR_NOSYSTEM="1")
    return env


# Settings that win over any config file: no hook, no fsmonitor, no gc or maintenance started by git itself.
_SAFE = ("-c", "core.hooksPath=" + os.devnull, "-c", "core.fsmonitor=false", "-c", "gc.auto=0",
         "-c", "maintenance.auto=false", "-c", "fetch.writeCommitGraph=false", "-c", "protocol.allow=never",
         "-c", "protocol.file.allow=always")


def git(gitdir: str | None, *args, what: str, stdin=None, ok=(0,), env: dict | None = None,
        error=RepositoryError, safe: bool = True) -> bytes:
    """Run ``git`` (argument list, never a shell) on the repository at ``gitdir``; its output.  ``stdin``:
    bytes, or an open file read from its current position.  ``safe`` False only for a question git answers
    without running anything (where pushes find their hooks).

    Not AnsibleModule.run_command: this engine also runs as the host command, where there is no Ansible.
    """
    argv = ["git"] + (list(_SAFE) if safe else []) + (["--git-dir=" + gitdir] if gitdir else []) + list(args)
    feed = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin or subprocess.DEVNULL}
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                              stderr=subprocess.PIPE, env=env or git_env(), cwd="/", check=False, **feed)
    except OSError as exc:
        raise error("git could not be started: %s." % exc.strerror) from None
    if proc.returncode not in ok:
        raise error("%s failed: %s." % (what, _first_line(proc.stderr)))
    return proc.stdout


def _first_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for line in lines:
        if line.lower().startswith(("fatal", "error")):
            return line.rstrip(".")
    return lines[0].rstrip(".") if lines else "no message"


def split_name(name: str) -> list:
    """The parts of a repository name (1 or 2, none hidden), or RepositoryError."""
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or any(p in ("", ".", "..") or p.startswith(".") or "\0" in p for p in parts):
        raise RepositoryError("Repository name %r is not allowed for a git server; use a folder name or "
                              "owner/name (as team/app.git), no part starting with '.'." % (name,))
    return parts


def _real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def is_bare(path: str) -> bool:
    """A bare repository: HEAD a plain file, objects and refs real folders (no link among them)."""
    try:
        return (stat.S_ISREG(os.lstat(os.path.join(path, "HEAD")).st_mode)
                and _real_dir(os.path.join(path, "objects")) and _real_dir(os.path.join(path, "refs")))
    except OSError:
        return False


@register
class GitServer(RepositoryServer):
    kind = "git"
    data_suffix = ".git.tar"
    default_run_as = staticmethod(root_owner)  # depends on the options: the owner of the git root
    kind_options = (Option("root", "path", "The folder whose bare repositories (and those one folder below it, "
                                   "as owner/name.git) are the repositories.", default="/srv/git", check=check_path),)

    def __init__(self, options: dict, wait: int = 30):
        super().__init__(options, wait)
        self.root = os.path.normpath(self.options["root"])

    # -- the folders ---------------------------------------------------------------------
    def _check_root(self) -> None:
        problem = folder_problem(self.root)
        if problem:
            raise RepositoryError("The git folder %s is refused: %s; the engine never works in a folder that a "
                                  "less privileged user can change, and root never runs git inside another "
                                  "user's repositories; set run_as to the folder's owner." % (self.root, problem))
        if not _real_dir(self.root):
            raise RepositoryError("The git folder %s does not exist." % self.root)

    def path(self, name: str) -> str:
        return os.path.join(self.root, *split_name(name))

    def _repository(self, name: str) -> str:
        """The folder of repository ``name``, checked: real folders all the way, a bare repository, and
        nothing in it that another (less privileged) user can change."""
        self._check_root()
        path = self.root
        for part in split_name(name):
            path = os.path.join(path, part)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                raise RepositoryError("Repository %r does not exist in %s." % (name, self.root)) from None
            if not stat.S_ISDIR(info.st_mode):
                raise RepositoryError("Repository %r is refused: %s is %s, not a folder; the engine never follows "
                                      "a link in the git folder." % (name, path, "a symbolic link" if
                                                                     stat.S_ISLNK(info.st_mode) else "a file"))
        if not is_bare(path):
            raise RepositoryError("Repository %r is not a bare git repository (%s)." % (name, path))
        for folder in [path] + [os.path.join(path, sub) for sub in _SUBFOLDERS]:
            problem = folder_problem(folder) if os.path.lexists(folder) else None
            if problem:
                raise RepositoryError("Repository %r is refused: %s; root never runs git inside another user's "
                                      "repository, and the engine never works in a folder a less privileged user "
                                      "can change; set run_as to the repository's owner." % (name, problem))
        return path

    # -- reading the server -------------------------------------------------------------
    def version(self) -> str:
        try:
            out = git(None, "--version", what="git --version").decode("ascii", "replace").split()
        except RepositoryError:
            return "unknown"
        return out[2] if len(out) > 2 else "unknown"

    def list_repositories(self) -> list:
        self._check_root()
        names = []
        for entry in _folders(self.root):
            top = os.path.join(self.root, entry)
            if is_bare(top):
                names.append(entry)
                continue
            names += [entry + "/" + sub for sub in _folders(top) if is_bare(os.path.join(top, sub))]
        return sorted(names)

    def exists(self, name: str) -> bool:
        try:
            self._repository(name)
        except RepositoryError:
            return False
        return True

    def size_estimate(self, name: str) -> int:
        """Bytes a backup may take: the repository's objects."""
        total = 0
        for folder, dummy, files in os.walk(os.path.join(self._repository(name), "objects")):
            for entry in files:
                try:
                    total += os.lstat(os.path.join(folder, entry)).st_size
                except OSError:
                    pass
        return total

    # -- export ----------------------------------------------------------------------------
    def export(self, name: str, target: str, in_use: str) -> dict:
        """Pin the refs, bundle exactly them, check the pack whole, write the backup to ``target``."""
        path = self._repository(name)
        token = "%d-%s" % (os.getpid(), secrets.token_hex(4))
        record = {"kind": self.kind, "action": "git_backup", "repository": name, "path": path,
                  "namespace": PIN_PREFIX + token + "/"}
        with scratch_folder(self.scratch) as work:
            meta = os.path.join(work, META)
            write_meta(path, meta)  # before a temporary hook goes in: the repository's own hooks
            if in_use == "disconnect":
                record["hook"] = self._hook_plan(name, path, token)
            with (self._holding(name, path) if in_use == "disconnect" else _nothing()):
                if self.pending is not None:
                    self.pending.write(name, record)
                try:
                    if in_use == "disconnect":
                        block_pushes(record["hook"])
                    snapshot = self._pin(path, record["namespace"])
                    snapshot["repository"] = name
                    bundle = os.path.join(work, BUNDLE) if snapshot["refs"] else None
                    if bundle:
                        make_bundle(path, snapshot, work, bundle)
                        snapshot["objects"] = check_bundle(bundle, snapshot, work, RepositoryError)
                    else:
                        snapshot["objects"] = 0
                finally:
                    undo(record)
                    if self.pending is not None:
                        self.pending.clear(name)
            write_backup(target, snapshot, bundle, meta)
        return {"sessions_ended": None, "refs": len(snapshot["refs"]), "objects": snapshot["objects"],
                "head": snapshot["head"], "object_format": snapshot["object_format"]}

    def _pin(self, path: str, namespace: str) -> dict:
        """Read the refs and HEAD and copy every ref into ``namespace`` in one transaction; again when an
        object vanished in between (a force-push and a gc)."""
        for attempt in range(10):
            snapshot = read_refs(path)
            lines = ["create %s%s %s" % (namespace, ref, oid) for ref, oid in sorted(snapshot["refs"].items())]
            if isinstance(snapshot["head"], dict) and "oid" in snapshot["head"]:
                lines.append("create %sHEAD %s" % (namespace, snapshot["head"]["oid"]))
            if not lines:
                return snapshot
            try:
                git(path, "update-ref", "--stdin", stdin=("\n".join(lines) + "\n").encode("utf-8"),
                    what="Pinning the refs of %s" % path)
                return snapshot
            except RepositoryError:
                if attempt == 9:
                    raise
                time.sleep(0.05)
        raise RepositoryError("unreachable")  # pragma: no cover

    def repair(self, record: dict) -> None:
        """After a kill: the repository's own pre-receive hook back, the pinned refs removed."""
        if record.get("action") != "git_backup":
            return
        path = record.get("path", "")
        if not _real_dir(path) or not str(record.get("namespace", "")).startswith(PIN_PREFIX):
            return
        with self._holding(record.get("repository", path), path):
            undo(record)

    def remove_leftovers(self) -> list:
        """Restore copies a killed import left beside the repositories (hidden, named with its pid)."""
        if folder_problem(self.root) or not _real_dir(self.root):
            return []
        removed = []
        for folder in [self.root] + [os.path.join(self.root, f) for f in _folders(self.root)]:
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for entry in entries:
                if not entry.startswith(ASIDE_PREFIX):
                    continue
                pid = entry[len(ASIDE_PREFIX):].split("-")[1] if entry.count("-") >= 3 else ""
                full = os.path.join(folder, entry)
                if pid.isdigit() and not os.path.exists("/proc/" + pid) and _real_dir(full):
                    shutil.rmtree(full, ignore_errors=True)
                    removed.append(full)
        return removed

    @contextmanager
    def _holding(self, name: str, path: str):
        """An exclusive flock on the repository's folder (shared by every server on this host), waiting at
        most ``wait`` seconds."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            deadline = time.monotonic() + self.wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RepositoryError(
                            "Repository %r is held by another run (a disconnect or an import of another server) "
                            "that did not end within disconnect_wait (%d s); nothing was changed."
                            % (name, self.wait)) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def _hook_plan(self, name: str, path: str, token: str) -> dict:
        """Where the temporary pre-receive hook goes: the hooks folder pushes use (core.hooksPath honoured,
        read with the config pushes see), which must lie inside the repository."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        out = git(path, "rev-parse", "--git-path", "hooks", what="Finding the hooks folder of %r" % name,
                  env=env, safe=False).decode("utf-8", "replace").strip()
        hooks = os.path.normpath(os.path.join(path, out))
        if os.path.commonpath([hooks, path]) != path:
            raise RepositoryError("Repository %r takes its hooks from %s (core.hooksPath), outside the repository; "
                                  "disconnect would refuse pushes to every repository sharing that folder: use "
                                  "in_use keep_connections for this server." % (name, hooks))
        current = path
        for part in os.path.relpath(hooks, path).split(os.sep):
            current = os.path.join(current, part)
            if part != "." and os.path.lexists(current) and not _real_dir(current):
                raise RepositoryError("Repository %r is refused: its hooks folder %s is not a real folder; the "
                                      "engine never follows a link in the git folder." % (name, current))
        hook = os.path.join(hooks, "pre-receive")
        return {"dir": hooks, "made_dir": not os.path.lexists(hooks), "hook": hook,
                "had_original": os.path.lexists(hook), "aside": os.path.join(hooks, ".pre-receive.repobackup-" + token),
                "new": os.path.join(hooks, ".pre-receive.repobackup-new-" + token)}

    # -- content ----------------------------------------------------------------------------------
    @staticmethod
    def content_hash(path: str) -> str:
        """sha256 of what the backup holds: the refs, HEAD and symbolic refs (they name every object) and
        the config, description, hooks and info (names, modes and bytes; not their times)."""
        with scratch_folder(None) as work:
            snapshot, dummy, meta = unpack(path, work)
            with tarfile.open(meta, "r:gz") as archive:
                entries = describe_meta(archive)
        return content_digest(snapshot, entries)

    def live_content_hash(self, name: str) -> str:
        path = self._repository(name)
        snapshot = read_refs(path)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            add_meta(archive, path)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer, mode="r") as archive:
            return content_digest(snapshot, describe_meta(archive))

    # -- verify and restore --------------------------------------------------------------------------
    @staticmethod
    def verify_file(path: str) -> None:
        """The container, its snapshot and config archive readable, and the bundle's pack indexed whole."""
        with scratch_folder(None) as work:
            try:
                snapshot, bundle, meta = unpack(path, work)
                with tarfile.open(meta, "r:gz") as archive:
                    describe_meta(archive)
                if bundle:
                    check_bundle(bundle, snapshot, work, BackupError)
            except BackupError as exc:
                raise FileError("", path, " is not a usable git backup: %s." % str(exc).rstrip(".")) from None
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise FileError("", path, " cannot be read as a git backup: %s." % exc) from None

    def restore(self, data_file: str, name: str) -> None:
        """Rebuild aside (fetch, refs, fsck, config and hooks), then swap into ``name`` (created or replaced).
        The backup itself holds everything the repository had (the manifest adds nothing to give back)."""
        self._check_root()
        parts = split_name(name)
        parent = self.root if len(parts) == 1 else os.path.join(self.root, parts[0])
        live = os.path.join(parent, parts[-1])
        if len(parts) == 2 and not os.path.lexists(parent):
            os.mkdir(parent, stat.S_IMODE(os.stat(self.root).st_mode))
        if not _real_dir(parent):
            raise RepositoryError("Repository %r cannot be restored: %s is not a real folder." % (name, parent))
        exists = os.path.lexists(live)
        if exists:
            self._repository(name)
        tag = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
        aside = os.path.join(parent, "%srestore-%d-%s" % (ASIDE_PREFIX, os.getpid(), tag))
        with scratch_folder(self.scratch) as work:
            try:
                rebuild(data_file, aside, work)
                if not exists:
                    os.rename(aside, live)
                else:
                    with self._holding(name, live):  # not while a disconnect has its hook in
                        exchange(aside, live)
                fsync_dir(parent)
            finally:
                if _real_dir(aside):
                    shutil.rmtree(aside, ignore_errors=True)

    @contextmanager
    def restored_in_scratch(self, data_file: str):
        """The backup rebuilt, checked (fsck, refs, object count) and complete, in the scratch folder."""
        with scratch_folder(self.scratch) as work:
            target = os.path.join(work, "restored.git")
            rebuild(data_file, target, work)
            yield target

    def check_restorable(self, data_file: str, manifest: dict, target: dict | None = None,
                         identity: str | None = None) -> list:
        """A restore drill: rebuilt in scratch (fetch, every ref and HEAD set, ``git fsck --full`` clean),
        then the refs and objects counted against the snapshot and the manifest; the checks passed."""
        with scratch_folder(self.scratch) as work:
            restored = os.path.join(work, "restored.git")
            try:
                snapshot = rebuild(data_file, restored, work)
            except BackupError as exc:
                raise RestoreCheckFailed("Backup %s could not be restored into scratch: %s"
                                         % (data_file, str(exc))) from None
            passed = ["restore", "fsck", "refs", "head", "objects"]
            for key in ("refs", "objects"):
                recorded = manifest.get(key)
                have = len(snapshot["refs"]) if key == "refs" else snapshot["objects"]
                if recorded is not None and recorded != have:
                    raise RestoreCheckFailed("Backup %s holds %d %s, but its manifest recorded %s."
                                             % (data_file, have, key, recorded))
                if recorded is not None:
                    passed.append("manifest_" + key)
            return passed

    def scratch_space(self, name: str, size: int) -> list:
        """A drill unpacks the backup (its size) and rebuilds the repository from it (about its size again)."""
        return [(place, free, 2 * size) for place, free, dummy in super().scratch_space(name, size)]


# -- refs ------------------------------------------------------------------------------------------------

def read_refs(path: str) -> dict:
    """HEAD, the refs and the symbolic refs of the repository at ``path`` (the pins left out)."""
    fmt = git(path, "rev-parse", "--show-object-format", what="Reading %s" % path).decode().strip() or "sha1"
    head = git(path, "symbolic-ref", "-q", "HEAD", what="Reading HEAD of %s" % path, ok=(0, 1)).decode().strip()
    if head:
        head = {"symref": head}
    else:
        oid = git(path, "rev-parse", "-q", "--verify", "HEAD", what="Reading HEAD of %s" % path,
                  ok=(0, 1)).decode().strip()
        head = {"oid": oid} if oid else None
    out = git(path, "for-each-ref", "--format=%(objectname) %(refname) %(symref)",
              what="Listing the refs of %s" % path).decode("utf-8", "surrogateescape")
    refs, symrefs = {}, {}
    for line in out.splitlines():
        fields = line.split(" ")
        if len(fields) < 2 or fields[1].startswith(PIN_PREFIX):
            continue
        if len(fields) > 2 and fields[2]:
            symrefs[fields[1]] = fields[2]
        elif fields[0]:
            refs[fields[1]] = fields[0]
    return {"format": SNAPSHOT_FORMAT, "object_format": fmt, "head": head, "refs": refs, "symrefs": symrefs}


def set_refs(path: str, snapshot: dict, error=RepositoryError) -> None:
    """Make the refs of the repository at ``path`` exactly the snapshot's (HEAD and symbolic refs too)."""
    have = read_refs(path)
    lines = ["update %s %s" % (ref, oid) for ref, oid in sorted(snapshot["refs"].items())]
    lines += ["delete %s" % ref for ref in sorted(have["refs"]) if ref not in snapshot["refs"]]
    if lines:
        git(path, "update-ref", "--stdin", stdin=("\n".join(lines) + "\n").encode("utf-8"),
            what="Setting the refs", error=error)
    for ref, to in sorted(snapshot["symrefs"].items()):
        git(path, "symbolic-ref", ref, to, what="Setting the symbolic ref %s" % ref, error=error)
    head = snapshot["head"] or {}
    if "symref" in head:
        git(path, "symbolic-ref", "HEAD", head["symref"], what="Setting HEAD", error=error)
    elif "oid" in head:
        git(path, "update-ref", "--no-deref", "HEAD", head["oid"], what="Setting HEAD", error=error)
    now = read_refs(path)
    for key in ("refs", "symrefs", "head"):
        if now[key] != snapshot[key]:
            raise error("The restored %s differ from the backup's snapshot." % key)


# -- the bundle ------------------------------------------------------------------------------------------

def make_bundle(path: str, snapshot: dict, work: str, bundle: str) -> None:
    """``git bundle create`` of exactly the snapshot's refs and HEAD, from a scratch repository that
    borrows the live objects (pinned, so no gc can take them) and names the refs as the live one does."""
    staging = os.path.join(work, "bundle.git")
    git(None, "init", "-q", "--bare", "--template=", "--object-format=" + snapshot["object_format"], staging,
        what="Preparing a scratch repository")
    with open(os.path.join(staging, "objects", "info", "alternates"), "w", encoding="utf-8") as handle:
        handle.write(os.path.join(path, "objects") + "\n")
    set_refs(staging, dict(snapshot, symrefs={}))
    git(staging, "bundle", "create", "-q", bundle, "--all", what="git bundle create of %s" % path)


def bundle_header(bundle: str, error=BackupError) -> tuple:
    """({ref: oid} named in the bundle, offset of its pack); refuses prerequisites (a full backup has none)."""
    refs = {}
    with open(bundle, "rb") as handle:
        first = handle.readline()
        if first not in (b"# v2 git bundle\n", b"# v3 git bundle\n"):
            raise error("the bundle does not start with a git bundle header")
        while True:
            line = handle.readline()
            if not line.endswith(b"\n"):
                raise error("the bundle's header is cut short")
            if line == b"\n":
                return refs, handle.tell()
            if line.startswith((b"@", b"-")):
                if line.startswith(b"-"):
                    raise error("the bundle needs objects it does not hold (prerequisites)")
                continue
            oid, dummy, ref = line.rstrip(b"\n").decode("utf-8", "surrogateescape").partition(" ")
            refs[ref] = oid


def check_bundle(bundle: str, snapshot: dict, work: str, error=BackupError) -> int:
    """Index the bundle's pack whole in an empty scratch repository (``index-pack --strict``: every object's
    checksum, its deltas and its links), check every ref of the snapshot is in it; the number of objects."""
    refs, offset = bundle_header(bundle, error)
    for ref, oid in snapshot["refs"].items():
        if refs.get(ref) != oid:
            raise error("the bundle does not hold ref %s at %s" % (ref, oid))
    probe = os.path.join(work, "check-%s.git" % secrets.token_hex(4))
    git(None, "init", "-q", "--bare", "--template=", "--object-format=" + snapshot["object_format"], probe,
        what="Preparing a scratch repository")
    try:
        with open(bundle, "rb") as handle:
            handle.seek(offset)  # git reads the pack from here, through the same open file
            git(probe, "index-pack", "--strict", "--stdin", stdin=handle,
                what="git index-pack --strict of the bundle's pack", error=error)
        head = snapshot["head"] or {}
        tips = sorted(set(snapshot["refs"].values()) | ({head["oid"]} if "oid" in head else set()))
        tips = ("\n".join(tips) + "\n").encode("ascii")
        out = git(probe, "cat-file", "--batch-check", stdin=tips, what="Looking up the refs", error=error)
        if b" missing" in out:
            raise error("the bundle's pack lacks objects its refs name")
        return count_objects(probe, error)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def count_objects(path: str, error=BackupError) -> int:
    out = git(path, "count-objects", "-v", what="Counting objects", error=error).decode()
    counts = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return int(counts.get("count", 0)) + int(counts.get("in-pack", 0))


# -- the config archive ---------------------------------------------------------------------------------

def add_meta(archive: tarfile.TarFile, path: str) -> None:
    """config, description, hooks/ and info/ of the repository at ``path``: plain files, folders and symbolic
    links as they are (a link is stored, never followed); the engine's own temporary files left out."""
    for entry in META_ENTRIES:
        top = os.path.join(path, entry)
        if not os.path.lexists(top):
            continue
        pending = [(top, entry)]
        while pending:
            full, arcname = pending.pop(0)
            info = os.lstat(full)
            if os.path.basename(full).startswith(".pre-receive.repobackup-"):
                continue
            if stat.S_ISDIR(info.st_mode):
                archive.addfile(_member(arcname, tarfile.DIRTYPE, info))
                pending += [(os.path.join(full, n), arcname + "/" + n) for n in sorted(os.listdir(full))]
            elif stat.S_ISLNK(info.st_mode):
                member = _member(arcname, tarfile.SYMTYPE, info)
                member.linkname = os.readlink(full)
                archive.addfile(member)
            elif stat.S_ISREG(info.st_mode):
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as handle:
                    data = handle.read()
                member = _member(arcname, tarfile.REGTYPE, info)
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))


def _member(name: str, kind: bytes, info: os.stat_result) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.mode = stat.S_IMODE(info.st_mode)
    member.mtime = int(info.st_mtime)
    return member


def write_meta(path: str, target: str) -> None:
    with tarfile.open(target, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        add_meta(archive, path)


def describe_meta(archive: tarfile.TarFile) -> list:
    """(name, type, mode, sha256 of the bytes or the link) of each member, checked to be one the engine
    writes (under config, description, hooks/ or info/; no '..'; files, folders, links)."""
    entries = []
    for member in archive.getmembers():
        _check_member(member)
        if member.isreg():
            digest = hashlib.sha256(archive.extractfile(member).read()).hexdigest()
        else:
            digest = member.linkname if member.issym() else ""
        entries.append([member.name, member.type.decode(), member.mode & 0o7777, digest])
    return sorted(entries)


def _check_member(member: tarfile.TarInfo) -> None:
    parts = member.name.split("/")
    if parts[0] not in META_ENTRIES or any(p in ("", ".", "..") for p in parts) or not (
            member.isreg() or member.isdir() or member.issym()):
        raise BackupError("the config archive holds %r, which is not part of a repository's config, hooks or "
                          "info" % member.name)


def extract_meta(meta: str, path: str) -> None:
    """Put the archived config, description, hooks and info into the new repository at ``path``: files
    created new (never through a link), links as links, no set-id bits."""
    for entry in META_ENTRIES:
        full = os.path.join(path, entry)
        if _real_dir(full):
            shutil.rmtree(full)
        elif os.path.lexists(full):
            os.unlink(full)
    with tarfile.open(meta, "r:gz") as archive:
        for member in archive.getmembers():
            _check_member(member)
            full = os.path.join(path, *member.name.split("/"))
            if member.isdir():
                os.mkdir(full, 0o700)
            elif member.issym():
                os.symlink(member.linkname, full)
            else:
                fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(archive.extractfile(member), out)
        for member in archive.getmembers():  # modes last, so a read-only folder can be filled first
            if not member.issym():
                os.chmod(os.path.join(path, *member.name.split("/")), member.mode & 0o777)


def content_digest(snapshot: dict, meta_entries: list) -> str:
    facts = {key: snapshot[key] for key in ("object_format", "head", "refs", "symrefs")}
    facts["meta"] = meta_entries
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode("utf-8")).hexdigest()


# -- the backup file ------------------------------------------------------------------------------------

def write_backup(target: str, snapshot: dict, bundle: str | None, meta: str) -> None:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        data = json.dumps(snapshot, sort_keys=True, indent=1).encode("utf-8")
        member = tarfile.TarInfo(SNAPSHOT)
        member.size, member.mode, member.mtime = len(data), 0o640, int(time.time())
        archive.addfile(member, io.BytesIO(data))
        for name, source in ((META, meta), (BUNDLE, bundle)):
            if source:
                with open(source, "rb") as handle:
                    member = archive.gettarinfo(fileobj=handle, arcname=name)
                    member.uid = member.gid = 0
                    member.uname = member.gname = ""
                    member.mode = 0o640
                    archive.addfile(member, handle)


def unpack(data_file: str, work: str) -> tuple:
    """(snapshot, bundle path or None, config archive path) of a backup, its members written into ``work``."""
    found = {}
    with tarfile.open(data_file, "r:") as archive:
        for member in archive:
            if member.name not in (SNAPSHOT, BUNDLE, META) or not member.isreg() or member.name in found:
                raise BackupError("it holds %r, which is no part of a git backup" % member.name)
            target = os.path.join(work, "unpacked-" + member.name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(archive.extractfile(member), out, 1 << 20)
            found[member.name] = target
    if SNAPSHOT not in found or META not in found:
        raise BackupError("it lacks %s" % (SNAPSHOT if SNAPSHOT not in found else META))
    with open(found[SNAPSHOT], "rb") as handle:
        try:
            snapshot = json.loads(handle.read().decode("utf-8"))
        except ValueError as exc:
            raise BackupError("its %s cannot be read: %s" % (SNAPSHOT, exc)) from None
    _check_snapshot(snapshot)
    if bool(snapshot["refs"]) != (BUNDLE in found):
        raise BackupError("its refs and its bundle do not go together (a bundle only and always with refs)")
    return snapshot, found.get(BUNDLE), found[META]


def _check_snapshot(snapshot) -> None:
    good = (isinstance(snapshot, dict) and snapshot.get("format") == SNAPSHOT_FORMAT
            and snapshot.get("object_format") in ("sha1", "sha256")
            and isinstance(snapshot.get("refs"), dict) and isinstance(snapshot.get("symrefs"), dict)
            and isinstance(snapshot.get("objects"), int)
            and (snapshot.get("head") is None or isinstance(snapshot.get("head"), dict)))
    if good:
        width = 40 if snapshot["object_format"] == "sha1" else 64
        names = list(snapshot["refs"]) + list(snapshot["symrefs"]) + list(snapshot["symrefs"].values())
        head = snapshot["head"] or {}
        oids = list(snapshot["refs"].values()) + ([head["oid"]] if "oid" in head else [])
        good = (all(isinstance(n, str) and n.startswith("refs/") and not _bad_ref(n) for n in names)
                and all(isinstance(o, str) and len(o) == width and all(c in "0123456789abcdef" for c in o)
                        for o in oids)
                and set(head) <= {"symref", "oid"} and len(head) <= 1
                and (not head.get("symref") or (isinstance(head["symref"], str) and not _bad_ref(head["symref"]))))
    if not good:
        raise BackupError("its %s is not a snapshot of refs this engine wrote" % SNAPSHOT)


def _bad_ref(name: str) -> bool:
    return any(ord(c) < 33 or c in "~^:?*[\\" for c in name) or ".." in name or name.startswith("-")


def rebuild(data_file: str, target: str, work: str) -> dict:
    """A new bare repository at ``target`` from a backup: init, fetch from the bundle, every ref and HEAD as
    in the snapshot, ``git fsck --full`` clean and the object count as recorded, then config, description,
    hooks and info.  On any failure ``target`` is removed and BackupError names the cause."""
    try:
        snapshot, bundle, meta = unpack(data_file, work)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise FileError("", data_file, " cannot be read as a git backup: %s." % exc) from None
    except BackupError as exc:
        raise FileError("", data_file, " is not a usable git backup: %s." % exc) from None
    if os.path.lexists(target):
        shutil.rmtree(target)
    try:
        git(None, "init", "-q", "--bare", "--template=", "--object-format=" + snapshot["object_format"], target,
            what="git init of the restore", error=BackupError)
        if bundle:
            head = ["HEAD"] if "oid" in (snapshot["head"] or {}) else []  # a detached HEAD's own history
            git(target, "fetch", "-q", "--no-write-fetch-head", "--no-tags", bundle, "+refs/*:refs/*", *head,
                what="git fetch from the backup's bundle", error=BackupError)
        set_refs(target, snapshot, error=BackupError)
        git(target, "fsck", "--full", "--no-progress", "--no-dangling", what="git fsck --full of the restore",
            error=BackupError)
        have = count_objects(target)
        if have != snapshot["objects"]:
            raise BackupError("The restore holds %d objects; the backup recorded %d." % (have, snapshot["objects"]))
        extract_meta(meta, target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return snapshot


# -- disconnect: the temporary pre-receive hook ---------------------------------------------------------------

def block_pushes(plan: dict) -> None:
    """Put the temporary hook in; the original (if any) stays reachable under ``aside`` (a hard link)."""
    if plan["made_dir"]:
        os.mkdir(plan["dir"], 0o755)
    fd = os.open(plan["new"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(HOOK)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(plan["new"], 0o755)
    if plan["had_original"]:
        try:
            os.link(plan["hook"], plan["aside"], follow_symlinks=False)
        except PermissionError:  # protected_hardlinks: a hook another user owns; moved aside instead
            os.rename(plan["hook"], plan["aside"])
    os.rename(plan["new"], plan["hook"])
    fsync_dir(plan["dir"])


def _ours(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        return HOOK_MARK.encode() in handle.read(4096)


def undo(record: dict) -> None:
    """Everything an export changed in the repository undone: its own pre-receive hook back (the same
    file), or the temporary one removed; the pinned refs deleted.  Safe to repeat."""
    plan = record.get("hook")
    if plan:
        hook, aside = plan["hook"], plan["aside"]
        if os.path.lexists(aside):
            if os.path.lexists(hook) and os.path.samestat(os.lstat(aside), os.lstat(hook)):
                os.unlink(aside)  # the temporary hook never went in
            else:
                os.rename(aside, hook)
        elif not plan["had_original"] and _ours(hook):
            os.unlink(hook)
        if os.path.lexists(plan["new"]):
            os.unlink(plan["new"])
        if plan["made_dir"]:
            try:
                os.rmdir(plan["dir"])
            except OSError:
                pass
        if _real_dir(plan["dir"]):
            fsync_dir(plan["dir"])
    path, namespace = record["path"], record["namespace"]
    out = git(path, "for-each-ref", "--format=%(refname)", namespace, what="Listing the pinned refs")
    pins = out.decode("utf-8", "surrogateescape").split()
    if pins:
        git(path, "update-ref", "--stdin", stdin=("".join("delete %s\n" % ref for ref in pins)).encode(),
            what="Removing the pinned refs of %s" % path)


# -- small helpers -----------------------------------------------------------------------------------------------

def _folders(path: str) -> list:
    """Names of the real folders in ``path`` not starting with '.' ([] when it cannot be read)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))


@contextmanager
def _nothing():
    yield


def exchange(new: str, live: str) -> None:
    """Swap two folders in one step (renameat2 RENAME_EXCHANGE); where the kernel or libc cannot, the
    live one is renamed to ``new``'s name and ``new`` into place."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd = -100
        if libc.renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(live), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), live)
    except AttributeError:
        pass
    old = new + "-old"
    os.rename(live, old)
    try:
        os.rename(new, live)
    except OSError:
        os.rename(old, live)
        raise
    os.rename(old, new)
