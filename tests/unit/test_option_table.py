# -*- coding: utf-8 -*-
"""The option table of settings.py is the one declaration of each setting: what derives from it agrees with it.

The module's argument_spec, validate() and the settings document come from the table; what Ansible needs as
static text (the module's DOCUMENTATION, the role's defaults, argument specs, key list and task arguments) is
read here and checked against it, so none of them can drift.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.reposerver.backup.plugins.module_utils import settings as S

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "autobackup"


def load_module(name: str):
    """plugins/modules/<name>.py, loaded by path: the collection finder pytest-ansible installs serves
    module_utils (loaded in conftest.py) but not plugins.modules; its relative imports reach the same engine."""
    spec = importlib.util.spec_from_file_location("ansible_collections.reposerver.backup.plugins.modules." + name,
                                                  REPO / "plugins" / "modules" / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


autobackup_settings = load_module("autobackup_settings")
repository_export = load_module("repository_export")
repository_import = load_module("repository_import")
TABLE = S.options()
NAMES = [option.name for option in TABLE]
BASE = {"destination": "/srv/backups"}


def load(path: Path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# Variables of the role as a whole, not settings of one server.
ROLE_ONLY = {"autobackup_servers", "autobackup_purge_undeclared"}


def role_specs() -> dict:
    return load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]


def role_task(file: str, module: str = "reposerver.backup.autobackup_settings") -> dict:
    """The one task of tasks/<file> (blocks included) that calls ``module``."""
    def walk(tasks):
        for task in tasks:
            yield task
            for key in ("block", "rescue", "always"):
                yield from walk(task.get(key, []))
    found = [task for task in walk(load(ROLE / "tasks" / file)) if module in task]
    assert len(found) == 1, (file, found)
    return found[0]


# -- the table itself -------------------------------------------------------------------------------------------

def test_every_setting_is_declared_once_and_every_settings_field_comes_from_it():
    assert len(NAMES) == len(set(NAMES))
    places = [(option.kind, option.at) for option in TABLE if option.at]  # each kind reads only its own options
    assert len(places) == len(set(places))
    fields = {option.place[1] for option in S.OPTIONS if option.at and option.place[0] not in ("options", "sftp", "drill")}
    assert fields | {"options", "sftp", "drill"} == set(S.Settings.__dataclass_fields__)


def test_the_module_argument_spec_is_the_table():
    spec = autobackup_settings.argument_spec()
    assert spec.pop("settings") == {"type": "dict"}
    assert spec.pop("managed_by") == {"type": "str", "choices": ["role"]}  # the role's mark, not a setting
    assert spec == {option.name: option.spec() for option in TABLE}
    # state and notify are not stored in the settings document (notify's URLs are secrets: a file of their own)
    assert autobackup_settings.setting_keys() == [name for name in NAMES if name not in ("state", "notify")]


def test_the_module_defaults_and_the_role_defaults_are_the_engine_defaults():
    """An option left out, the module's default and the role's default all give the same settings."""
    module = {name: spec["default"] for name, spec in autobackup_settings.argument_spec().items() if "default" in spec}
    role = {name[len("autobackup_"):]: value for name, value in load(ROLE / "defaults" / "main.yml").items()}
    assert S.validate(dict(module, **BASE)) == S.validate(BASE)
    assert S.validate(dict(role, **BASE)) == S.validate(BASE)
    for kind in S.KINDS:
        assert S.validate(dict(role, kind=kind, **BASE)) == S.validate(dict(BASE, kind=kind))


# A value other than the default for every stored option (with what it needs), and how it is stored.
SAMPLES = {
    "server_name": ("db_2", {}), "kind": ("postgresql", {}), "enabled": (False, {}),
    "suspended_until": ("2030-01-02T03:04", {}), "repositories": (["a b", "c"], {}), "exclude": (["x"], {}),
    "days": (["wed", "sun"], {}), "times": (["07:05", "23:00"], {}), "destination": ("/mnt/nas", {}),
    "in_use": ("disconnect", {}), "keep_last": (3, {}), "keep_daily": (7, {}), "keep_weekly": (4, {}),
    "keep_monthly": (12, {}), "require_mount": (True, {}), "run_as": ("backup", {}), "disconnect_wait": (5, {}),
    "encrypt_to": (["age1tnrczdwk6m8rlkzsuepxuusy337reju8pmfhxlwpgkg2shls95mqp2mufj"], {}), "compression": ("zstd", {}),
    "drill_identity_file": ("/root/drill.key", {}),
    "parallel": (3, {}), "lock_wait": (30, {}), "max_age_hours": (48, {}), "splay_minutes": (15, {}),
    "metrics_file": ("/var/lib/node/repobackup.prom", {}), "host_id": ("db1.example.com", {}),
    "sftp_key_file": ("/k", {"destination": "sftp://bk@nas/srv", "sftp_key_file": "/other"}),
    "sftp_known_hosts": ("/kh", {"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k"}),
    "sftp_host_key": ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKGtfIOxXhn0i1PO0S4Q2qajDn5Sq6+4UtQyRnLfz+Db",
                      {"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k"}),
    "sftp_verify_upload": (True, {"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k"}),
    "sftp_retries": (0, {"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k"}),
    "sftp_timeout": (5, {"destination": "sftp://bk@nas/srv", "sftp_key_file": "/k"}),
    "sqlite_root": ("/data/sqlite", {}),
    "postgresql_host": ("/run/postgresql", {"kind": "postgresql"}),
    "postgresql_port": (5433, {"kind": "postgresql"}),
    "postgresql_user": ("backup", {"kind": "postgresql"}),
    "postgresql_service": ("nightly", {"kind": "postgresql"}),
    "drill_days": (["sun"], {}), "drill_times": (["04:30"], {}), "drill_max_age_days": (31, {}),
    "drill_postgresql_host": ("drill.example.net", {"kind": "postgresql"}),
    "drill_postgresql_port": (5434, {"kind": "postgresql"}),
    "drill_postgresql_service": ("drills", {"kind": "postgresql"}),
    "git_root": ("/data/git", {"kind": "git"}),
}
STORED = [option for option in TABLE if option.at]


def at_place(doc: dict, option):
    group, key = option.place
    return (doc[group] if group else doc)[key]


def test_every_stored_option_has_a_sample():
    assert set(SAMPLES) == {option.name for option in STORED}


@pytest.mark.parametrize("option", STORED, ids=[option.name for option in STORED])
def test_each_option_reaches_its_place_in_the_document_and_comes_back(option):
    value, context = SAMPLES[option.name]
    without = S.validate(dict(BASE, **context))
    settings = S.validate(dict(BASE, **dict(context, **{option.name: value})))
    doc = settings.to_document()
    assert at_place(doc, option) == value
    assert at_place(without.to_document(), option) != value
    assert S.from_document(doc) == settings
    assert S.from_document(doc).to_document() == doc


def test_a_kind_declares_its_own_options(monkeypatch):
    """register_options: one call gives the module option, the role key, the check and the document's place."""
    monkeypatch.setattr(S, "KINDS", list(S.KINDS))
    monkeypatch.setattr(S, "DEFAULT_RUN_AS", dict(S.DEFAULT_RUN_AS))
    monkeypatch.setattr(S, "_KIND_OPTIONS", dict(S._KIND_OPTIONS))
    S.register_options("demo", [S.Option("root", "path", "Where the demo repositories are.", default="/srv/demo",
                                         check=S._path)], run_as="demo")
    spec = autobackup_settings.argument_spec()
    assert spec["demo_root"] == {"type": "path", "default": "/srv/demo"}
    assert spec["kind"]["choices"] == ["sqlite", "postgresql", "git", "demo"]
    demo = S.validate(dict(BASE, kind="demo", demo_root="/data/demo/", sqlite_root="relative is ignored"))
    assert (demo.options, demo.run_as) == ({"root": "/data/demo"}, "demo")
    assert S.from_document(demo.to_document()) == demo
    assert S.validate(dict(BASE, demo_root="relative is ignored")).options == {"root": "/var/lib/reposerver/sqlite"}
    with pytest.raises(S.SettingsError, match="demo_root 'relative' is not allowed; use an absolute path"):
        S.validate(dict(BASE, kind="demo", demo_root="relative"))


# -- the module's documentation ----------------------------------------------------------------------------------

def ansible_doc(*modules: str) -> dict:
    """What ansible-doc renders (doc fragments included) for reposerver.backup.<module>."""
    command = shutil.which("ansible-doc", path=os.path.dirname(sys.executable)) or shutil.which("ansible-doc")
    # conftest.py put this tree into ANSIBLE_COLLECTIONS_PATH.
    out = subprocess.run([command, "--json", "-t", "module"] + ["reposerver.backup." + m for m in modules],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return {name.rpartition(".")[2]: entry["doc"] for name, entry in json.loads(out.stdout).items()}


def documented(option: dict) -> dict:
    return {"type": option.get("type", "str"), "default": option.get("default"),
            "choices": option.get("choices"), "elements": option.get("elements"),
            "required": option.get("required", False)}


def specified(spec: dict) -> dict:
    return {"type": spec.get("type", "str"), "default": spec.get("default"),
            "choices": spec.get("choices"), "elements": spec.get("elements"),
            "required": spec.get("required", False)}


@pytest.fixture(scope="module")
def docs() -> dict:
    return ansible_doc("autobackup_settings", "repository_export", "repository_import", "autobackup_info")


@pytest.mark.parametrize("module", [autobackup_settings, repository_export, repository_import],
                         ids=lambda m: m.__name__.rpartition(".")[2])
def test_the_documentation_of_each_module_matches_its_argument_spec(docs, module):
    doc = docs[module.__name__.rpartition(".")[2]]["options"]
    spec = module.argument_spec()
    assert set(doc) == set(spec)
    for name in spec:
        assert documented(doc[name]) == specified(spec[name]), name


def test_server_name_is_documented_once_for_every_module(docs):
    """The doc fragment reposerver.backup.server: the table's server_name (autobackup_info: every server)."""
    spec = specified(S.argument_spec()["server_name"])
    for module in ("autobackup_settings", "repository_export", "repository_import"):
        assert documented(docs[module]["options"]["server_name"]) == spec
    assert documented(docs["autobackup_info"]["options"]["server_name"]) == dict(spec, default=None)
    descriptions = {json.dumps(docs[m]["options"]["server_name"]["description"]) for m in docs}
    assert len(descriptions) == 2  # the fragment's two texts, written nowhere else


# -- the role ----------------------------------------------------------------------------------------------------

def test_every_setting_has_its_role_variable_with_the_module_default():
    defaults = load(ROLE / "defaults" / "main.yml")
    assert set(defaults) == {option.variable for option in TABLE} | ROLE_ONLY
    for option in TABLE:
        assert defaults[option.variable] == option.role_default, option.variable


def test_the_role_argument_specs_follow_the_table():
    specs = role_specs()
    assert set(specs) == {option.variable for option in TABLE} | ROLE_ONLY
    for option in TABLE:
        spec = specs[option.variable]
        assert (spec["type"], spec.get("elements"), spec.get("default")) == \
            (option.type, option.elements, option.role_default), option.variable
        # No choices in the role's spec: the settings module refuses a value, naming the server and the variable.
        assert "choices" not in spec, option.variable
        for choice in option.allowed:
            assert "C(%s)" % choice in " ".join(spec["description"]), (option.variable, choice)


def test_each_autobackup_servers_entry_takes_the_same_keys_and_types():
    entry = role_specs()["autobackup_servers"]
    assert (entry["type"], entry["elements"], entry["default"]) == ("list", "dict", [])
    assert set(entry["options"]) == set(NAMES)
    for option in TABLE:
        spec = entry["options"][option.name]
        assert (spec["type"], spec.get("elements"), "default" in spec) == (option.type, option.elements, False)
        assert "O(%s)" % option.variable in " ".join(spec["description"])


def test_the_role_key_list_is_the_table():
    keys = load(ROLE / "vars" / "main.yml")["__autobackup_keys"]
    assert sorted(keys) == sorted(NAMES)


def test_the_role_sends_each_setting_once_and_applies_the_checked_document():
    """validate.yml passes every key of a server to the module; present.yml applies the document it returned."""
    check = role_task("validate.yml")
    # notify's URLs are secrets: the items hold them cut short, the module gets them from __autobackup_notify
    expected = {name: "{{ item.%s }}" % name for name in NAMES}
    expected["notify"] = "{{ __autobackup_notify[item.server_name] }}"
    assert check["reposerver.backup.autobackup_settings"] == expected
    assert check["check_mode"] is True and check["register"] == "__autobackup_checked"
    apply = role_task("present.yml")
    assert apply["reposerver.backup.autobackup_settings"] == {
        "settings": "{{ item.settings }}", "managed_by": "role", "notify": "{{ __autobackup_notify[item.item.server_name] }}"}
    assert apply["no_log"] is True
    assert apply["loop"] == "{{ __autobackup_present }}"


def test_the_role_readme_lists_every_variable():
    readme = (ROLE / "README.md").read_text(encoding="utf-8")
    for option in TABLE:
        assert "| `%s` |" % option.variable in readme, option.variable
