# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``git`` repository server: each repository is a bare repository under one folder.

Repositories are the bare repositories in the git root and one folder below it
(``app.git``, ``team/app.git``: the owner/repository layout of Gitea, Forgejo
and cgit), named by their relative path; folders and names starting with ``.``
and symbolic links are never repositories.

A backup (``<stamp>.git.tar``, restorable with ``tar`` and ``git`` alone) is
described in git_backup.py: the pinned refs, a bundle of exactly them, and the
config, description, hooks and info.

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
import os
import pwd
import secrets
import shutil
import stat
import tarfile
import time
from contextlib import contextmanager

from .errors import BackupError, FileError, RepositoryError, RestoreCheckFailed
from .git_backup import (BUNDLE, META, PIN_PREFIX, add_meta, check_bundle, content_digest, describe_meta, git,
                         make_bundle, read_refs, real_dir, rebuild, unpack, write_backup, write_meta)
from .kinds import RepositoryServer, register
from .layout import fsync_dir, process_alive, scratch_folder
from .privilege import folder_problem
from .settings import Option, check_path

ASIDE_PREFIX = ".repobackup-"
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


def split_name(name: str) -> list:
    """The parts of a repository name (1 or 2, none hidden), or RepositoryError."""
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or any(p in ("", ".", "..") or p.startswith(".") or "\0" in p for p in parts):
        raise RepositoryError("Repository name %r is not allowed for a git server; use a folder name or "
                              "owner/name (as team/app.git), no part starting with '.'." % (name,))
    return parts


def is_bare(path: str) -> bool:
    """A bare repository: HEAD a plain file, objects and refs real folders (no link among them)."""
    try:
        return (stat.S_ISREG(os.lstat(os.path.join(path, "HEAD")).st_mode)
                and real_dir(os.path.join(path, "objects")) and real_dir(os.path.join(path, "refs")))
    except OSError:
        return False


@register
class GitServer(RepositoryServer):
    kind = "git"
    data_suffix = ".git.tar"
    data_compressed = True  # the bundle's pack is compressed; the metadata beside it is small
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
        if not real_dir(self.root):
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
        if not real_dir(path) or not str(record.get("namespace", "")).startswith(PIN_PREFIX):
            return
        with self._holding(record.get("repository", path), path):
            undo(record)

    def remove_leftovers(self) -> list:
        """Restore copies a killed import left beside the repositories (hidden, named with its pid)."""
        if folder_problem(self.root) or not real_dir(self.root):
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
                if pid.isdigit() and not process_alive(pid) and real_dir(full):
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
            if part != "." and os.path.lexists(current) and not real_dir(current):
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
        if not real_dir(parent):
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
                if real_dir(aside):
                    shutil.rmtree(aside, ignore_errors=True)

    @contextmanager
    def restored_in_scratch(self, data_file: str):
        """The backup rebuilt, checked (fsck, refs, object count) and complete, in the scratch folder."""
        with scratch_folder(self.scratch) as work:
            target = os.path.join(work, "restored.git")
            rebuild(data_file, target, work)
            yield target

    def check_restorable(self, data_file: str, manifest: dict, target: dict | None = None) -> list:
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
        if real_dir(plan["dir"]):
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
