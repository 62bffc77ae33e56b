"""Which tests may run at the same time.

scripts/test runs the unit and integration steps with pytest-xdist (``-n 2 --dist loadgroup``; a plain
``-n 2``, which means ``--dist load``, gets the same groups). Tests that share something on this host
must not run at once, so they form one group, which runs on one worker, one test after another; the
other tests spread over both workers.

- unit: each test works in its own tmp_path, except those of modules that use this host's PostgreSQL
  cluster (pg_testlib: tests stop it, end sessions, list every database) or the test sshd's SFTP
  account (sftp_testlib: ``cut_sessions`` ends every session of the account). Each of the two is a
  group; a module that uses both joins them into one.
- integration: a file always runs whole on one worker (its tests share one server name and module
  fixtures). The files in ``OWN_SERVER_ONLY`` touch only their own servers, through the modules, and
  may run beside any other; every other file (the role through site.yml, the engine install, status
  of every server, and any file not listed yet) is in the group ``host``: the role installs the engine
  and logrotate's file, which the byte-identical checks of the role tests watch.

A new integration file runs in ``host`` until it is added to ``OWN_SERVER_ONLY``.

The groups are given by ``pytest_xdist_make_scheduler`` from each test's file: xdist 3.8's own
``xdist_group`` marks have no effect with pytest 9 (it renames a node id attribute pytest no longer
reads), so tests marked that way would run anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

OWN_SERVER_ONLY = {
    "test_autobackup_settings.py",
    "test_autobackup_settings_postgresql.py",
    "test_encryption_modules.py",
    "test_harness.py",
    "test_repository_export.py",
    "test_repository_import.py",
    "test_sftp_destination.py",
}

# unit: a module that mentions one of these libraries uses the service
SERVICES = {"pg_testlib": "postgresql", "sftp_testlib": "sftp"}


class HostGroups:
    """The group of a test, from its node id (``tests/unit/test_x.py::test_y[...]``); None: no group."""

    def __init__(self, rootpath: Path):
        self.rootpath = rootpath
        self.services: dict = {}  # unit test file -> the services it uses
        self.joined = False  # some unit test file uses both

    def _unit_services(self, path: Path) -> set:
        if not self.services:
            for module in path.parent.glob("test_*.py"):
                try:
                    text = module.read_text(encoding="utf-8")
                except OSError:
                    text = ""
                self.services[module.name] = {service for lib, service in SERVICES.items() if lib in text}
            self.joined = any(len(found) > 1 for found in self.services.values())
        return self.services.get(path.name, set())

    def group(self, nodeid: str):
        path = self.rootpath / nodeid.split("::", 1)[0]
        if path.parent.name == "integration":
            return "integration/" + (path.name if path.name in OWN_SERVER_ONLY else "host")
        if path.parent.name == "unit":
            services = self._unit_services(path)
            if not services:
                return None
            return "unit/host-services" if self.joined else "unit/" + next(iter(services))
        return None


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    # pylint: disable-next=import-outside-toplevel
    from xdist.scheduler import LoadGroupScheduling

    groups = HostGroups(config.rootpath)

    class HostGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            found = groups.group(nodeid)
            return found if found is not None else super()._split_scope(nodeid)

    return HostGroupScheduling(config, log)
