"""Servers the inventory no longer declares (autobackup_undeclared), and old engine versions (autobackup_engine)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

SETTINGS = "reposerver.backup.autobackup_settings"
UNDECLARED = "reposerver.backup.autobackup_undeclared"
INFO = "reposerver.backup.autobackup_info"
ENGINE = "reposerver.backup.autobackup_engine"
NAMES = ("undecl_kept", "undecl_gone", "undecl_hand")
DECLARED = Path("/etc/repobackup/role-declared.json")
ENGINE_ROOT = Path("/usr/local/lib/repobackup")


def files_of(name: str) -> list:
    return [Path("/etc/repobackup") / (name + ".json"), Path("/etc/cron.d") / ("repobackup_" + name)]


@pytest.fixture
def servers(run_module, tmp_path):
    """Three servers: two applied as the role does (managed_by role), one by a direct module call."""
    saved = DECLARED.read_bytes() if DECLARED.exists() else None
    (tmp_path / "sqlite").mkdir()
    dest = tmp_path / "dest"
    for name in NAMES:
        mark = {} if name == "undecl_hand" else {"managed_by": "role"}
        result = run_module(SETTINGS, server_name=name, destination=str(dest), sqlite_root=str(tmp_path / "sqlite"),
                            **mark)
        assert result["failed"] is False, result.get("msg")
        os.makedirs("/var/lib/repobackup/" + name, exist_ok=True)
    (dest / "vm").mkdir(parents=True)
    yield dest
    for name in NAMES:
        for path in files_of(name) + [Path("/var/lib/repobackup") / name]:
            subprocess.run(["rm", "-rf", str(path)], check=True)
    if saved is None:
        DECLARED.unlink(missing_ok=True)
    else:
        DECLARED.write_bytes(saved)


def test_undeclared_servers_are_named_flagged_and_purged_only_when_asked(run_module, servers):
    declared = ["undecl_kept", "some_absent_one"]
    checked = run_module(UNDECLARED, check=True, diff=True, declared=declared, purge=True)
    assert checked["changed"] is True
    assert [e["server"] for e in checked["undeclared"]] == ["undecl_gone"], "direct module calls are never candidates"
    assert all(path.exists() for path in files_of("undecl_gone")), "check mode removed files"
    shown = {d["before_header"]: d["after"] for d in checked["diff"]}
    assert shown[str(files_of("undecl_gone")[0])] == "" and shown[str(files_of("undecl_gone")[1])] == ""
    assert json.loads(shown[str(DECLARED)])["scopes"]["default"] == sorted(declared)

    named = run_module(UNDECLARED, declared=declared)
    warning = " ".join(named.get("warnings", []))
    assert "Server undecl_gone was applied by the role but the inventory no longer declares it" in warning
    assert "autobackup_purge_undeclared: true" in warning and "undecl_gone" in named["undeclared"][0]["backups"]
    assert all(path.exists() for path in files_of("undecl_gone")), "purge false removed files"
    info = {s["server"]: s for s in run_module(INFO)["servers"]}
    assert info["undecl_gone"]["undeclared"] is True
    assert info["undecl_kept"]["undeclared"] is False and info["undecl_hand"]["undeclared"] is False
    assert run_module(UNDECLARED, declared=declared)["changed"] is False

    purged = run_module(UNDECLARED, diff=True, declared=declared, purge=True)
    assert purged["changed"] is True and purged["undeclared"][0]["removed"] is True
    assert not any(path.exists() for path in files_of("undecl_gone"))
    assert all(path.exists() for path in files_of("undecl_kept") + files_of("undecl_hand"))
    assert (servers / "vm").is_dir(), "backups stay"
    again = run_module(UNDECLARED, declared=declared, purge=True)
    assert again["changed"] is False and again["undeclared"] == []


HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
while True:
    signal.pause()
"""


def test_a_running_server_is_removed_only_after_its_run_ends(run_module, servers):
    # The lock is held by another process, as a run holds it (a descriptor of this process would be
    # inherited by the workers Ansible forks, and held by them too).
    run = subprocess.Popen(["/usr/bin/python3", "-c", HOLDER, "/var/lib/repobackup/undecl_gone/lock"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "locked\n"
        busy = run_module(UNDECLARED, declared=["undecl_kept"], purge=True, lock_wait=1)
        assert busy["undeclared"][0]["busy"] is True and busy["undeclared"][0]["removed"] is False
        assert all(path.exists() for path in files_of("undecl_gone"))
        assert "still backing up" in " ".join(busy.get("warnings", []))

        ended = []

        def end_the_run():
            time.sleep(2)
            ended.append(all(path.exists() for path in files_of("undecl_gone")))
            run.terminate()  # the run ends (a pipe would not: Ansible's forked workers hold its other end)

        ender = threading.Thread(target=end_the_run)
        ender.start()
        done = run_module(UNDECLARED, declared=["undecl_kept"], purge=True, lock_wait=60)
        ender.join()
    finally:
        run.kill()
        run.wait()
    assert ended == [True], "removed while the run held its lock"
    assert done["undeclared"][0]["removed"] is True and done["undeclared"][0]["busy"] is False
    assert not any(path.exists() for path in files_of("undecl_gone"))


def test_bad_names_are_refused_before_anything_changes(run_module, servers):
    before = DECLARED.read_bytes() if DECLARED.exists() else None
    result = run_module(UNDECLARED, declared=["Bad-Name"], purge=True)
    assert result["failed"] is True and "Bad-Name" in result["msg"]
    assert (DECLARED.read_bytes() if DECLARED.exists() else None) == before
    assert all(path.exists() for path in files_of("undecl_gone"))


# --- engine versions ---------------------------------------------------------------------------------

def fake_engine(version: str, marker: bool) -> Path:
    folder = ENGINE_ROOT / version
    (folder / "repobackup").mkdir(parents=True, exist_ok=True)
    (folder / "repobackup" / "__init__.py").write_text("# an older engine\n")
    if marker:
        (folder / "in-use").write_bytes(b"")
    return folder


def test_other_engine_versions_go_unless_a_command_still_uses_them(run_module):
    current = run_module(ENGINE)
    assert current["failed"] is False, current.get("msg")
    launcher = Path(current["launcher"])
    in_use, idle, markerless = fake_engine("0.0.7", True), fake_engine("0.0.8", True), fake_engine("0.0.9", False)
    try:
        fd = os.open(in_use / "in-use", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)  # as the 0.0.7 launcher holds it while its command runs
        # An engine older than the in-use file cannot tell: a running host command keeps it.
        command = subprocess.Popen(["/usr/bin/python3", "-c", "import time; time.sleep(60)", str(launcher)])
        try:
            checked = run_module(ENGINE, check=True)
            assert checked["changed"] is True and checked["removed"] == [str(idle)]
            assert idle.is_dir(), "check mode removed"
            result = run_module(ENGINE)
            assert result["removed"] == [str(idle)] and not idle.exists()
            assert result["kept"] == [str(in_use), str(markerless)]
            assert "still running" in " ".join(result["warnings"])
        finally:
            command.kill()
            command.wait()
        os.close(fd)
        result = run_module(ENGINE)
        assert sorted(result["removed"]) == [str(in_use), str(markerless)] and result["kept"] == []
        assert sorted(p.name for p in ENGINE_ROOT.iterdir()) == [current["version"]], "one engine is left"
        assert run_module(ENGINE)["changed"] is False
    finally:
        for folder in (in_use, idle, markerless):
            shutil.rmtree(folder, ignore_errors=True)


def test_the_launcher_holds_its_engine_while_it_runs(run_module, tmp_path):
    """The launcher's own first lines (before the engine is imported) take the shared lock, or refuse to start."""
    current = run_module(ENGINE)
    marker = Path(current["engine_path"]) / "in-use"
    text = Path(current["launcher"]).read_text()
    preamble = text[:text.index("sys.path.insert")]
    running = subprocess.Popen(["/usr/bin/python3", "-c", preamble + "print('locked', flush=True)\nimport time\n"
                                "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout.readline() == "locked\n"
        fd = os.open(marker, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        running.kill()
        running.wait()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    gone = preamble.replace(str(marker), str(tmp_path / "removed" / "in-use"))
    refused = subprocess.run(["/usr/bin/python3", "-c", gone], capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "is not installed (an upgrade removed it): run the command again" in refused.stderr


def test_a_machine_the_inventory_names_twice_is_declared_by_both_names(run_module, servers):
    """Each scope (inventory name and play) keeps its own list: a server is undeclared only when none declares it."""
    both = run_module(UNDECLARED, scope="db1 | play", declared=["undecl_kept", "undecl_gone"])
    assert both["undeclared"] == []
    other = run_module(UNDECLARED, scope="db1.example.test | play", declared=["undecl_kept"])
    assert other["undeclared"] == [], "db1 still declares undecl_gone"
    dropped = run_module(UNDECLARED, scope="db1 | play", declared=["undecl_kept"])
    assert [e["server"] for e in dropped["undeclared"]] == ["undecl_gone"]
    assert json.loads(DECLARED.read_text())["scopes"]["db1.example.test | play"] == ["undecl_kept"]
