# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host command ``repobackup``: what cron calls and what an administrator types.

Exit codes: 0 everything asked for succeeded (a scheduled run skipped because
auto-backup is off or suspended counts as success), 1 something failed or the
run was skipped because another one holds the lock, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import json
import sys

from .engine import Engine, load_settings, servers_on_host, verify_backup
from .errors import LockHeld, RepoBackupError, SettingsError
from .layers import Layers, read_identity
from .layers import shown as shown_recipient
from .layout import VERSION, Paths
from .report import shown, status_text


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write("repobackup: %s\n" % text)


IDENTITY_HELP = "the private key (age or SSH) of an encrypted backup, read for this command only"


def _verified(name: str, manifest: dict) -> str:
    text = "ok: %s (%s, repository %r, %d bytes, sha256 %s)" % (
        name, manifest["kind"], manifest["repository"], manifest["size"], manifest["sha256"])
    if not manifest.get("contents_checked", True):
        text += "; stored bytes only: it is encrypted to %s, give --identity FILE to check its content" % (
            ", ".join(map(shown_recipient, Layers.of(manifest).recipients)))
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repobackup", description="Backups of repository servers.")
    parser.add_argument("--version", action="version", version="repobackup " + VERSION)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--server", help="server name (may be left out when the host has one)")
        return cmd

    run = add("run", "the scheduled job: back up every included repository")
    run.add_argument("--scheduled", action="store_true", help=argparse.SUPPRESS)
    status = add("status", "auto-backup status at a glance")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add("list", "repositories present, each marked included or not")
    export = add("export", "back up repositories now (default: every included one)")
    export.add_argument("repositories", nargs="*", metavar="REPOSITORY")
    imp = add("import", "restore a repository from a backup, or with --all every repository of the server")
    imp.add_argument("backup", metavar="BACKUP", nargs="?", help="data file or manifest of a backup")
    imp.add_argument("--repository", help="restore under this name (default: the original name)")
    imp.add_argument("--force", action="store_true", help="replace an existing repository")
    imp.add_argument("--all", action="store_true", help="disaster recovery: the saved roles first, then every "
                     "repository of this host and server from its newest good backup")
    imp.add_argument("--no-create-roles", dest="create_roles", action="store_false",
                     help="refuse, naming them, roles the backup needs that the server lacks, instead of creating "
                     "them (without passwords) from the saved globals")
    drill = add("drill", "restore drills: restore each repository's newest good backup into scratch (never the live "
                "repository), check it and record the result (default: every included repository)")
    drill.add_argument("repositories", nargs="*", metavar="REPOSITORY")
    drill.add_argument("--scheduled", action="store_true", help=argparse.SUPPRESS)
    drill.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)
    imp.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)
    verify = sub.add_parser("verify", help="check a backup's manifest, checksum and integrity")
    verify.add_argument("backup", metavar="BACKUP")
    verify.add_argument("--server", help="the server whose sftp:// destination holds BACKUP")
    verify.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP + " (without it, an encrypted backup's "
                        "stored bytes are checked, not its content)")
    return parser


def _server(name: str | None, paths: Paths) -> str:
    if name:
        return name
    servers = servers_on_host(paths)
    if len(servers) == 1:
        return servers[0]
    if not servers:
        raise SettingsError("No repository server is configured on this host (%s is empty)." % paths.settings_dir)
    raise SettingsError("This host has several servers (%s): name one with --server." % ", ".join(servers))


def main(argv: list | None = None, paths: Paths = Paths()) -> int:
    # "--" ends options, so a repository called "-h" stays a name: repobackup export -- -h
    args = _parser().parse_args(argv)
    try:
        # Read here, by whoever runs the command (root), before the engine becomes the run-as user.
        identity = read_identity(args.identity) if getattr(args, "identity", None) else None
        if args.command == "verify" and not args.backup.startswith("sftp://"):
            manifest = verify_backup(args.backup, identity)
            _out(_verified(manifest["path"], manifest))
            return 0
        engine = Engine(load_settings(_server(args.server, paths), paths), paths)
        engine.identity = identity
        if args.command == "verify":  # a backup on the server's SFTP destination
            _out(_verified(args.backup, engine.verify(args.backup)))
            return 0
        if args.command == "status":
            info = engine.status()
            _out(json.dumps(info, indent=2, sort_keys=True) if args.json else status_text(info))
            return 0
        if args.command == "list":
            return _list(engine)
        if args.command == "import" and args.all:
            if args.backup or args.repository:
                raise SettingsError("import --all restores every repository under its own name from its newest "
                                    "good backup; name no BACKUP and no --repository with it.")
            return _print_import_all(engine.import_all(args.force, create_roles=args.create_roles))
        if args.command == "import":
            if not args.backup:
                raise SettingsError("import needs a BACKUP (a data file or manifest), or --all.")
            done = engine.import_backup(args.backup, args.repository, args.force, create_roles=args.create_roles)
            if done["changed"]:
                _out("restored repository %r from %s" % (done["repository"], done["backup"]))
                if done.get("roles_created"):
                    _out("created roles (without passwords): %s" % ", ".join(done["roles_created"]))
            else:
                _out("repository %r already holds the content of %s; nothing to do"
                     % (done["repository"], done["backup"]))
            return 0
        if args.command == "drill":
            return _print_drills(engine.drill(args.repositories or None, scheduled=args.scheduled))
        report = engine.run(scheduled=args.scheduled) if args.command == "run" \
            else engine.export(args.repositories or None)
        return _print_report(report)
    except LockHeld as exc:
        _err(str(exc))
        return 1
    except SettingsError as exc:
        _err(str(exc))
        return 2
    except RepoBackupError as exc:
        _err(str(exc))
        return 1


def _print_import_all(done: dict) -> int:
    saved = done["globals"]
    if saved["result"] == "failed":
        _out("FAILED  globals  %s" % saved["error"])
    elif saved["result"] != "none":
        roles = saved.get("roles_created")
        created = "  created roles (without passwords): " + ", ".join(roles) if roles else ""
        _out("%-7s globals  %s%s" % (saved["result"], saved.get("backup"), created))
    for name, one in done["repositories"].items():
        if one["result"] == "failed":
            _out("FAILED  %s  %s" % (shown(name), one["error"]))
        else:
            _out("%-7s %s  %s" % (one["result"], shown(name), one["backup"]))
    if not done["repositories"]:
        _out("no repository of this server has backups here")
    return 0 if done["result"] == "ok" else 1


def _list(engine: Engine) -> int:
    info = engine.status()
    if not info["server_reachable"]:
        _err("repository server unreachable")
    for name in sorted(info["covered"] + info["not_covered"]):
        _out("%-12s %s" % ("included" if name in info["covered"] else "not included", shown(name)))
    for name in info["missing"]:
        _out("%-12s %s" % ("missing", shown(name)))
    return 0 if info["server_reachable"] else 1


def _print_drills(report: dict) -> int:
    if report["result"] == "skipped":
        _out("skipped: %s" % report["reason"])
        return 1 if report["reason"] == "already running" else 0
    for name, drill in report["repositories"].items():
        for why in drill.get("skipped_backups") or []:
            _out("skipped %s  newer backup passed over: %s" % (shown(name), why))
        for note in drill.get("space_unchecked") or []:
            _out("note    %s  %s" % (shown(name), note))
        if drill["result"] == "ok":
            checks = ", ".join(drill["checks"]) or "none"
            _out("ok      %s  %s  %.2fs  checks: %s" % (shown(name), drill["backup"], drill["duration"], checks))
        else:
            _out("FAILED  %s  %s" % (shown(name), drill["error"]))
    if report.get("error"):
        _out("FAILED  %s" % report["error"])
    if not report["repositories"] and not report.get("error"):
        _out("nothing to drill: no repository is included")
    return 0 if report["result"] == "ok" else 1


def _print_report(report: dict) -> int:
    if report["result"] == "skipped":
        _out("skipped: %s" % report["reason"])
        return 1 if report["reason"] == "already running" else 0
    for name, res in sorted(report["repositories"].items()):
        if res["result"] == "ok":
            _out("ok      %s  %d bytes  %.2fs  %s" % (name, res["size"], res["duration"], res["backup"]))
        else:
            _out("FAILED  %s  %s" % (name, res["error"]))
    if report.get("error"):
        _out("FAILED  %s" % report["error"])
    return 0 if report["result"] == "ok" else 1
