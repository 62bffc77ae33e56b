# -*- coding: utf-8 -*-
"""Helpers of the tests of encrypted and compressed backups (layers.py): keys made by the real age-keygen and
ssh-keygen, a marker that cannot compress away, and a scan for it in every file of some folders, once or
repeatedly while a run writes there."""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import subprocess
import threading
from pathlib import Path

from repobackup_testlib import make_db


def age_key(folder, name: str = "key.txt") -> tuple:
    """(path of a new age identity file, its public key)."""
    path = Path(folder) / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return str(path), public


def ssh_key(folder, kind: str = "ed25519", bits: int = 0) -> tuple:
    """(path of a new SSH private key without a passphrase, its public key line)."""
    path = Path(folder) / ("id_%s%s" % (kind, bits or ""))
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test", "-f", str(path)]
    if bits:
        args += ["-b", str(bits)]
    subprocess.run(args, check=True, capture_output=True)
    return str(path), (path.parent / (path.name + ".pub")).read_text().strip()


def marker() -> str:
    """40 random hexadecimal digits: found in a file only when the file holds the plaintext."""
    return "rbtmark" + secrets.token_hex(20)


def age_encrypt(data: bytes, recipient: str, compress: bool = False) -> bytes:
    """``data`` as the engine's layers store it, made by the standard programs."""
    if compress:
        data = subprocess.run(["zstd", "-q", "-c"], input=data, check=True, capture_output=True).stdout
    return subprocess.run(["age", "-r", recipient], input=data, check=True, capture_output=True).stdout


def files_under(*folders) -> list:
    found = []
    for folder in folders:
        for top, dummy, names in os.walk(str(folder)):
            found.extend(os.path.join(top, n) for n in names)
    return found


def scan(marker_text: str, *folders) -> list:
    """The files under ``folders`` whose bytes hold the marker now (a file that vanishes meanwhile is skipped)."""
    wanted = marker_text.encode()
    hits = []
    for path in files_under(*folders):
        try:
            with open(path, "rb") as handle:
                if wanted in handle.read():
                    hits.append(path)
        except (FileNotFoundError, IsADirectoryError):
            pass
    return hits


class Watcher(threading.Thread):
    """Reads every file under ``folders`` over and over until stopped: ``hits`` the files that held the marker,
    ``seen`` every file read (with the largest size seen), ``reads`` the count of file reads."""

    def __init__(self, marker_text: str, *folders):
        super().__init__(daemon=True)
        self.marker = marker_text.encode()
        self.folders = folders
        self.hits = set()
        self.seen = {}
        self.reads = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for path in files_under(*self.folders):
                try:
                    with open(path, "rb") as handle:
                        data = handle.read()
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    continue
                self.reads += 1
                self.seen[path] = max(self.seen.get(path, 0), len(data))
                if self.marker in data:
                    self.hits.add(path)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.halt.set()
        self.join(timeout=30)

    def staged_seen(self, minimum: int = 1) -> list:
        """Files seen under a temporary name (in or named by a dot name: staged files) with at least ``minimum``
        bytes."""
        return [p for p, size in self.seen.items() if "/." in p and size >= minimum]


def readme_block(readme: str, tag: str) -> str:
    """The fenced sh block right after ``<!-- tested: TAG -->`` in README.md."""
    found = re.search(r"<!-- tested: %s -->\s*```sh\n(.*?)```" % re.escape(tag), Path(readme).read_text(), re.S)
    assert found, "README.md has no sh block after the marker %s" % tag
    return found.group(1)


def readme_file_name(block: str, suffix: str) -> str:
    """The backup's file name the README's commands read (the word ending with ``suffix``)."""
    names = [w for w in block.split() if w.endswith(suffix)]
    assert len(set(names)) == 1, names
    return names[0]


def with_marker(path, mark: str, rows: int = 100, filler_kb: int = 0) -> str:
    """An SQLite database holding ``mark`` in a row and in a table's name (and incompressible filler)."""
    make_db(path, range(rows), filler_kb=filler_kb)
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute('CREATE TABLE "%s" (v TEXT)' % mark)
    conn.execute("INSERT INTO t (n, v) VALUES (?, ?)", (10 ** 6, mark))
    conn.close()
    return str(path)
