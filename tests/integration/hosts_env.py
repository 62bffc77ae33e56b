"""Where the test environment is, as scripts/setup-test-env wrote it into build/env.sh.

The controller's work tree and build folder, the targets' interpreter, the
test sshd (root over ssh; the unprivileged SFTP user ``rbsftp``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("REPOBACKUP_BUILD", str(REPO_ROOT / "build")))
TARGET_PYTHON = "/usr/bin/python3"
SSH_HOST = os.environ.get("REPOBACKUP_SSH_HOST", "127.0.0.1")
SSH_PORT = int(os.environ.get("REPOBACKUP_SSH_PORT", "2222"))
SSH_KEY = Path(os.environ.get("REPOBACKUP_SSH_KEY", str(BUILD / "ssh" / "id_ed25519")))
SSH_KNOWN_HOSTS = Path(os.environ.get("REPOBACKUP_SSH_KNOWN_HOSTS", str(BUILD / "ssh" / "known_hosts")))
SFTP_USER = os.environ.get("REPOBACKUP_SFTP_USER", "rbsftp")
SFTP_HOME = Path(os.environ.get("REPOBACKUP_SFTP_HOME", "/home/rbsftp"))


def ssh_host_key() -> str:
    """The test sshd's host key as 'TYPE BASE64', from build/ssh/known_hosts."""
    name = SSH_HOST if SSH_PORT == 22 else "[%s]:%d" % (SSH_HOST, SSH_PORT)
    with open(SSH_KNOWN_HOSTS, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == name:
                return "%s %s" % (fields[1], fields[2])
    raise LookupError("%s has no host key for %s; run scripts/setup-test-env" % (SSH_KNOWN_HOSTS, name))


def paramiko_importable() -> bool:
    """Whether the targets' interpreter (the engine's, run with -I) can import paramiko."""
    return subprocess.run([TARGET_PYTHON, "-I", "-c", "import paramiko"], check=False,
                          capture_output=True).returncode == 0


def public_host_key(folder: Path) -> str:
    """A fresh ed25519 public key as 'TYPE BASE64' (what ssh-keyscan or ssh_host_ed25519_key.pub show)."""
    key = folder / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])
