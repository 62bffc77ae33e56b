"""Proves the harness in conftest.py: modules run, results come back, modes pass through."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("host", ["localhost", "sshhost"])
def test_ping(module_runner, host):
    result = module_runner(host)("ansible.builtin.ping", data="harness")
    assert result["failed"] is False
    assert result["changed"] is False
    assert result["ping"] == "harness"


def test_stat_sees_file(run_module, tmp_path: Path):
    target = tmp_path / "probe.txt"
    target.write_text("x", encoding="utf-8")
    result = run_module("ansible.builtin.stat", path=str(target))
    assert result["stat"]["exists"] is True
    assert result["stat"]["size"] == 1


def test_stat_missing_file(run_module, tmp_path: Path):
    result = run_module("ansible.builtin.stat", path=str(tmp_path / "absent"))
    assert result["stat"]["exists"] is False


def test_target_runs_system_python(run_module_ssh):
    result = run_module_ssh("ansible.builtin.command", argv=["/usr/bin/python3", "-c", "import sys; print(sys.executable)"])
    assert result["rc"] == 0
    assert result["stdout"] == "/usr/bin/python3"


def test_check_and_diff_reach_the_module(run_module, tmp_path: Path):
    target = tmp_path / "file.txt"
    result = run_module("ansible.builtin.copy", check=True, diff=True, content="new\n", dest=str(target))
    assert result["changed"] is True
    assert not target.exists(), "check mode must not write"
    assert result["diff"][0]["after"] == "new\n"

    result = run_module("ansible.builtin.copy", content="new\n", dest=str(target))
    assert result["changed"] is True
    assert target.read_text(encoding="utf-8") == "new\n"


def test_failure_is_reported(run_module, tmp_path: Path):
    result = run_module("ansible.builtin.command", argv=[str(tmp_path / "no-such-binary")])
    assert result["failed"] is True
