# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Git run safely, and the backup file of the ``git`` kind (kind_git.py): written, checked, rebuilt.

A backup (``<stamp>.git.tar``, restorable with ``tar`` and ``git`` alone) is an
uncompressed tar holding:

- ``snapshot.json``: the refs as they were pinned (name and object id), HEAD
  (a symbolic ref or an object id), other symbolic refs, the object format and
  the number of objects;
- ``repository.bundle``: ``git bundle create`` of exactly those refs (with
  HEAD), absent for an empty repository (git refuses an empty bundle);
- ``repository.tar.gz``: the repository's ``config``, ``description``,
  ``hooks/`` and ``info/``.

``git()`` runs git as an argument list with ``GIT_CONFIG_NOSYSTEM``, no global
config, none of the caller's ``GIT_*`` variables, ``core.hooksPath=/dev/null``
(no hook, not even ``reference-transaction``), ``core.fsmonitor=false`` and no
automatic gc or maintenance.

``make_bundle`` bundles in a scratch repository that borrows the live objects
(``objects/info/alternates``) and holds the snapshot's refs under their own
names, so the bundle names them as the live repository did and nothing in the
live repository's config is read by the commands that do the heavy work.
``check_bundle`` indexes the pack whole (``index-pack --strict`` in an empty
scratch repository: every object, its checksum, deltas and links) and looks
every snapshot ref up in it; ``git bundle verify`` alone said "okay" for a
bundle cut in half.  ``rebuild`` makes a new bare repository from a backup:
init, fetch from the bundle, every ref and HEAD as in the snapshot, ``git fsck
--full`` clean and the object count as recorded, and only then the config,
description, hooks and info (so no ``fsck.*`` setting of the repository can
hide a fault).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import time

from .errors import BackupError, FileError, RepositoryError

SNAPSHOT, BUNDLE, META = "snapshot.json", "repository.bundle", "repository.tar.gz"
SNAPSHOT_FORMAT = 1
PIN_PREFIX = "refs/repobackup/"
META_ENTRIES = ("config", "description", "hooks", "info")


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


def real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


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
    created new (never through a link, not even a folder link the archive itself holds), links as links, no
    set-id bits."""
    for entry in META_ENTRIES:
        full = os.path.join(path, entry)
        if real_dir(full):
            shutil.rmtree(full)
        elif os.path.lexists(full):
            os.unlink(full)
    with tarfile.open(meta, "r:gz") as archive:
        for member in archive.getmembers():
            _check_member(member)
            parent = path
            for part in member.name.split("/")[:-1]:  # never through a link the archive made itself
                parent = os.path.join(parent, part)
                if not real_dir(parent):
                    raise BackupError("the config archive puts %r under something that is not a folder" % member.name)
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
