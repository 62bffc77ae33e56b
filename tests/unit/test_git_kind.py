# -*- coding: utf-8 -*-
"""The git kind (kind_git.py) with real git: repositories owned by an unprivileged user, pushes over git daemon
during the backups, the pinned snapshot against a force-push and gc, disconnect and its repair after SIGKILL,
hooks and config commands never run as root, hostile links refused."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import tarfile
import time

import pytest
import yaml

from ansible_collections.reposerver.backup.plugins.module_utils import engine as engine_mod
from ansible_collections.reposerver.backup.plugins.module_utils import kind_git, kinds, settings
from ansible_collections.reposerver.backup.plugins.module_utils.errors import (BackupError, FileError,
                                                                               RepositoryError,
                                                                               RestoreCheckFailed)
from ansible_collections.reposerver.backup.plugins.module_utils.layout import encode_name

import git_testlib as gt
from repobackup_testlib import HOST, give_tmp_to

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (repositories of another user)")


@pytest.fixture
def git_root(tmp_path, paths, destination):
    """tmp_path, the state folder and the destination belong to the owner (as the role hands them over);
    the git root is the owner's."""
    give_tmp_to(tmp_path, paths, destination, gt.OWNER)
    root = tmp_path / "git"
    root.mkdir(mode=0o755)
    gt.chown(root)
    return root


@pytest.fixture
def make_git_engine(git_root, paths, destination):
    def make(**options):
        raw = {"kind": "git", "git_root": str(git_root), "destination": str(destination)}
        raw.update(options)
        return engine_mod.Engine(settings.validate(raw), paths, host=HOST)
    return make


@pytest.fixture
def daemon(git_root):
    served = gt.Daemon(git_root)
    yield served
    served.stop()


def backups_of(destination, name: str) -> list:
    folder = destination / HOST / "main" / encode_name(name)
    return sorted(str(p) for p in folder.glob("*.git.tar"))


def manifest_of(data_file: str) -> dict:
    with open(data_file[:-len(".git.tar")] + ".manifest.json", encoding="utf-8") as handle:
        return json.load(handle)


def snapshot_of(data_file: str) -> dict:
    with tarfile.open(data_file) as archive:
        return json.load(archive.extractfile("snapshot.json"))


def fsck_clean(repo: str) -> None:
    done = gt.run(["git", "--git-dir=" + repo, "fsck", "--full", "--no-dangling"], user=gt.OWNER)
    assert done.returncode == 0 and "error" not in done.stderr.lower(), done.stderr


def every_ref_resolves(repo: str, wanted: dict) -> None:
    for ref, oid in wanted.items():
        out = gt.run(["git", "--git-dir=" + repo, "rev-parse", "--verify", ref + "^{object}"], user=gt.OWNER).stdout
        assert out.strip() == oid


def as_owner(fn, *args):
    """A driver call done as the owner, as the engine does it (privilege.call_as)."""
    from ansible_collections.reposerver.backup.plugins.module_utils import privilege
    return privilege.call_as(gt.OWNER, fn, *args)


# -- settings and listing -----------------------------------------------------------------------------------

def test_the_default_run_as_user_is_the_owner_of_the_git_root(git_root, tmp_path):
    assert settings.validate({"kind": "git", "git_root": str(git_root), "destination": "/x"}).run_as == gt.OWNER
    assert settings.validate({"kind": "git", "git_root": str(tmp_path / "none"), "destination": "/x"}).run_as \
        == "root"
    assert settings.validate({"kind": "git", "git_root": str(git_root), "destination": "/x",
                              "run_as": "backup"}).run_as == "backup"
    assert settings.validate({"kind": "git", "destination": "/x"}).options == {"root": "/srv/git"}


def test_repositories_down_to_depth_two_named_by_their_path(git_root, make_git_engine, destination):
    for name in ("app.git", "team/app.git", "team/web", "other/x.git", "team/sub/deep.git"):
        gt.bare(git_root, name)
    gt.bare(git_root, ".hidden.git")
    gt.bare(git_root, "team/.trash.git")
    (git_root / "notes").mkdir()
    os.symlink(str(git_root / "team" / "app.git"), str(git_root / "link.git"))
    os.symlink(str(git_root / "team"), str(git_root / "alias"))
    driver = kinds.make_driver("git", {"root": str(git_root)})
    assert as_owner(driver.list_repositories) == ["app.git", "other/x.git", "team/app.git", "team/web"]
    engine = make_git_engine()
    result = engine.export()
    assert result["result"] == "ok", result
    assert sorted(result["repositories"]) == ["app.git", "other/x.git", "team/app.git", "team/web"]
    assert backups_of(destination, "team/app.git") and (destination / HOST / "main" / "team%2Fapp.git").is_dir()
    assert manifest_of(backups_of(destination, "team/app.git")[0])["repository"] == "team/app.git"


# -- export while pushes go on, restore -------------------------------------------------------------------

@pytest.mark.parametrize("in_use", ["keep_connections", "disconnect"])
def test_backup_while_pushes_go_on_restores_fsck_clean_with_the_snapshot_refs(
        git_root, make_git_engine, daemon, destination, tmp_path, in_use, monkeypatch):
    repo = gt.bare(git_root, "team/app.git")
    gt.commit_into(repo, tmp_path / "seed", count=5, tag="v1")
    gt.commit_into(repo, tmp_path / "seed", count=2, branch="feature")
    pusher = gt.Pusher(daemon, "team/app.git", tmp_path / "client")
    probe = gt.Pusher(daemon, "team/app.git", tmp_path / "probe", branch="probe", user=gt.OWNER)  # inside the export
    during = tmp_path / "during.json"
    real = kind_git.make_bundle

    def bundle_while_pushing(path, snapshot, work, bundle):
        """Between the pinned snapshot and the bundle: keep_connections waits until two pushes landed,
        disconnect tries one and records what it was told."""
        if in_use == "keep_connections":
            seen, deadline = {snapshot["refs"]["refs/heads/main"]}, time.monotonic() + 60
            while len(seen) < 3 and time.monotonic() < deadline:
                seen.add(gt.git("--git-dir=" + path, "rev-parse", "refs/heads/main").strip())
                time.sleep(0.05)
            during.write_text(json.dumps(len(seen) - 1))
        else:
            during.write_text(json.dumps(probe.push_once()))
        return real(path, snapshot, work, bundle)
    monkeypatch.setattr(kind_git, "make_bundle", bundle_while_pushing)
    pusher.start()
    try:
        pusher.wait_for(3)
        result = make_git_engine(in_use=in_use, disconnect_wait=5).export(["team/app.git"])
        pusher.wait_for(len(pusher.results) + 2)
    finally:
        pusher.stop()
    assert result["result"] == "ok", result
    seen = json.loads(during.read_text())
    if in_use == "keep_connections":
        assert seen == 2, ("pushes landed between the pinned snapshot and the bundle", pusher.results)
        assert all(ok for ok, dummy in pusher.results), [e for ok, e in pusher.results if not ok]
    else:
        assert seen[0] is False and "being backed up; pushes are refused until the backup ends" in seen[1]
        refused = [err for ok, err in pusher.results if not ok]
        assert all("pushes are refused until the backup ends" in e for e in refused), refused
        assert pusher.results[-1][0], "pushes are accepted again after the backup"
        assert not os.path.lexists(os.path.join(repo, "hooks", "pre-receive"))
    data_file = backups_of(destination, "team/app.git")[0]
    snapshot, manifest = snapshot_of(data_file), manifest_of(data_file)
    assert manifest["refs"] == len(snapshot["refs"]) == 3 and manifest["objects"] == snapshot["objects"] > 0
    assert snapshot["head"] == {"symref": "refs/heads/main"}
    assert not [r for r in gt.refs(repo) if r.startswith("refs/repobackup/")], "the pins are removed"
    imported = make_git_engine().import_backup(data_file, repository="restored/app.git")
    assert imported["changed"]
    restored = str(git_root / "restored" / "app.git")
    fsck_clean(restored)
    assert gt.refs(restored) == snapshot["refs"]
    every_ref_resolves(restored, snapshot["refs"])
    assert gt.git("--git-dir=" + restored, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert os.stat(restored).st_uid == os.stat(repo).st_uid


def test_the_pinned_snapshot_survives_a_force_push_a_deleted_branch_and_gc(
        git_root, make_git_engine, tmp_path, destination, monkeypatch):
    """Between the ref snapshot and the bundle, main is rewritten, feature deleted and gc --prune=now run:
    the objects of the snapshot stay (pinned), the backup holds them, and once the pins are gone gc drops them."""
    repo = gt.bare(git_root, "app.git")
    old_main = gt.commit_into(repo, tmp_path / "seed", count=4)
    feature = gt.commit_into(repo, tmp_path / "seed", count=2, branch="feature")
    real = kind_git.make_bundle

    def race(path, snapshot, work, bundle):
        other = tmp_path / "rewrite"
        os.makedirs(str(other))
        gt.chown(other)
        gt.git("init", "-q", str(other))
        gt.git("-C", str(other), "commit", "-q", "--allow-empty", "-m", "unrelated history")
        gt.git("-C", str(other), "push", "-q", "--force", repo, "HEAD:refs/heads/main")
        gt.git("--git-dir=" + repo, "update-ref", "-d", "refs/heads/feature")
        gt.git("--git-dir=" + repo, "-c", "gc.reflogExpire=now", "-c", "gc.reflogExpireUnreachable=now",
               "reflog", "expire", "--all", "--expire=now")
        gt.git("--git-dir=" + repo, "gc", "-q", "--prune=now")
        assert gt.run(["git", "--git-dir=" + repo, "cat-file", "-e", feature], user=gt.OWNER,
                      check=False).returncode == 0, "pinned: gc kept it"
        return real(path, snapshot, work, bundle)
    monkeypatch.setattr(kind_git, "make_bundle", race)
    assert make_git_engine().export(["app.git"])["result"] == "ok"
    data_file = backups_of(destination, "app.git")[0]
    assert snapshot_of(data_file)["refs"] == {"refs/heads/main": old_main, "refs/heads/feature": feature}
    monkeypatch.setattr(kind_git, "make_bundle", real)
    make_git_engine().import_backup(data_file, repository="back.git")
    restored = str(git_root / "back.git")
    fsck_clean(restored)
    assert gt.refs(restored) == {"refs/heads/main": old_main, "refs/heads/feature": feature}
    # The pins were all that kept those objects: without them gc drops them.
    gt.git("--git-dir=" + repo, "gc", "-q", "--prune=now")
    assert gt.run(["git", "--git-dir=" + repo, "cat-file", "-e", feature], user=gt.OWNER,
                  check=False).returncode != 0


def test_an_empty_repository_gets_a_refs_only_backup(git_root, make_git_engine, destination):
    repo = gt.bare(git_root, "empty.git")
    gt.git("--git-dir=" + repo, "symbolic-ref", "HEAD", "refs/heads/trunk")
    with open(os.path.join(repo, "description"), "w", encoding="utf-8") as handle:
        handle.write("nothing yet\n")
    assert make_git_engine().export(["empty.git"])["result"] == "ok"
    data_file = backups_of(destination, "empty.git")[0]
    with tarfile.open(data_file) as archive:
        assert sorted(archive.getnames()) == ["repository.tar.gz", "snapshot.json"]
    assert (manifest_of(data_file)["refs"], manifest_of(data_file)["objects"]) == (0, 0)
    engine_mod.verify_backup(data_file)
    make_git_engine().import_backup(data_file, repository="empty2.git")
    restored = str(git_root / "empty2.git")
    assert gt.refs(restored) == {}
    assert gt.git("--git-dir=" + restored, "symbolic-ref", "HEAD").strip() == "refs/heads/trunk"
    assert open(os.path.join(restored, "description"), encoding="utf-8").read() == "nothing yet\n"


def test_a_repository_with_alternates_is_backed_up_standalone(git_root, make_git_engine, destination, tmp_path):
    base = gt.bare(git_root, "base.git")
    tip = gt.commit_into(base, tmp_path / "seed", count=3)
    fork = gt.bare(git_root, "fork.git")
    with open(os.path.join(fork, "objects", "info", "alternates"), "w", encoding="utf-8") as handle:
        handle.write(os.path.join(base, "objects") + "\n")
    gt.git("--git-dir=" + fork, "update-ref", "refs/heads/main", tip)
    assert make_git_engine().export(["fork.git"])["result"] == "ok"
    make_git_engine().import_backup(backups_of(destination, "fork.git")[0], repository="fork2.git")
    restored = str(git_root / "fork2.git")
    assert not os.path.exists(os.path.join(restored, "objects", "info", "alternates"))
    fsck_clean(restored)
    assert gt.refs(restored) == {"refs/heads/main": tip}


def test_config_hooks_description_and_info_come_back_and_a_replace_swaps_in(
        git_root, make_git_engine, destination, tmp_path):
    repo = gt.bare(git_root, "team/app.git")
    gt.commit_into(repo, tmp_path / "seed", count=2)
    gt.git("--git-dir=" + repo, "config", "receive.denyNonFastForwards", "true")
    hook = os.path.join(repo, "hooks", "post-receive")
    with open(hook, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\necho notified\n")
    os.chmod(hook, 0o750)
    with open(os.path.join(repo, "info", "exclude"), "w", encoding="utf-8") as handle:
        handle.write("*.tmp\n")
    for path in (hook, os.path.join(repo, "info", "exclude")):
        gt.chown(path)
    engine = make_git_engine()
    result = engine.export(["team/app.git"])
    assert result["result"] == "ok", result["repositories"]["team/app.git"]["error"]
    data_file = backups_of(destination, "team/app.git")[0]
    before = {p: open(os.path.join(repo, p), "rb").read() for p in ("config", "hooks/post-receive", "info/exclude")}
    gt.commit_into(repo, tmp_path / "seed", count=1)  # the live repository moves on
    os.unlink(hook)
    result = engine.import_backup(data_file, repository="team/app.git", force=True)
    assert result["replaced"]
    for path, data in before.items():
        assert open(os.path.join(repo, path), "rb").read() == data, path
    assert stat.S_IMODE(os.stat(hook).st_mode) == 0o750
    assert gt.refs(repo) == snapshot_of(data_file)["refs"]
    assert not [e for e in os.listdir(str(git_root / "team")) if e.startswith(".")], "no copy left aside"
    again = engine.import_backup(data_file, repository="team/app.git", force=True)
    assert not again["changed"], "the content hash of a backup equals the live repository's it restored"


def test_a_bundle_cut_in_half_is_caught(git_root, make_git_engine, destination, tmp_path):
    repo = gt.bare(git_root, "app.git")
    gt.commit_into(repo, tmp_path / "seed", count=30)
    assert make_git_engine().export(["app.git"])["result"] == "ok"
    data_file = backups_of(destination, "app.git")[0]
    cut = str(tmp_path / "cut.git.tar")
    with tarfile.open(data_file) as source, tarfile.open(cut, "w") as out:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name == "repository.bundle":
                data = data[:len(data) // 2]
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    gt.chown(cut)
    with pytest.raises(FileError, match="cut.git.tar is not a usable git backup: git index-pack"):
        kind_git.GitServer.verify_file(cut)
    driver = kinds.make_driver("git", {"root": str(git_root)})
    with pytest.raises(RestoreCheckFailed, match="could not be restored into scratch"):
        as_owner(driver.check_restorable, cut, manifest_of(data_file))
    with pytest.raises(BackupError):
        as_owner(driver.restore, cut, "app.git")
    assert gt.refs(repo)["refs/heads/main"], "the live repository is untouched"
    assert as_owner(driver.check_restorable, data_file, manifest_of(data_file)) == \
        ["restore", "fsck", "refs", "head", "objects", "manifest_refs", "manifest_objects"]
    lying = dict(manifest_of(data_file), objects=manifest_of(data_file)["objects"] + 1)
    with pytest.raises(RestoreCheckFailed, match="but its manifest recorded"):
        as_owner(driver.check_restorable, data_file, lying)


# -- disconnect ------------------------------------------------------------------------------------------------

def own_hook(repo: str) -> tuple:
    hook = os.path.join(repo, "hooks", "pre-receive")
    with open(hook, "wb") as handle:
        handle.write(b"#!/bin/sh\n# the forge's own hook\nexit 0\n")
    os.chmod(hook, 0o751)
    gt.chown(hook)
    os.utime(hook, (1000000000, 1000000000))
    info = os.lstat(hook)
    return hook, (open(hook, "rb").read(), info.st_ino, info.st_mode, info.st_mtime, info.st_uid)


def hook_state(hook: str) -> tuple:
    info = os.lstat(hook)
    return open(hook, "rb").read(), info.st_ino, info.st_mode, info.st_mtime, info.st_uid


def test_disconnect_puts_the_repositorys_own_hook_back_exactly(git_root, make_git_engine, daemon, tmp_path,
                                                               monkeypatch):
    repo = gt.bare(git_root, "app.git")
    gt.commit_into(repo, tmp_path / "seed", count=2)
    hook, before = own_hook(repo)
    pusher = gt.Pusher(daemon, "app.git", tmp_path / "client", user=gt.OWNER)
    seen = []
    real = kind_git.make_bundle

    def push_during(*args):  # inside the export, as the owner (the engine's run-as user)
        (tmp_path / "seen.json").write_text(json.dumps(pusher.push_once()))
        return real(*args)
    monkeypatch.setattr(kind_git, "make_bundle", push_during)
    assert make_git_engine(in_use="disconnect").export(["app.git"])["result"] == "ok"
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert not seen[0] and "pushes are refused until the backup ends" in seen[1]
    assert hook_state(hook) == before
    assert pusher.push_once()[0], "a push refused during disconnect is accepted afterwards"
    assert sorted(os.listdir(os.path.join(repo, "hooks"))) == sorted(
        n for n in os.listdir(os.path.join(repo, "hooks")) if not n.startswith(".")), "nothing left in hooks/"


def test_a_killed_disconnect_is_repaired_first(git_root, make_git_engine, daemon, tmp_path, monkeypatch, paths):
    repo = gt.bare(git_root, "app.git")
    gt.commit_into(repo, tmp_path / "seed", count=2)
    hook, before = own_hook(repo)
    ready = tmp_path / "ready"

    def hang(*args):
        ready.write_text("x")
        time.sleep(600)
    monkeypatch.setattr(kind_git, "make_bundle", hang)
    pid = os.fork()
    if pid == 0:  # the door (root) that will be killed; its engine child (the owner) dies with it
        try:
            make_git_engine(in_use="disconnect").export(["app.git"])
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pusher = gt.Pusher(daemon, "app.git", tmp_path / "client")
        assert not pusher.push_once()[0]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    pending = os.listdir(os.path.join(paths.state_root, "main", "pending"))
    assert pending == ["app.git.json"]
    assert open(hook, "rb").read() != before[0], "the temporary hook is still in"
    assert [r for r in gt.refs(repo) if r.startswith("refs/repobackup/")], "and the pins"
    monkeypatch.setattr(kind_git, "make_bundle", real_make_bundle)
    deadline = time.monotonic() + 30
    while True:  # the killed engine child may still be on its way out (it holds the repository's flock)
        result = make_git_engine().export(["app.git"])
        if result["result"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert result["result"] == "ok" and result["repaired"] == ["app.git"], result
    assert hook_state(hook) == before
    assert not [r for r in gt.refs(repo) if r.startswith("refs/repobackup/")]
    assert pusher.push_once()[0]


real_make_bundle = kind_git.make_bundle


# -- who runs git ---------------------------------------------------------------------------------------------

def plant(repo: str, marks) -> None:
    """Hooks and config-defined commands that write the uid they run as into ``marks``."""
    script = "#!/bin/sh\nid -u >> %s/$(basename $0)\n" % marks
    hooks = os.path.join(repo, "hooks")
    for name in ("reference-transaction", "pre-receive", "post-update", "pre-auto-gc", "post-receive"):
        with open(os.path.join(hooks, name), "w", encoding="utf-8") as handle:
            handle.write(script)
        os.chmod(os.path.join(hooks, name), 0o755)
    command = "sh -c 'id -u >> %s/config-command'" % marks
    for key, value in (("core.fsmonitor", command), ("core.alternateRefsCommand", command),
                       ("core.sshCommand", command), ("gc.auto", "1"), ("core.pager", command)):
        gt.git("--git-dir=" + repo, "config", key, value, user="root" if os.stat(repo).st_uid == 0 else gt.OWNER)


@pytest.mark.parametrize("owner", [gt.OWNER, "root"])
def test_root_never_runs_a_repositorys_hooks_or_config_commands(git_root, tmp_path, destination, paths, owner):
    marks = tmp_path / "marks"
    marks.mkdir(mode=0o1777)
    os.chmod(str(marks), 0o1777)
    if owner == "root":  # everything root's: the state folder, the destination, the git root
        for path in (tmp_path, git_root, destination, paths.state_root, os.path.join(paths.state_root, "main"),
                     paths.log_file("main")):
            gt.chown(path, "root")
    repo = gt.bare(git_root, "app.git", user=owner)
    gt.commit_into(repo, tmp_path / "seed", count=2, user=owner)
    plant(repo, marks)
    # Proof that the plants are live: git left to itself runs the hook on a ref update.
    probe = gt.run(["git", "--git-dir=" + repo, "update-ref", "refs/probe", "HEAD"], user=owner, check=False)
    assert probe.returncode == 0 and (marks / "reference-transaction").exists(), probe.stderr
    (marks / "reference-transaction").unlink()
    gt.run(["git", "--git-dir=" + repo, "update-ref", "-d", "refs/probe"], user=owner, check=False)
    for mark in marks.iterdir():
        mark.unlink()
    engine = engine_mod.Engine(settings.validate({"kind": "git", "git_root": str(git_root),
                                                  "destination": str(destination), "in_use": "disconnect"}),
                               paths, host=HOST)
    assert engine.settings.run_as == owner
    result = engine.export(["app.git"])
    assert result["result"] == "ok", result["repositories"]["app.git"]["error"]
    data_file = backups_of(destination, "app.git")[0]
    engine.import_backup(data_file, repository="copy.git")
    engine.import_backup(data_file, repository="app.git", force=True)
    driver = kinds.make_driver("git", {"root": str(git_root)})
    driver.check_restorable(data_file, manifest_of(data_file)) if owner == "root" else \
        as_owner(driver.check_restorable, data_file, manifest_of(data_file))
    ran = {mark.name: mark.read_text().split() for mark in marks.iterdir()}
    assert not any("0" in uids for uids in ran.values()), ran
    if owner == "root":
        assert ran == {}, "nothing planted ran at all"


def test_root_is_refused_inside_another_users_repository(git_root, destination, paths, tmp_path):
    repo = gt.bare(git_root, "app.git")
    gt.commit_into(repo, tmp_path / "seed", count=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    os.chmod(str(marks), 0o1777)
    plant(repo, marks)
    gt.chown(git_root, "root")  # the root folder is root's, the repository the owner's
    for folder in (paths.state_root, os.path.join(paths.state_root, "main")):
        gt.chown(folder, "root")
    gt.chown(paths.log_file("main"), "root")
    gt.chown(destination, "root")
    gt.chown(tmp_path, "root")
    engine = engine_mod.Engine(settings.validate({"kind": "git", "git_root": str(git_root), "run_as": "root",
                                                  "destination": str(destination)}), paths, host=HOST)
    result = engine.export(["app.git"])
    assert result["result"] == "failed"
    assert "is owned by user nobody, and this engine runs as root" in result["repositories"]["app.git"]["error"]
    assert "set run_as to the repository's owner" in result["repositories"]["app.git"]["error"]
    assert list(marks.iterdir()) == []


def test_hostile_links_under_the_git_root_are_refused(git_root, tmp_path):
    victim = tmp_path / "victim.git"
    gt.run(["git", "init", "-q", "--bare", str(victim)])
    os.symlink(str(victim), str(git_root / "evil.git"))
    (git_root / "team").mkdir()
    gt.chown(git_root / "team")
    os.symlink(str(tmp_path), str(git_root / "team" / "up"))
    os.symlink(str(tmp_path), str(git_root / "owner"))
    driver = kinds.make_driver("git", {"root": str(git_root)})
    assert as_owner(driver.list_repositories) == []
    for name in ("evil.git", "owner/victim.git"):
        with pytest.raises(RepositoryError, match="is a symbolic link, not a folder; the engine never follows"):
            as_owner(driver.export, name, str(tmp_path / "out.tar"), "keep_connections")
    # A git root others can write is refused outright.
    os.chmod(str(git_root), 0o777)
    with pytest.raises(RepositoryError, match="can be written by every user"):
        as_owner(driver.list_repositories)
    os.chmod(str(git_root), 0o755)
    for bad in ("../x.git", "a/b/c.git", ".hidden.git"):
        with pytest.raises(RepositoryError, match="is not allowed for a git server"):
            as_owner(driver.export, bad, str(tmp_path / "out.tar"), "keep_connections")


def test_a_backup_is_restorable_with_tar_and_git_alone(git_root, make_git_engine, destination, tmp_path):
    repo = gt.bare(git_root, "app.git")
    tip = gt.commit_into(repo, tmp_path / "seed", count=3, tag="v1")
    assert make_git_engine().export(["app.git"])["result"] == "ok"
    out = tmp_path / "byhand"
    out.mkdir()
    gt.run(["tar", "xf", backups_of(destination, "app.git")[0], "-C", str(out)])
    gt.run(["git", "clone", "-q", "--mirror", str(out / "repository.bundle"), str(out / "app.git")])
    assert gt.refs(str(out / "app.git"), user=None)["refs/heads/main"] == tip


def test_leftovers_of_a_killed_import_are_removed(git_root):
    dead = git_root / "team" / ".repobackup-restore-999999999-0123456789ab"
    alive = git_root / (".repobackup-restore-%d-0123456789ab" % os.getpid())
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        gt.chown(folder)
    gt.chown(git_root / "team")
    driver = kinds.make_driver("git", {"root": str(git_root)})
    assert as_owner(driver.remove_leftovers) == [str(dead)]
    assert alive.exists() and not dead.exists()


def test_the_role_installs_git_only_when_a_git_server_lacks_it(monkeypatch):
    import importlib.util  # plugins/modules/ loaded by path, as test_option_table.py does
    role = os.path.join(os.path.dirname(engine_mod.__file__), "..", "..", "roles", "autobackup")
    spec = importlib.util.spec_from_file_location(
        "ansible_collections.reposerver.backup.plugins.modules.autobackup_settings",
        os.path.join(os.path.dirname(engine_mod.__file__), "..", "modules", "autobackup_settings.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    git_server = settings.validate({"kind": "git", "destination": "/x"})
    assert module.missing_programs(git_server) == []  # this host has git
    assert module.missing_programs(settings.validate({"destination": "/x"})) == []
    monkeypatch.setattr(module.shutil, "which", lambda *args, **kwargs: None)
    assert module.missing_programs(git_server) == ["git"]
    assert module.missing_programs(settings.validate({"kind": "postgresql", "destination": "/x"})) == []
    with open(os.path.join(role, "tasks", "engine.yml"), encoding="utf-8") as handle:
        task = [t for t in yaml.safe_load(handle) if t["name"].startswith("Install the programs")][0]
    assert "missing_programs" in task["when"]
    with open(os.path.join(role, "vars", "main.yml"), encoding="utf-8") as handle:
        packages = yaml.safe_load(handle)["__autobackup_program_packages"]["Debian"]
    assert packages == {"git": "git", "age": "age", "zstd": "zstd"}
    key = "age1tnrczdwk6m8rlkzsuepxuusy337reju8pmfhxlwpgkg2shls95mqp2mufj"
    encrypted = settings.validate({"destination": "/x", "encrypt_to": [key], "compression": "zstd"})
    assert module.missing_programs(encrypted) == ["zstd", "age"]
    # git's bundles are compressed already and it has no globals: zstd is not needed there
    assert module.missing_programs(settings.validate({"kind": "git", "destination": "/x", "compression": "zstd"})) \
        == ["git"]


def test_a_backup_whose_config_archive_climbs_through_a_link_is_refused(git_root, tmp_path):
    """A crafted backup: hooks is a link to a folder outside, then a file under hooks/ (tar's classic trick)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    gt.chown(outside)
    meta = io.BytesIO()
    with tarfile.open(fileobj=meta, mode="w:gz") as archive:
        link = tarfile.TarInfo("hooks")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        archive.addfile(link)
        planted = tarfile.TarInfo("hooks/post-update")
        planted.size = 3
        archive.addfile(planted, io.BytesIO(b"bad"))
    snapshot = json.dumps({"format": 1, "object_format": "sha1", "head": {"symref": "refs/heads/main"},
                           "refs": {}, "symrefs": {}, "objects": 0}).encode()
    crafted = str(tmp_path / "crafted.git.tar")
    with tarfile.open(crafted, "w") as archive:
        for name, data in (("snapshot.json", snapshot), ("repository.tar.gz", meta.getvalue())):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    gt.chown(crafted)
    driver = kinds.make_driver("git", {"root": str(git_root)})
    with pytest.raises(BackupError, match="under something that is not a folder"):
        as_owner(driver.restore, crafted, "crafted.git")
    assert list(outside.iterdir()) == [] and not (git_root / "crafted.git").exists()
