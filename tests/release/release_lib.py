# -*- coding: utf-8 -*-
"""Paths and the version, for the release tests."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"


def galaxy_version() -> str:
    match = re.search(r"^version:\s*(\S+)", (REPO / "galaxy.yml").read_text(encoding="utf-8"), re.M)
    assert match, "galaxy.yml has no version"
    return match.group(1)
