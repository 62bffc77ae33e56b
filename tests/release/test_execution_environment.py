# -*- coding: utf-8 -*-
"""An execution environment with this collection: ansible-builder writes the build context of
docs/ee/execution-environment.yml, and reads the collection's own requirements (meta/execution-environment.yml,
bindep.txt) from an installed copy. The image build needs a container engine, which these machines lack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import yaml

from release_lib import BUILD, REPO

BUILDER = BUILD / "venvs" / "tools" / "bin" / "ansible-builder"


def test_builder_writes_a_build_context_that_installs_the_release_tarball(release, tmp_path):
    shutil.copy(REPO / "docs" / "ee" / "execution-environment.yml", tmp_path)
    shutil.copy(release["tarball"], tmp_path / "reposerver-backup.tar.gz")
    done = subprocess.run([str(BUILDER), "create", "--output-filename", "Containerfile", "-f", "execution-environment.yml",
                           "--context", "context"], cwd=str(tmp_path), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    context = tmp_path / "context"
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    assert 'EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert "COPY _build/collection/reposerver-backup.tar.gz /build/reposerver-backup.tar.gz" in containerfile
    assert "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml" in containerfile
    assert "introspect.py introspect" in containerfile  # the collection's bindep.txt is read inside the build
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text(encoding="utf-8"))
    assert requirements == {"collections": [{"name": "/build/reposerver-backup.tar.gz", "type": "file"}]}
    assert (context / "_build" / "collection" / "reposerver-backup.tar.gz").read_bytes() == release["tarball"].read_bytes()
    # The EE's ansible-core starts where meta/runtime.yml's claim starts.
    claim = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text(encoding="utf-8"))["requires_ansible"]
    lowest = re.fullmatch(r">=(\d+\.\d+)(\.0)?", claim).group(1)
    assert re.search(r'ANSIBLE_INSTALL_REFS="ansible-core>=%s,' % re.escape(lowest), containerfile), containerfile


def test_builder_reads_the_collections_requirements_from_an_installed_copy(release, tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false")
    subprocess.run(["ansible-galaxy", "collection", "install", "-p", str(tmp_path), str(release["tarball"])],
                   env=env, capture_output=True, check=True)
    done = subprocess.run([str(BUILDER), "introspect", "--sanitize", str(tmp_path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    found = yaml.safe_load(done.stdout)
    bindep = [line.strip() for line in (REPO / "bindep.txt").read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#")]
    assert bindep, "bindep.txt lists nothing"
    assert found["system"] == ["%s  # from collection reposerver.backup" % line for line in bindep]
    assert found["python"] == []  # the controller needs no Python package beyond ansible-core
