"""Which tests may run at the same time.

scripts/test runs the unit and integration steps with pytest-xdist (``-n 2 --dist loadgroup``). Tests
that share something on this host must not run at once, so they get one ``xdist_group`` and run one
after another on one worker; the others spread over both workers.

- unit: each test works in its own tmp_path, except those that use this host's PostgreSQL cluster
  (pg_testlib: tests stop it, end sessions, list every database) or the test sshd's SFTP account
  (sftp_testlib: ``cut_sessions`` ends every session of the account). Each of the two is one group.
- integration: a file always runs whole on one worker (its tests share one server name and module
  fixtures). The files in ``OWN_SERVER_ONLY`` touch only their own servers, through the modules, and
  may run beside any other; every other file (the role through site.yml, the engine install, status
  of every server, and any file not listed yet) shares the group ``host``: the role installs and
  checks the engine, logrotate and /etc/repobackup, which the byte-identical checks watch.

A new integration file runs in ``host`` until it is added to ``OWN_SERVER_ONLY``.
"""

from __future__ import annotations

import pytest

OWN_SERVER_ONLY = {
    "test_autobackup_settings.py",
    "test_autobackup_settings_postgresql.py",
    "test_harness.py",
    "test_repository_export.py",
    "test_repository_import.py",
    "test_sftp_destination.py",
}

# unit: what a test module imports -> the service it shares
SERVICES = {"pg_testlib": "postgresql", "sftp_testlib": "sftp"}


def _unit_services(path, seen: dict) -> set:
    if path not in seen:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            text = ""
        seen[path] = {service for lib, service in SERVICES.items() if lib in text}
    return seen[path]


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
    sources: dict = {}
    groups = {}
    for item in items:
        path = item.path
        if path.parent.name == "integration":
            groups[item] = path.name if path.name in OWN_SERVER_ONLY else "host"
        elif path.parent.name == "unit":
            services = _unit_services(path, sources)
            if services:
                groups[item] = services
    # A unit module that uses both services joins their groups into one.
    unit_sets = [group for group in groups.values() if isinstance(group, set)]
    joined = any(len(group) > 1 for group in unit_sets)
    for item, group in groups.items():
        if isinstance(group, set):
            group = "host-services" if joined else next(iter(group))
        item.add_marker(pytest.mark.xdist_group(group))
