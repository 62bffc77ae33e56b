"""reposerver.backup.autobackup_engine: installs the engine the modules carry, idempotently."""

from __future__ import annotations

import subprocess
from pathlib import Path

MODULE = "reposerver.backup.autobackup_engine"
LAUNCHER = Path("/usr/local/sbin/repobackup")


def test_install_is_idempotent_and_repairs_drift(run_module):
    first = run_module(MODULE)
    assert first["failed"] is False, first.get("msg")
    engine = Path(first["engine_path"]) / "repobackup"
    # Every engine file of plugins/module_utils is installed, so no import can fail on the host.
    source = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"
    wanted = sorted(p.name for p in source.glob("*.py") if p.name != "__init__.py")
    assert sorted(p.name for p in engine.glob("*.py") if p.name != "__init__.py") == wanted
    assert run_module(MODULE)["changed"] is False

    target = engine / "schedule.py"
    original = target.read_bytes()
    target.write_bytes(original + b"\n# drift\n")
    checked = run_module(MODULE, check=True)
    assert checked["changed"] is True and checked["files"] == [str(target)]
    assert target.read_bytes().endswith(b"# drift\n"), "check mode wrote"
    fixed = run_module(MODULE)
    assert fixed["changed"] is True
    assert target.read_bytes() == original


def test_launcher_runs_the_installed_engine_isolated(run_module):
    result = run_module(MODULE)
    out = subprocess.run([str(LAUNCHER), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "repobackup " + result["version"]
    first_line = LAUNCHER.read_text().splitlines()[0]
    assert first_line == "#!/usr/bin/python3 -I"
    assert LAUNCHER.stat().st_mode & 0o777 == 0o755


def test_reports_no_missing_commands_when_cron_and_logrotate_exist(run_module):
    assert Path("/usr/sbin/cron").exists() and Path("/usr/sbin/logrotate").exists()
    assert run_module(MODULE)["missing_commands"] == []
