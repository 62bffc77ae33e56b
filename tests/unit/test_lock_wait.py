# -*- coding: utf-8 -*-
"""lock_wait: a run that finds the server's lock held waits up to that many seconds, then is skipped as
"already running"; a lock left by a killed run never blocks the next one (an flock dies with its process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from repobackup_testlib import make_db

from ansible_collections.reposerver.backup.plugins.module_utils import state as state_mod
from ansible_collections.reposerver.backup.plugins.module_utils.errors import SettingsError

# The engine's own lock (State.lock), held in another process until its stdin closes.
HOLDER = r"""
import sys
from ansible_collections.reposerver.backup.plugins.module_utils.layout import Paths
from ansible_collections.reposerver.backup.plugins.module_utils.state import State
paths = Paths(settings_dir=sys.argv[1], state_root=sys.argv[2], log_dir=sys.argv[3])
with State(paths, "main").lock():
    print("held", flush=True)
    sys.stdin.read()
"""


def hold(engine) -> subprocess.Popen:
    top = str(Path(state_mod.__file__).parents[5])  # the folder holding ansible_collections/
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([top] + sys.path))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, engine.paths.settings_dir, engine.paths.state_root,
                             engine.paths.log_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_waits_for_the_one_in_progress_and_then_backs_up(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(lock_wait=60)
    holder = hold(engine)
    threading.Timer(1.0, holder.stdin.close).start()  # the run in progress ends while this one waits
    try:
        assert engine.run(scheduled=True)["result"] == "ok"
    finally:
        holder.wait(timeout=30)
    assert len(engine.store.backups("a")) == 1


def test_a_run_that_waited_in_vain_is_skipped_as_already_running(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine(lock_wait=1)
    holder = hold(engine)
    try:
        result = engine.run(scheduled=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert (result["result"], result["reason"]) == ("skipped", "already running")
    with open(os.path.join(engine.state_dir, "last_skip.json"), encoding="utf-8") as handle:
        assert json.load(handle)["reason"] == "already running"
    assert engine.store.backups("a") == []


def test_a_killed_runs_lock_does_not_block_the_next_run(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = make_engine()  # lock_wait 0: a live holder would make this run skip at once
    holder = hold(engine)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with open(os.path.join(engine.state_dir, "lock"), encoding="utf-8") as handle:
        assert handle.read().startswith("pid %d since" % holder.pid)  # its note is still there
    assert engine.run(scheduled=True)["result"] == "ok"
    holder.stdin.close()


@pytest.mark.parametrize("value", [-1, 86401, "long"])
def test_a_bad_lock_wait_is_refused_by_name(make_settings, value):
    with pytest.raises(SettingsError, match=r"^lock_wait %r is not allowed; use a whole number from 0 to 86400\.$"
                       % (value,)):
        make_settings(lock_wait=value)
