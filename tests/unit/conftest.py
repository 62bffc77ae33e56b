# -*- coding: utf-8 -*-
"""Unit tests of the repobackup engine (plugins/module_utils).

The engine is imported as
``ansible_collections.reposerver.backup.plugins.module_utils.<name>``.  This
file makes that importable without installing anything: it uses
build/collections when that already links back to this repository, and
otherwise creates ``ansible_collections/reposerver/backup`` (a symlink to the
repository root) under build/unit-collections or, when build/ is not
writable, under the system's temporary folder.

Every test points the engine at tmp_path through ``Paths``: nothing here
touches /etc, /var or a real destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_LINK = ("ansible_collections", "reposerver", "backup")


def _links_here(collections: Path) -> bool:
    link = collections.joinpath(*_LINK)
    try:
        return link.resolve() == REPO_ROOT
    except OSError:
        return False


def _make_tree(collections: Path) -> bool:
    link = collections.joinpath(*_LINK)
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() and not link.exists():
            try:
                link.symlink_to(REPO_ROOT, target_is_directory=True)
            except FileExistsError:
                pass
    except OSError:
        return False
    return _links_here(collections)


def _collections_dir() -> Path:
    existing = REPO_ROOT / "build" / "collections"
    if _links_here(existing):
        return existing
    for candidate in (REPO_ROOT / "build" / "unit-collections",
                      Path(tempfile.gettempdir()) / ("repobackup-unit-%d" % os.getuid())
                      / hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]):
        if _make_tree(candidate):
            return candidate
    raise RuntimeError("cannot create an ansible_collections tree for %s" % REPO_ROOT)


COLLECTIONS = _collections_dir()
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
# pytest-ansible (when installed) installs Ansible's collection finder for the
# paths in ANSIBLE_COLLECTIONS_PATH: make sure ours is among them.
_env = [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
if str(COLLECTIONS) not in _env:
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([str(COLLECTIONS)] + _env)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Without this, pytest-ansible started from the repository root would build
    # a tree of symlinks under ./collections; use the path set above instead.
    if hasattr(config.option, "ansible_unit_inject_only"):
        config.option.ansible_unit_inject_only = True
    # Tests hand folders to run-as users (postgres, nobody), who must pass through the folders above
    # tmp_path.  pytest sets its shared /tmp/pytest-of-<user> back to 0700 whenever a session starts, which
    # would lock out another session's run-as users: each session gets a base folder of its own instead.
    if not config.option.basetemp and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="repobackup-unit-")
        config.repobackup_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    base = getattr(config, "repobackup_basetemp", None)
    if base:
        shutil.rmtree(base, ignore_errors=True)


sys.path.insert(0, str(Path(__file__).resolve().parent))
# Load every engine module now, from the tree above, before any plugin installs
# another import hook: the test files then share these very module objects.
from ansible_collections.reposerver.backup.plugins.module_utils import (  # noqa: E402,F401  pylint: disable=unused-import
    cli, declared, destination as destination_mod, engine as engine_mod, errors, kind_sqlite, layers, layout, report,
    retention, schedule, settings, sftp, store)
from repobackup_testlib import HOST  # noqa: E402


@pytest.fixture
def paths(tmp_path):
    return layout.Paths(settings_dir=str(tmp_path / "etc"), cron_dir=str(tmp_path / "cron.d"),
                        state_root=str(tmp_path / "state"), log_dir=str(tmp_path / "log"),
                        engine_root=str(tmp_path / "engine"), launcher=str(tmp_path / "bin" / "repobackup"))


@pytest.fixture
def sqlite_root(tmp_path):
    root = tmp_path / "sqlite"
    root.mkdir()
    return root


@pytest.fixture
def destination(tmp_path):
    """The destination exists (the role makes it); the engine never creates it."""
    path = tmp_path / "backups"
    path.mkdir(mode=0o750)
    return path


@pytest.fixture
def make_settings(sqlite_root, destination):
    def make(**options):
        raw = {"destination": str(destination), "sqlite_root": str(sqlite_root)}
        raw.update(options)
        return settings.validate(raw)
    return make


@pytest.fixture
def make_engine(make_settings, paths):
    def make(**options):
        return engine_mod.Engine(make_settings(**options), paths, host=HOST)
    return make


@pytest.fixture
def write_settings(paths):
    """Store a settings document where the host command reads it."""
    def write(settings_or_doc):
        doc = settings_or_doc if isinstance(settings_or_doc, dict) else settings_or_doc.to_document()
        os.makedirs(paths.settings_dir, exist_ok=True)
        path = paths.settings_file(doc.get("server", "main"))
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(doc, handle)
        return path
    return write
