# -*- coding: utf-8 -*-
"""How the engine's modules depend on each other: one version, and imports that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from ansible_collections.reposerver.backup.plugins.module_utils import layout

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_UTILS = REPO_ROOT / "plugins" / "module_utils"


def engine_imports(name: str) -> dict:
    """{engine module imported by module_utils/<name>.py: the names taken from it} (relative imports only)."""
    tree = ast.parse((MODULE_UTILS / (name + ".py")).read_text(encoding="utf-8"))
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.setdefault(node.module, set()).update(alias.name for alias in node.names)
            else:  # from . import a, b
                for alias in node.names:
                    found.setdefault(alias.name, set())
    return found


def test_the_engine_version_is_the_collections():
    galaxy = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text(encoding="utf-8"))
    assert layout.VERSION == str(galaxy["version"])


@pytest.mark.parametrize("name", sorted(p.stem for p in MODULE_UTILS.glob("*.py") if p.stem != "__init__"))
def test_no_module_takes_a_private_name_of_another(name):
    private = {module: sorted(n for n in names if n.startswith("_")) for module, names in engine_imports(name).items()}
    assert {module: names for module, names in private.items() if names} == {}


@pytest.mark.parametrize("name, never", [
    ("clock", {"store", "engine", "settings"}),
    ("metrics", {"store", "engine"}),  # it needs the clock, not the backups
    ("sftp", {"settings", "store", "engine"}),  # a destination knows nothing of settings or backups
    ("destination", {"settings", "store", "engine"}),
    ("store", {"sftp", "engine"}),  # open_destination picks the destination, not the store
])
def test_dependencies_point_one_way(name, never):
    assert set(engine_imports(name)) & never == set()


def test_every_engine_file_is_installed_and_preloaded():
    """autobackup_engine installs every engine file; a root door's child preloads each one it may need after it
    became run_as (it may no longer read the module's payload then): all but errors, privilege and cli."""
    from ansible_collections.reposerver.backup.plugins.module_utils import privilege
    files = {p.stem for p in MODULE_UTILS.glob("*.py") if p.stem != "__init__"}
    tree = ast.parse((REPO_ROOT / "plugins" / "modules" / "autobackup_engine.py").read_text(encoding="utf-8"))
    installed = next({element.id for element in node.value.elts} for node in tree.body
                     if isinstance(node, ast.Assign) and node.targets[0].id == "ENGINE_MODULES")
    assert installed == files
    assert set(privilege._ENGINE_MODULES) == files - {"errors", "privilege", "cli"}
