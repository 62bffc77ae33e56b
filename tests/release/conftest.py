# -*- coding: utf-8 -*-
"""The release, rehearsed once per session in a throwaway copy (scripts/release --rehearse).

Run by scripts/test release (one process: the tests share the release). Needs
scripts/setup-test-env (build/venvs/tools, build/venvs/importer, build/env.sh).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from release_lib import REPO, galaxy_version


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> dict:
    """The rehearsed release: tarball, its .sha256, the copy it was made in, and the fragments it started from."""
    base = tmp_path_factory.mktemp("release")
    fragments = sorted(p.name for p in (REPO / "changelogs" / "fragments").glob("*.yml"))
    done = subprocess.run(["bash", str(REPO / "scripts" / "release"), "--rehearse", str(base)],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    tarball = base / "dist" / ("reposerver-backup-%s.tar.gz" % galaxy_version())
    return {"base": base, "tarball": tarball, "sha256": Path(str(tarball) + ".sha256"),
            "copy": base / "src" / "ansible_collections" / "reposerver" / "backup", "fragments": fragments,
            "log": done.stdout + done.stderr}
