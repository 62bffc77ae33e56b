# -*- coding: utf-8 -*-
"""The Prometheus alert rules the collection ships (files/prometheus/repobackup.rules.yml): valid for the real
promtool (Debian's prometheus package, installed by scripts/setup-test-env), each alert firing and not firing in
promtool's unit tests (tests/unit/prometheus/), over metrics the engine writes, and in the built collection."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from ansible_collections.reposerver.backup.plugins.module_utils import metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "files" / "prometheus" / "repobackup.rules.yml"
RULE_TESTS = REPO / "tests" / "unit" / "prometheus" / "repobackup.rules.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=str(RULE_TESTS.parent), capture_output=True, text=True, check=False)


@needs_promtool
def test_promtool_checks_the_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


@needs_promtool
def test_each_alert_fires_and_stays_quiet_in_promtools_unit_tests():
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    assert len(alerts) == 8
    tested = RULE_TESTS.read_text()
    for alert in alerts:  # a case where it fires and one before it does (each also quiet on a neighbour series)
        cases = re.findall(r"alertname: %s\n\s+exp_alerts:(.*)" % alert, tested)
        assert "" in cases and "[]" in [c.strip() for c in cases], (alert, cases)


@needs_promtool
def test_a_broken_rule_is_caught(tmp_path):
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(RULES.read_text().replace("repobackup_last_failed == 1", "repobackup_last_failed == = 1"))
    assert promtool("check", "rules", str(broken)).returncode != 0


def test_the_rules_use_only_metrics_the_engine_writes():
    written = {name for table in (metrics._GAUGES, metrics._DRILL_GAUGES, metrics._AGE_GAUGES,
                                  metrics._DESTINATION_GAUGES) for name, _text in table}
    exprs = " ".join(rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"])
    used = set(re.findall(r"\b((?:repobackup|node)_[a-z_]+)\b", exprs))
    assert {"repobackup_last_failed", "repobackup_destination_usable", "repobackup_drill_ok"} <= used
    assert used - {"node_textfile_mtime_seconds"} <= written, used - written


def test_the_built_collection_carries_the_rules(tmp_path):
    galaxy = shutil.which("ansible-galaxy", path=str(Path(sys.executable).parent)) or shutil.which("ansible-galaxy")
    subprocess.run([galaxy, "collection", "build", "--output-path", str(tmp_path), str(REPO)], check=True,
                   capture_output=True)
    (built,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(built) as tar:
        names = tar.getnames()
    assert "files/prometheus/repobackup.rules.yml" in names
