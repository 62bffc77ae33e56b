# -*- coding: utf-8 -*-
"""The release as a user meets it: the tarball and its sha256, the changelog made from the fragments,
an install with ansible-galaxy into a clean path that runs site.yml, and galaxy-importer's verdict."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import tarfile

import yaml

from release_lib import BUILD, REPO, galaxy_version

SERVER = "rel_tarball"


def test_sha256_file_names_the_tarball_and_holds_its_digest(release):
    digest, name = release["sha256"].read_text(encoding="utf-8").split()
    assert name == release["tarball"].name
    assert digest == hashlib.sha256(release["tarball"].read_bytes()).hexdigest()
    check = subprocess.run(["sha256sum", "--check", release["sha256"].name], cwd=str(release["sha256"].parent),
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def entries(fragment) -> list:
    """The sentences of one fragment that the changelog shows (not the trivial section)."""
    doc = yaml.safe_load(fragment.read_text(encoding="utf-8")) or {}
    found = []
    for section, value in doc.items():
        if section == "trivial":
            continue
        found.extend([value] if isinstance(value, str) else value)
    return found


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_changelog_carries_every_fragment_and_the_work_tree_keeps_them(release):
    with tarfile.open(release["tarball"]) as tar:
        names = tar.getnames()
        changelog = tar.extractfile("CHANGELOG.rst").read().decode("utf-8")
    assert "v%s" % galaxy_version() in changelog
    text = squash(changelog)
    for name in release["fragments"]:
        for entry in entries(REPO / "changelogs" / "fragments" / name):
            assert squash(entry)[:60] in text, "%s: %r is not in CHANGELOG.rst" % (name, entry[:60])
    # The release consumed the fragments in its copy only.
    assert not [n for n in names if n.startswith("changelogs/fragments/") and n.endswith(".yml")]
    assert sorted(p.name for p in (REPO / "changelogs" / "fragments").glob("*.yml")) == release["fragments"]


def playbook(env: dict, site, inventory, *extra) -> tuple:
    done = subprocess.run(["ansible-playbook", "-i", str(inventory), str(site), *extra], env=env,
                          cwd=str(inventory.parent), capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    recap = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", done.stdout)
    assert recap, done.stdout + done.stderr
    return int(recap.group(1)), int(recap.group(2)), done.stdout + done.stderr


def test_tarball_installs_into_a_clean_path_and_its_site_yml_applies_the_role(release, tmp_path):
    collections = tmp_path / "collections"
    # Only the clean path: not build/collections (the work tree), nor Python's site-packages.
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false")
    install = subprocess.run(["ansible-galaxy", "collection", "install", "-p", str(collections), str(release["tarball"])],
                             env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert install.returncode == 0, install.stdout + install.stderr
    installed = collections / "ansible_collections" / "reposerver" / "backup"
    manifest = json.loads((installed / "MANIFEST.json").read_text(encoding="utf-8"))
    assert manifest["collection_info"]["version"] == galaxy_version()
    assert not (installed / "build").exists() and not (installed / ".git").exists()

    base = tmp_path / "site"
    (base / "sqlite").mkdir(parents=True)
    with sqlite3.connect(str(base / "sqlite" / "alpha.db")) as conn:
        conn.execute("CREATE TABLE t (n INTEGER)")
    inventory = base / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
            "autobackup_server_name": SERVER, "autobackup_sqlite_root": str(base / "sqlite"),
            "autobackup_destination": str(base / "backups"), "autobackup_times": ["03:17"]}
    inventory.write_text(json.dumps({"all": {"children": {"repository_servers": {"hosts": {"localhost": host}}}}}))
    settings = "/etc/repobackup/%s.json" % SERVER
    cron = "/etc/cron.d/repobackup_%s" % SERVER
    try:
        changed, failed, out = playbook(env, installed / "site.yml", inventory)
        assert failed == 0 and changed > 0, out
        assert json.loads(open(settings, encoding="utf-8").read())["destination"] == str(base / "backups")
        assert "17 3 * * *" in open(cron, encoding="utf-8").read()
    finally:
        changed, failed, out = playbook(env, installed / "site.yml", inventory, "-e", "autobackup_state=absent")
    assert failed == 0, out
    assert not os.path.exists(settings) and not os.path.exists(cron)


def test_galaxy_importer_accepts_the_tarball_without_a_warning(release, tmp_path):
    config = tmp_path / "galaxy-importer.cfg"
    # Its ansible-test run needs a container engine; its ansible-lint and ansible-doc checks run.
    config.write_text("[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nRUN_ANSIBLE_LINT = True\n", encoding="utf-8")
    venv = BUILD / "venvs" / "importer" / "bin"
    env = dict(os.environ, GALAXY_IMPORTER_CONFIG=str(config), PATH="%s:%s" % (venv, os.environ["PATH"]),
               VIRTUAL_ENV=str(venv.parent))
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    done = subprocess.run([str(venv / "python"), "-m", "galaxy_importer.main", str(release["tarball"])], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Importer processing completed successfully" in out, out
    assert not re.search(r"WARNING|ERROR|Traceback", out), out
