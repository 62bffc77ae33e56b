"""Fixtures that run the collection's modules on real hosts.

This is the only file that uses pytest-ansible. Its host manager API is
deprecated, so it stays behind one small interface here, ``run_module``:

    def test_something(run_module):
        result = run_module("reposerver.backup.autobackup_settings",
                            check=True, diff=True, state="present", ...)
        assert not result["failed"], result.get("msg")

The first argument is positional-only, so module options such as ``name``
pass straight through. Hosts:

- ``run_module``: localhost, connection local;
- ``run_module_ssh``: root@127.0.0.1:2222 over ssh with build/ssh's key and
  known_hosts (the sshd that scripts/setup-test-env starts);
- ``module_runner(host)``: either, by inventory name (``localhost``,
  ``sshhost``), e.g. for parametrized tests.

Both run the target side with /usr/bin/python3, as real targets do.
Run through scripts/test (or after ``. build/env.sh``) with
``pytest -p no:cacheprovider --ansible-unit-inject-only tests/integration``:
without --ansible-unit-inject-only, pytest-ansible builds a tree of symlinks
under ./collections when started from the repository root.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hosts_env import SSH_HOST, SSH_KEY, SSH_KNOWN_HOSTS, SSH_PORT, TARGET_PYTHON

LOCAL_HOST = "localhost"
SSH_HOST_NAME = "sshhost"

ModuleRunner = Callable[..., dict[str, Any]]


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """pytest-ansible marks its host manager deprecated; we know, and contain it here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Each call sets up ansible's plugin loader again; harmless.
        warnings.filterwarnings("ignore", message="AnsibleCollectionFinder has already been configured")
        yield


def _inventory() -> dict[str, Any]:
    ssh_args = " ".join(
        [
            f"-o UserKnownHostsFile={SSH_KNOWN_HOSTS}",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
        ]
    )
    return {
        "all": {
            "hosts": {
                LOCAL_HOST: {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": TARGET_PYTHON,
                },
                SSH_HOST_NAME: {
                    "ansible_connection": "ssh",
                    "ansible_host": SSH_HOST,
                    "ansible_port": SSH_PORT,
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(SSH_KEY),
                    "ansible_ssh_common_args": ssh_args,
                    "ansible_python_interpreter": TARGET_PYTHON,
                },
            }
        }
    }


@pytest.fixture(scope="session")
def ansible_inventory_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory (YAML; written as JSON, which YAML reads) with both test hosts."""
    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    path.write_text(json.dumps(_inventory(), indent=2), encoding="utf-8")
    return path


def _normalise(result: Any) -> dict[str, Any]:
    data = dict(result)
    data.setdefault("changed", False)
    data.setdefault("failed", False)
    return data


@pytest.fixture
def module_runner(
    ansible_adhoc: Callable[..., Any], ansible_inventory_file: Path
) -> Callable[[str], ModuleRunner]:
    """Return ``runner(host)``; ``runner(host)(module, check=, diff=, **args)`` runs one task."""

    def for_host(host: str) -> ModuleRunner:
        if host == SSH_HOST_NAME and not SSH_KEY.exists():
            pytest.fail(f"{SSH_KEY} is missing: run scripts/setup-test-env first")

        def run(module: str, /, *, check: bool = False, diff: bool = False, **args: Any) -> dict[str, Any]:
            with _quiet_deprecations():
                manager = ansible_adhoc(
                    inventory=str(ansible_inventory_file), host_pattern=host
                )
                dispatcher = manager[host]
                build_play = dispatcher._build_play_ds

                def build_play_with_modes(complex_args: dict[str, Any]) -> dict[str, Any]:
                    # pytest-ansible has no per-call check/diff; both are play keywords.
                    play = build_play(complex_args)
                    play["check_mode"] = check
                    play["diff"] = diff
                    return play

                dispatcher._build_play_ds = build_play_with_modes
                contacted = getattr(dispatcher, module)(**args)
            return _normalise(contacted[host])

        return run

    return for_host


@pytest.fixture
def run_module(module_runner: Callable[[str], ModuleRunner]) -> ModuleRunner:
    """Run one module on localhost (connection local) and return its result dict."""
    return module_runner(LOCAL_HOST)


@pytest.fixture
def run_module_ssh(module_runner: Callable[[str], ModuleRunner]) -> ModuleRunner:
    """Run one module on root@127.0.0.1:2222 over ssh and return its result dict."""
    return module_runner(SSH_HOST_NAME)
