# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``postgresql`` repository server: each repository is a database of one cluster.

No Python driver: the engine runs PostgreSQL's own clients (psql, pg_dump,
pg_dumpall, pg_restore) as argument lists, found under
/usr/lib/postgresql/<newest version>/bin or on PATH.  Connection settings are
``host`` (socket folder or host name), ``port``, ``user`` and ``service`` (a
libpq service name); never a password: that comes from the run-as user's
``.pgpass`` or the service file.  Names reach SQL only as psql variables
(``:'name'`` literal, ``:"name"`` identifier) and the command line only inside
a quoted conninfo string (``--dbname=dbname='...'``), so no name becomes an
option or SQL.

- Exports are ``pg_dump -Fc`` archives (restorable with ``pg_restore``), checked
  after the dump: non-empty, the ``PGDMP`` magic, and ``pg_restore --list``.
- ``keep_connections``: pg_dump's own snapshot; clients keep working.
- ``disconnect``: the database's previous connection limit is recorded as a
  pending repair, the limit set to 0 (ordinary roles cannot connect; superusers
  still can: that is how pg_dump, run as a superuser, gets in), the database's
  sessions are terminated and counted, the export runs, and the previous limit
  is put back exactly; then the pending record is cleared.  A run killed in
  between leaves the record, and the engine's next run or import repairs it
  first.  Other superusers are not kept out.

  Several servers may share one cluster (an hourly one for one database, a
  nightly one for all), each with its own state folder, perhaps on other hosts.
  So the original limit is guarded on the cluster itself, the one place all of
  them share: everything that reads or changes a database's connection limit
  (``disconnect``, a repair, the swap of a restore) first takes the advisory
  lock ``DISCONNECT_LOCK << 32 | OID of the database`` in the ``postgres``
  database (advisory locks belong to the database they are taken in, so every
  run of every server names the same one), held by a psql child kept open on a
  pipe for the whole disconnect.  A second run waits for it, at most
  ``disconnect_wait`` seconds (then that repository fails with one sentence),
  and reads the true original once the first has put it back.  The lock dies
  with the session, so a killed run never blocks the next; its record is then
  repaired by its own server, and only while the limit is still 0 (a record
  written while another run kept the database at 0 holds 0, and a limit set
  since is never overwritten).  Recording the original in files instead would
  not be seen by servers on other hosts.
- A run never ends another run's sessions: ``disconnect`` leaves out sessions
  named ``application_name=repobackup`` (every client program the engine
  starts says so) that belong to a superuser or to the engine's own role, so
  another server's pg_dump of the same database (``keep_connections``) goes on.
- Databases with ``ALLOW_CONNECTIONS false`` are listed but flagged
  (``RepositoryList.not_connectable``): ``all`` leaves them out and status
  names them, since no pg_dump can read them.  Names come back from SQL
  hex-encoded, so a name with any byte PostgreSQL allows (the field separator
  0x1F, a newline) stays one name.
- Only psql, whose output the engine parses, is told to talk UTF-8; pg_dump,
  pg_dumpall and pg_restore use the database's own encoding (no
  ``PGCLIENTENCODING`` at all), so an SQL_ASCII database holding bytes that are
  not UTF-8 is backed up as it is.
- Restore: into a scratch database (``.repobackup-restore-<hash of the name>``)
  in one transaction; only when pg_restore completed are the names swapped in
  one transaction (the old database renamed aside, ``.repobackup-old-<hash>``,
  then dropped).  Leftovers of an interrupted restore are dropped by the next.
  Databases whose names start with ``.repobackup-`` are never listed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
from contextlib import contextmanager

from . import pg_database as pgdb
from .errors import BackupError, FileError, RepositoryError, RestoreCheckFailed
from .facts import compare_facts
from .kinds import RepositoryServer, register
from .layout import process_alive, scratch_folder
from .settings import Option, check_connection_text, check_whole

MAGIC = b"PGDMP"
_TOOL_VERSIONS = {}  # client program -> its version, asked once per process
MAINTENANCE_DB = "postgres"
APPLICATION = "repobackup"  # application_name of every session the engine opens
# High 32 bits of the advisory lock key that guards one database's connection limit ("rbup").
DISCONNECT_LOCK = 0x72627570
ASIDE_PREFIX = ".repobackup-"
# Scratch databases of checks and drills: ``.repobackup-scratch-<host tag>-<pid>-<random>``; the next run on the
# same host drops those whose process is gone (``remove_leftovers``).  The host tag keeps a host from judging
# another host's process ids on a shared cluster.
SCRATCH_PREFIX = ASIDE_PREFIX + "scratch-"
# Lines of ``pg_restore --file=-`` output that differ between dumps of the same content.
_VOLATILE_LINES = (b"-- Dumped from database version ", b"-- Dumped by pg_dump version ",
                   b"-- Started on ", b"-- Completed on ", b"\\restrict ", b"\\unrestrict ")


def tool(name: str) -> str:
    """Path of a PostgreSQL client program: the newest installed version, else PATH."""
    def version_of(folder):
        base = folder.split(os.sep)[-2]
        return [int(p) for p in base.split(".") if p.isdigit()]
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_of, reverse=True):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if not found:
        raise RepositoryError("The PostgreSQL client program %s is not installed on this host." % name)
    return found


def quote_conninfo(value) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _text(hexed: str) -> str:
    """A name sent hex-encoded from SQL (``encode(convert_to(x, 'UTF8'), 'hex')``) back as text."""
    return bytes.fromhex(hexed.strip()).decode("utf-8", "replace")


def _hexed(expression: str) -> str:
    return "encode(convert_to(%s, 'UTF8'), 'hex')" % expression


class RepositoryList(list):
    """The databases that are repositories, sorted; ``not_connectable``: those among them that accept no
    connection at all (``ALLOW_CONNECTIONS false``), which ``all`` leaves out and status names."""

    def __init__(self, names=(), not_connectable=()):
        super().__init__(names)
        self.not_connectable = list(not_connectable)


def host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def scratch_name() -> str:
    """A scratch database name no client knows, that ``remove_leftovers`` drops once this process is gone."""
    return "%s%s-%d-%s" % (SCRATCH_PREFIX, host_tag(), os.getpid(), os.urandom(6).hex())


def aside_names(name: str) -> tuple:
    """(scratch, old) database names a restore of ``name`` uses; never longer than 63 bytes."""
    tag = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return ASIDE_PREFIX + "restore-" + tag, ASIDE_PREFIX + "old-" + tag


@register
class PostgresqlServer(RepositoryServer):
    kind = "postgresql"
    data_suffix = ".dump"
    default_run_as = "postgres"  # peer authentication over the local socket
    left_out_of_all = ("postgres",)
    has_globals = True
    data_compressed = True  # pg_dump's custom format compresses its data itself
    # libpq connection settings; empty means libpq's default.  Never a password.
    kind_options = (
        Option("host", "str", "Host name, address or Unix socket folder of the cluster.", default="",
               check=check_connection_text),
        Option("port", "int", "Port of the cluster.", default=5432, check=check_whole(1, 65535)),
        Option("user", "str", "Database role to connect as.", default="", check=check_connection_text),
        Option("service", "str", "libpq service name.", default="", check=check_connection_text),
    )
    # Where restore drills restore (a drill cluster); all unset: a scratch database on the cluster itself.
    drill_options = (
        Option("host", "str", "Drill cluster: host name, address or socket folder; unset: the cluster's.",
               default="", check=check_connection_text),
        Option("port", "int", "Drill cluster: port; 0: the cluster's.", default=0, check=check_whole(0, 65535)),
        Option("service", "str", "Drill cluster: libpq service name; unset: the cluster's.", default="",
               check=check_connection_text),
    )

    def __init__(self, options: dict, wait: int = 30):
        super().__init__(options, wait)
        self._version = None

    # -- talking to the server ---------------------------------------------------
    def conninfo(self, dbname: str) -> str:
        parts = ["dbname=" + quote_conninfo(dbname), "connect_timeout=10", "application_name=" + APPLICATION]
        for key in ("host", "port", "user", "service"):
            value = self.options.get(key)
            if value not in (None, ""):
                parts.append("%s=%s" % (key, quote_conninfo(value)))
        return " ".join(parts)

    def where(self) -> str:
        opts = self.options
        if opts.get("service"):
            return "service %s" % opts["service"]
        return "%s port %s" % (opts.get("host") or "the default socket", opts.get("port") or 5432)

    def _run(self, args: list, what: str, stdin: bytes | None = None) -> bytes:
        try:
            returncode, out, err = _call(args, stdin, utf8=os.path.basename(args[0]) == "psql")
        except OSError as exc:
            raise RepositoryError("%s could not be started: %s." % (args[0], exc.strerror)) from None
        if returncode != 0:
            raise RepositoryError("%s failed: %s." % (what, _first_error(err)))
        return out

    def sql(self, script: str, dbname: str = MAINTENANCE_DB, what: str = "A query", **variables) -> list:
        """Run ``script`` with psql; variables are passed with -v; rows come back as lists of fields."""
        args = [tool("psql"), "-X", "-q", "-A", "-t", "-0", "-F", "\x1f", "-v", "ON_ERROR_STOP=1"]
        for key, value in variables.items():
            args += ["-v", "%s=%s" % (key, value)]
        args += ["--dbname=" + self.conninfo(dbname), "-f", "-"]
        out = self._run(args, "%s on the PostgreSQL server (%s)" % (what, self.where()), script.encode("utf-8"))
        text = out.decode("utf-8", "replace")
        return [rec.split("\x1f") for rec in text.split("\0") if rec]

    # -- reading the server ---------------------------------------------------------
    def version(self) -> str:
        if self._version is None:
            try:
                self._version = self.sql("SELECT current_setting('server_version');")[0][0].strip()
            except RepositoryError:
                return "unknown"
        return self._version

    def version_num(self) -> int:
        """The server's version as a number (150014); what the export's queries depend on."""
        if getattr(self, "_version_num", None) is None:
            rows = self.sql("SELECT current_setting('server_version_num');", what="Reading the server version")
            self._version_num = int(rows[0][0].strip())
        return self._version_num

    @staticmethod
    def tool_version(name: str) -> str:
        """The version of a client program here (``15.14``), "unknown" when it does not say."""
        if name not in _TOOL_VERSIONS:
            try:
                returncode, out, dummy = _call([tool(name), "--version"])
            except OSError:
                returncode, out = 1, b""
            found = pgdb.tool_version(out.decode("utf-8", "replace")) if returncode == 0 else None
            _TOOL_VERSIONS[name] = found or "unknown"
        return _TOOL_VERSIONS[name]

    def list_repositories(self) -> RepositoryList:
        try:
            rows = self.sql("SELECT %s, datallowconn FROM pg_database WHERE NOT datistemplate;" % _hexed("datname"),
                            what="Listing databases")
        except RepositoryError as exc:
            raise RepositoryError("The PostgreSQL server (%s) cannot be reached: %s"
                                  % (self.where(), str(exc).split(" failed: ", 1)[-1])) from None
        found = [(_text(row[0]), row[1].strip() == "t") for row in rows]
        found = sorted((n, allowed) for n, allowed in found if not n.startswith(ASIDE_PREFIX))
        return RepositoryList([n for n, dummy in found], [n for n, allowed in found if not allowed])

    def exists(self, name: str) -> bool:
        return name in self.list_repositories()

    def size_estimate(self, name: str) -> int:
        """Bytes a backup of ``name`` may take: the database's size on the server (a dump is smaller)."""
        rows = self.sql("SELECT pg_database_size(:'name');", what="Reading the size of a database", name=name)
        return int(rows[0][0]) if rows and rows[0][0].strip().isdigit() else 0

    def scratch_space(self, name: str, size: int) -> list:
        """A drill's scratch database fills the cluster's data folder: about the live database's size (else
        the backup's).  Its free space is read where the cluster runs on this host (a socket folder or a
        loopback address); for a cluster elsewhere it cannot be asked from here (None)."""
        try:
            needed = max(size, self.size_estimate(name)) if name in self.list_repositories() else size
            folder = self.sql("SELECT current_setting('data_directory');", what="Reading the data folder")[0][0]
        except (RepositoryError, IndexError):
            return [("the PostgreSQL server (%s)" % self.where(), None, size)]
        host = self.options.get("host") or ""
        on_this_host = not host or host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")
        local = on_this_host and not self.options.get("service")
        try:
            stat = os.statvfs(folder.strip()) if local else None
        except OSError:
            stat = None
        place = "the data folder of the PostgreSQL server (%s)" % self.where()
        return [(place, stat.f_bavail * stat.f_frsize if stat else None, needed)]

    def connection_limit(self, name: str) -> int:
        rows = self.sql("SELECT datconnlimit FROM pg_database WHERE datname = :'name';", name=name)
        if not rows:
            raise RepositoryError("Database %r does not exist on the PostgreSQL server (%s)." % (name, self.where()))
        return int(rows[0][0].strip())

    def set_connection_limit(self, name: str, limit: int) -> None:
        self.sql("ALTER DATABASE :\"name\" CONNECTION LIMIT %d;" % int(limit), what="Setting the connection limit",
                 name=name)

    def terminate_sessions(self, name: str) -> int:
        """End every other session of database ``name`` but the engine's own (another run's pg_dump);
        the number of client sessions ended."""
        rows = self.sql(
            "SELECT count(*) FILTER (WHERE backend_type = 'client backend'"
            " AND pg_terminate_backend(pid, %d)) FROM pg_stat_activity"
            " WHERE datname = :'name' AND pid <> pg_backend_pid()"
            " AND NOT (application_name = :'application' AND (usesysid = (SELECT oid FROM pg_roles"
            " WHERE rolname = current_user) OR (SELECT rolsuper FROM pg_roles WHERE oid = usesysid)));"
            % (max(1, self.wait) * 1000), what="Ending sessions", name=name, application=APPLICATION)
        return int(rows[0][0].strip())

    @contextmanager
    def limit_guard(self, name: str):
        """Hold the cluster-wide lock on database ``name``'s connection limit (see the module text).

        A psql child on the maintenance database takes ``pg_advisory_lock`` and keeps its session
        open on a pipe until the block ends; closing its input ends the session and the lock.
        Waits at most ``wait`` seconds for another run, then fails with one sentence.  A database
        that does not exist takes no lock (what follows fails with its own sentence).
        """
        script = ("SET lock_timeout = %d;\n"
                  "SELECT 'locked', pg_advisory_lock(%d::bigint * 4294967296 + oid::bigint) FROM pg_database"
                  " WHERE datname = :'name';\nSELECT 'ready';\n" % (max(1, self.wait) * 1000, DISCONNECT_LOCK))
        args = [tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v", "name=" + name,
                "--dbname=" + self.conninfo(MAINTENANCE_DB)]
        try:
            proc = _spawn(args, utf8=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            raise RepositoryError("%s could not be started: %s." % (args[0], exc.strerror)) from None
        try:
            proc.stdin.write(script.encode("utf-8"))
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline()
                if not line or line.strip() == b"ready":
                    break
            if not line:
                proc.stdin.close()
                proc.wait()
                error = _first_error(proc.stderr.read())
                if "lock timeout" in error:
                    raise RepositoryError(
                        "Database %r is kept disconnected by another run (another server on this PostgreSQL "
                        "cluster, or an import) that did not end within disconnect_wait (%d s); its connection "
                        "limit was left to that run." % (name, self.wait))
                raise RepositoryError("Locking the connection limit of database %r on the PostgreSQL server "
                                      "(%s) failed: %s." % (name, self.where(), error))
            yield
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
            proc.wait()

    # -- export -------------------------------------------------------------------------
    def export(self, name: str, target: str, in_use: str) -> dict:
        """Write one consistent ``pg_dump -Fc`` archive of database ``name`` to ``target``.

        The engine has just listed the databases; a database dropped since makes
        pg_dump fail with its own message, so no extra round trip is spent here.
        """
        if in_use != "disconnect":
            found = self._dump(name, target)
            return dict(self._manifest_facts(found), sessions_ended=0)
        with self.limit_guard(name):  # no other run reads or changes the limit meanwhile
            previous = self.connection_limit(name)
            record = {"kind": self.kind, "action": "connection_limit", "repository": name,
                      "connection_limit": previous}
            if self.pending is not None:
                self.pending.write(name, record)
            self.set_connection_limit(name, 0)
            try:
                ended = self.terminate_sessions(name)
                found = self._dump(name, target)
            finally:
                self.set_connection_limit(name, previous)  # raises if the server is gone: the record stays
                if self.pending is not None:
                    self.pending.clear(name)
        found["database"]["connection_limit"] = previous  # the dump's snapshot saw the 0 set for it
        return dict(self._manifest_facts(found), sessions_ended=ended)

    def _manifest_facts(self, found: dict) -> dict:
        """The manifest fields of an export: the database's properties, the facts, the dump tool's version."""
        return {"database": found["database"], "facts": {"tables": found["tables"], "objects": found["objects"]},
                "dump_tool": "pg_dump", "dump_tool_version": self.tool_version("pg_dump")}

    def _dump(self, name: str, target: str, facts: bool = True) -> dict | None:
        """``pg_dump -Fc`` of ``name`` into ``target`` in a snapshot exported by a psql session that reads, in
        the same snapshot, the database's properties and facts (``pg_database.facts_sql``); then the archive is
        read whole.  With ``facts`` false, pg_dump alone (a copy to hash)."""
        # Streamed (layers.py): the target is a FIFO, which pg_dump can neither fsync nor be read back from.
        streamed = os.path.exists(target) and stat.S_ISFIFO(os.stat(target).st_mode)
        args = [tool("pg_dump"), "--format=custom"] + (["--no-sync"] if streamed else []) + [
            "--file=" + target, "--dbname=" + self.conninfo(name)]
        what = "pg_dump of database %r" % name
        found = None
        if not facts:
            self._run(args, what)
        else:
            with _Session(self, name) as session:
                snapshot = session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
                                         "SELECT pg_export_snapshot();\n")
                dump = _Background(args[:1] + ["--snapshot=" + snapshot] + args[1:], what)
                try:
                    found = pgdb.read_hexed_json(session.query(pgdb.facts_sql(self.version_num())))
                finally:
                    dump.wait()
                session.query("COMMIT;\nSELECT 'done';\n")
        if streamed:
            return found  # stream_check reads the archive whole as it is written
        try:
            self.verify_file(target)
        except BackupError as exc:
            raise RepositoryError("pg_dump of database %r reported success but wrote no archive that pg_restore "
                                  "reads whole: %s" % (name, str(exc))) from None
        return found

    def stream_check(self) -> list:
        return [tool("pg_restore"), "--file=" + os.devnull]

    def export_globals(self, target: str) -> None:
        """Roles, tablespaces and other cluster-wide objects (no role passwords) as an SQL script."""
        self._run([tool("pg_dumpall"), "--globals-only", "--no-role-passwords", "--file=" + target,
                   "--dbname=" + self.conninfo(MAINTENANCE_DB)], "pg_dumpall --globals-only")
        if not os.path.isfile(target) or os.path.getsize(target) == 0:
            raise RepositoryError("pg_dumpall --globals-only reported success but wrote nothing.")

    def repair(self, record: dict) -> None:
        """Undo what a killed ``disconnect`` export left: put the connection limit back, under the
        cluster-wide guard, and only while it is still the 0 the export set (see the module text)."""
        if record.get("action") != "connection_limit":
            return
        name = record["repository"]
        previous = int(record["connection_limit"])
        if name not in self.list_repositories():
            return  # dropped meanwhile: nothing left to let clients back into
        with self.limit_guard(name):
            self.sql("SELECT format('ALTER DATABASE %%I CONNECTION LIMIT %d', datname) FROM pg_database"
                     " WHERE datname = :'name' AND datconnlimit = 0 \\gexec\n" % previous,
                     what="Putting the connection limit back", name=name)

    # -- content ---------------------------------------------------------------------------
    @staticmethod
    def content_hash(path: str) -> str:
        """sha256 of ``pg_restore --file=-`` output (the archive as SQL) without the lines that
        differ between dumps of the same content: the server and pg_dump version comments
        (``-- Dumped from/by ...``), start/completion times (``-- Started on``, ``-- Completed on``)
        and the random ``\\restrict``/``\\unrestrict`` keys.  The database's own name is not in it."""
        digest = hashlib.sha256()
        args = [tool("pg_restore"), "--file=-", path]
        with _spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as proc:
            for line in proc.stdout:
                if not line.startswith(_VOLATILE_LINES):
                    digest.update(line)
            errors = proc.stderr.read()
        if proc.returncode != 0:
            raise FileError("", path, " cannot be read by pg_restore: %s." % _first_error(errors))
        return digest.hexdigest()

    def live_content_hash(self, name: str) -> str:
        with scratch_folder(self.scratch) as folder:
            copy = os.path.join(folder, "copy.dump")
            self._dump(name, copy, facts=False)
            return self.content_hash(copy)

    # -- verify and import -----------------------------------------------------------------
    @staticmethod
    def verify_file(path: str) -> None:
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(MAGIC))
        except OSError as exc:
            raise FileError("", path, " cannot be read: %s." % exc.strerror) from None
        if head != MAGIC:
            raise FileError("", path, " is not a PostgreSQL custom-format archive (empty or no PGDMP magic).")
        # --list reads only the table of contents; writing the whole archive as SQL reads every data block.
        returncode, dummy, err = _call([tool("pg_restore"), "--file=" + os.devnull, path], stdout=subprocess.DEVNULL)
        if returncode != 0:
            raise FileError("", path, " cannot be read whole by pg_restore: %s." % _first_error(err))

    def restore(self, data_file: str, name: str) -> None:
        """``restore_backup`` without a manifest: the database as the dump alone has it."""
        self.restore_backup(data_file, name, {})

    def restore_backup(self, data_file: str, name: str, manifest: dict, globals_file: str | None = None,
                       create_roles: bool = True) -> dict:
        """Restore into a scratch database made with the backup's encoding and locale, give it the recorded
        database properties, and swap names only when everything completed (the module text).

        Refuses before changing anything: a dump this pg_restore cannot read, roles the backup needs that
        the cluster lacks (unless ``create_roles`` and the saved globals have them), an encoding or locale
        the cluster cannot give.  Missing roles are created from ``globals_file`` without passwords, and
        existing roles are never altered.  Returns ``{"roles_created": [...]}``.
        """
        self.check_readable(manifest)
        self.verify_file(data_file)
        props = self.properties(manifest)
        roles = self.roles_to_create(props, globals_file, create_roles, name)
        scratch, old = aside_names(name)
        for leftover in (scratch, old):
            self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping a leftover", name=leftover)
        live = self.sql("SELECT %s FROM pg_database WHERE datname = :'name';" % _hexed("pg_get_userbyid(datdba)"),
                        name=name)
        owner = _text(live[0][0]) if live else None
        why = "for %r (the repository is unchanged)" % name
        self._create_database(scratch, props, None if props else owner, name)
        created = []
        try:
            created = self._create_roles(roles)
            self._restore_into(scratch, data_file, why)
            if props:
                self._apply_properties(scratch, props)
        except BaseException:
            self._drop(scratch)
            raise
        if live:
            try:
                with self.limit_guard(name):  # not while a disconnect keeps the live database at 0
                    if not props:  # a backup of an older engine: the live database's limit
                        self.set_connection_limit(scratch, self.connection_limit(name))
                    self._swap(name, scratch, old)
            except RepositoryError:
                self._drop(scratch)
                raise
            self._drop(old)
        else:
            self.sql("ALTER DATABASE :\"scratch\" RENAME TO :\"name\";", what="Publishing the restore",
                     scratch=scratch, name=name)
        return {"roles_created": created}

    def plan_restore(self, manifest: dict, name: str, globals_file: str | None = None,
                     create_roles: bool = True) -> dict:
        self.check_readable(manifest)
        roles = self.roles_to_create(self.properties(manifest), globals_file, create_roles, name)
        return {"roles_created": [r["name"] for r in roles]}

    def _drop(self, dbname: str) -> None:
        self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping a scratch database", name=dbname)

    # -- what a restore needs ------------------------------------------------------------------------
    def properties(self, manifest: dict) -> dict | None:
        """The database properties a manifest recorded (None: a backup of an older engine); refuses bad ones."""
        props = manifest.get("database")
        if props is None:
            return None
        problem = pgdb.check_properties(props)
        if problem:
            raise BackupError("Backup %s is not usable: its manifest's database record %s."
                              % (manifest.get("manifest_path", "?"), problem))
        return props

    def check_readable(self, manifest: dict) -> None:
        """Refuse a backup written by a pg_dump of a newer major release than this host's pg_restore."""
        written = manifest.get("dump_tool_version")
        if not isinstance(written, str) or manifest.get("content") == "globals":
            return
        here = self.tool_version("pg_restore")
        if here != "unknown" and pgdb.major(here) < pgdb.major(written):
            raise BackupError("Backup %s was written by pg_dump %s, which pg_restore %s on this host cannot read; "
                              "install PostgreSQL %s's client programs (nothing was changed)."
                              % (manifest.get("manifest_path", "?"), written, here,
                                 ".".join(str(p) for p in pgdb.major(written))))

    def missing_roles(self, props: dict | None) -> list:
        """The roles the backup needs that this cluster lacks, sorted."""
        if not props or not props.get("roles"):
            return []
        rows = self.sql("SELECT %s FROM json_array_elements_text((:'roles')::json) r WHERE NOT EXISTS"
                        " (SELECT 1 FROM pg_roles WHERE rolname = r);" % _hexed("r"),
                        what="Reading roles", roles=json.dumps(props["roles"]))
        return sorted(_text(row[0]) for row in rows)

    def roles_to_create(self, props: dict | None, globals_file: str | None, create_roles: bool,
                        name: str) -> list:
        """[{name, options, member_of}] for each missing role, from the saved globals; refuses (one sentence,
        nothing changed) when ``create_roles`` is off or the globals lack one."""
        missing = self.missing_roles(props)
        if not missing:
            return []
        listed = ", ".join(missing)
        if not create_roles:
            raise RepositoryError("The backup of %r needs roles that the PostgreSQL server (%s) lacks: %s; create "
                                  "them, or let the import create them (create_roles), then import again; nothing "
                                  "was changed." % (name, self.where(), listed))
        saved = self._read_globals(globals_file) if globals_file else {}
        lacking = [r for r in missing if r not in saved]
        if lacking:
            raise RepositoryError("The backup of %r needs roles that neither the PostgreSQL server (%s) nor the "
                                  "saved globals have: %s; create them, then import again; nothing was changed."
                                  % (name, self.where(), ", ".join(lacking)))
        return [dict(saved[r], name=r) for r in missing]

    def restore_globals(self, globals_file: str, dry_run: bool = False) -> list:
        """Create every role of the saved globals that this cluster lacks, without passwords (the module
        text); existing roles are never altered.  Tablespaces are left out: their folders belong to a host."""
        saved = self._read_globals(globals_file)
        missing = self.missing_roles({"roles": sorted(saved)})
        roles = [dict(saved[r], name=r) for r in missing]
        return missing if dry_run else self._create_roles(roles)

    @staticmethod
    def _read_globals(globals_file: str) -> dict:
        try:
            with open(globals_file, encoding="utf-8", errors="replace") as handle:
                return pgdb.roles_in_globals(handle.read())
        except OSError as exc:
            raise RepositoryError("The saved globals %s cannot be read: %s." % (globals_file, exc.strerror)) from None

    def _create_roles(self, roles: list) -> list:
        if not roles:
            return []
        self.sql(pgdb.CREATE_ROLES_SQL, what="Creating roles from the saved globals", roles=json.dumps(roles))
        return [r["name"] for r in roles]

    def _create_database(self, dbname: str, props: dict | None, owner: str | None, name: str) -> None:
        """CREATE DATABASE ``dbname`` from template0 with the recorded encoding and locale; one sentence when
        this cluster cannot give them (nothing was made)."""
        if not props:
            create = "CREATE DATABASE :\"scratch\" TEMPLATE template0%s;" % (" OWNER :\"owner\"" if owner else "")
            self.sql(create, what="Creating the scratch database", scratch=dbname,
                     **({"owner": owner} if owner else {}))
            return
        variables = {"scratch": dbname, "encoding": props["encoding"], "collate": props["collate"],
                     "ctype": props["ctype"]}
        create = "CREATE DATABASE :\"scratch\" TEMPLATE template0 ENCODING :'encoding' LC_COLLATE :'collate'" \
                 " LC_CTYPE :'ctype'"
        locale = "%s/%s" % (props["collate"], props["ctype"])
        if props.get("locale_provider", "libc") != "libc" or self.version_num() >= 150000:
            create += " LOCALE_PROVIDER :'provider'"
            variables["provider"] = props.get("locale_provider", "libc")
        if props.get("locale_provider") == "icu":
            create += " ICU_LOCALE :'icu'"
            variables["icu"] = props.get("icu_locale") or ""
            locale = "ICU %s" % variables["icu"]
        try:
            self.sql(create + ";", what="Creating the scratch database", **variables)
        except RepositoryError as exc:
            raise RepositoryError("The backup of %r needs encoding %s with locale %s, which the PostgreSQL server "
                                  "(%s) cannot give (%s); nothing was changed."
                                  % (name, props["encoding"], locale, self.where(),
                                     str(exc).split(" failed: ", 1)[-1].rstrip("."))) from None

    def _apply_properties(self, dbname: str, props: dict, role_settings: bool = True) -> None:
        """Give database ``dbname`` the recorded properties; without ``role_settings``, no ``ALTER ROLE ... IN
        DATABASE`` (a drill issues no ALTER ROLE at all, even for its scratch database)."""
        comment = props.get("comment")
        settings = [s for s in props.get("settings") or [] if role_settings or s.get("role") is None]
        self.sql(pgdb.APPLY_SQL, what="Giving the restored database its properties", db=dbname,
                 owner=props["owner"], limit=int(props.get("connection_limit", -1)),
                 has_comment="yes" if comment is not None else "no", comment=comment or "",
                 acl=pgdb.acl_literal(props.get("acl")), settings=pgdb.settings_for_sql(settings))

    def _restore_into(self, scratch: str, data_file: str, why: str) -> None:
        """pg_restore into database ``scratch`` in one transaction, stopping at the first error."""
        self._run([tool("pg_restore"), "--exit-on-error", "--single-transaction",
                   "--dbname=" + self.conninfo(scratch), data_file], "pg_restore into a scratch database " + why)

    @contextmanager
    def restored_in_scratch(self, data_file: str, manifest: dict | None = None):
        """The backup restored into a scratch database no client knows (never listed), dropped afterwards."""
        self.verify_file(data_file)
        props = self.properties(manifest or {})
        scratch = scratch_name()
        try:
            self._create_database(scratch, props, None, (manifest or {}).get("repository") or data_file)
            self._restore_into(scratch, data_file, "for a check")
            yield scratch
        finally:
            self._drop(scratch)

    # -- restore checks (drills) ----------------------------------------------------------------------
    def on_cluster(self, target: dict | None) -> "PostgresqlServer":
        """This server, or the same connection settings pointed at another cluster (host, port, service)."""
        given = {k: v for k, v in (target or {}).items() if k in ("host", "port", "service") and v not in (None, "", 0)}
        if not given:
            return self
        other = type(self)(dict(self.options, **given), wait=self.wait)
        other.scratch = self.scratch
        return other

    def check_restorable(self, data_file: str, manifest: dict, target: dict | None = None) -> list:
        """Restore the backup into a scratch database (on ``target``'s cluster when given), check it, compare
        it with the facts its manifest recorded, drop it; the names of the checks that passed.

        Never creates or alters roles: a role the backup needs that the cluster lacks fails the check, as
        does an extension the cluster does not have.
        """
        drv = self.on_cluster(target)
        source = manifest.get("manifest_path") or data_file
        try:
            self.check_readable(manifest)
            self.verify_file(data_file)
            props = self.properties(manifest)
        except BackupError as exc:
            raise RestoreCheckFailed(str(exc)) from None
        drv.remove_leftovers()
        missing = drv.missing_roles(props)
        if missing:
            raise RestoreCheckFailed("The backup %s needs roles that the PostgreSQL server (%s) lacks: %s; a drill "
                                     "never creates roles." % (source, drv.where(), ", ".join(missing)))
        facts = manifest.get("facts") if isinstance(manifest.get("facts"), dict) else {}
        drv.check_extensions(facts.get("objects"), source)
        scratch = scratch_name()
        passed = []
        try:
            try:
                drv._create_database(scratch, props, None, manifest.get("repository") or source)
                drv._restore_into(scratch, data_file, "for a check of %s" % source)
                passed.append("restore")
                if props:
                    drv._apply_properties(scratch, props, role_settings=False)
                    passed.append("properties")
            except RepositoryError as exc:
                raise RestoreCheckFailed(str(exc)) from None
            found = pgdb.read_hexed_json(drv.sql(pgdb.check_sql(), dbname=scratch,
                                                 what="Reading the restored copy")[0][0])
            if drv.amcheck(scratch):
                passed.append("amcheck")
            passed += compare_facts(facts, found, source)
        finally:
            drv._drop(scratch)
        return passed

    def check_extensions(self, objects, source: str) -> None:
        """Fail naming the first extension the backup recorded that this cluster cannot create."""
        wanted = sorted(o[len("extension "):] for o in objects or [] if o.startswith("extension "))
        if not wanted:
            return
        rows = self.sql("SELECT %s FROM json_array_elements_text((:'names')::json) x WHERE NOT EXISTS"
                        " (SELECT 1 FROM pg_available_extensions WHERE quote_ident(name) = x);" % _hexed("x"),
                        what="Reading the available extensions", names=json.dumps(wanted))
        lacking = sorted(_text(row[0]) for row in rows)
        if lacking:
            raise RestoreCheckFailed("The backup %s needs the extension %s, which the PostgreSQL server (%s) does "
                                     "not have installed." % (source, ", ".join(lacking), self.where()))

    def amcheck(self, dbname: str) -> bool:
        """``bt_index_check`` on every btree index of ``dbname`` when amcheck can be created there (False: it
        cannot, nothing was checked); a corrupt index fails with amcheck's message."""
        try:
            self.sql("CREATE EXTENSION IF NOT EXISTS amcheck;", dbname=dbname, what="Creating amcheck")
        except RepositoryError:
            return False
        try:
            self.sql("SELECT bt_index_check(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                     " JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready"
                     " AND c.relpersistence <> 't';", dbname=dbname, what="amcheck's bt_index_check")
        except RepositoryError as exc:
            raise RestoreCheckFailed(str(exc)) from None
        return True

    def remove_leftovers(self) -> list:
        """Drop the scratch databases of this host's checks whose process is gone (a drill killed with
        SIGKILL); their names.  A cluster that cannot be reached has nothing removed now."""
        prefix = "%s%s-" % (SCRATCH_PREFIX, host_tag())
        try:
            rows = self.sql("SELECT %s FROM pg_database WHERE starts_with(datname, :'prefix');" % _hexed("datname"),
                            what="Listing scratch databases", prefix=prefix)
        except RepositoryError:
            return []
        removed = []
        for name in (_text(row[0]) for row in rows):
            pid = name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and process_alive(pid):
                continue
            try:
                self._drop(name)
            except RepositoryError:
                continue
            removed.append("database %s (%s)" % (name, self.where()))
        return removed

    def _swap(self, name: str, scratch: str, old: str) -> None:
        script = ("SELECT pg_terminate_backend(pid, %d) FROM pg_stat_activity WHERE datname = :'name';\n"
                  "BEGIN;\nALTER DATABASE :\"name\" RENAME TO :\"old\";\n"
                  "ALTER DATABASE :\"scratch\" RENAME TO :\"name\";\nCOMMIT;\n" % (max(1, self.wait) * 1000))
        for attempt in range(5):  # a client may reconnect between terminate and rename
            try:
                self.sql(script, what="Swapping the restored database in", name=name, old=old, scratch=scratch)
                return
            except RepositoryError:
                if attempt == 4:
                    self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", name=scratch)
                    raise


class _Session:
    """A psql session on one database kept open on pipes: ``query(script)`` sends statements whose last one
    returns one row of one field, and gives that field back.  Ends with the block (closing its input)."""

    def __init__(self, server: "PostgresqlServer", dbname: str):
        self.server = server
        self.args = [tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                     "--dbname=" + server.conninfo(dbname)]
        self.proc = None

    def __enter__(self) -> "_Session":
        try:
            self.proc = _spawn(self.args, utf8=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            raise RepositoryError("%s could not be started: %s." % (self.args[0], exc.strerror)) from None
        return self

    def query(self, script: str) -> str:
        try:
            self.proc.stdin.write(script.encode("utf-8"))
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # psql ended (a broken pipe): its message says why
            line = b""
        if not line:
            self.proc.stdin = _closed(self.proc.stdin)
            self.proc.wait()
            raise RepositoryError("A query on the PostgreSQL server (%s) failed: %s."
                                  % (self.server.where(), _first_error(self.proc.stderr.read())))
        return line.decode("utf-8", "replace").strip()

    def __exit__(self, *exc_info) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            _closed(stream)
        self.proc.wait()


def _closed(stream):
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass
    return None


class _Background:
    """A client program running beside the engine's own work; ``wait()`` raises RepositoryError if it failed."""

    def __init__(self, args: list, what: str):
        self.what = what
        try:
            self.proc = _spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as exc:
            raise RepositoryError("%s could not be started: %s." % (args[0], exc.strerror)) from None
        self.errors = []
        self.reader = threading.Thread(target=lambda: self.errors.append(self.proc.stderr.read()), daemon=True)
        self.reader.start()

    def wait(self) -> None:
        self.proc.wait()
        self.reader.join()
        self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise RepositoryError("%s failed: %s." % (self.what, _first_error(b"".join(self.errors))))


def _spawn(args: list, utf8: bool = False, **kwargs) -> subprocess.Popen:
    """Start a client program: an argument list, never a shell.

    ``utf8``: libpq talks UTF-8 (psql, whose output the engine reads); otherwise
    the program uses the database's own encoding, whatever the environment says,
    so pg_dump can read what the database holds.

    Not AnsibleModule.run_command: this engine also runs as the host command,
    where there is no Ansible.
    """
    env = {key: value for key, value in os.environ.items() if key != "PGCLIENTENCODING"}
    if utf8:
        env["PGCLIENTENCODING"] = "UTF8"
    return subprocess.Popen(args, stderr=subprocess.PIPE, env=env, **kwargs)  # pylint: disable=ansible-bad-function


def _call(args: list, stdin: bytes | None = None, stdout=subprocess.PIPE, utf8: bool = False) -> tuple:
    """(returncode, stdout, stderr) of a client program run to its end."""
    with _spawn(args, utf8=utf8, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=stdout) as proc:
        out, err = proc.communicate(stdin)
    return proc.returncode, out, err


def _first_error(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return "no message"
    for line in lines:
        if "error" in line.lower() or "fatal" in line.lower():
            return line.rstrip(".")
    return lines[0].rstrip(".")
