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
import os
import shutil
import subprocess
from contextlib import contextmanager

from .errors import BackupError, FileError, RepositoryError
from .kinds import RepositoryServer, register
from .layout import scratch_folder
from .settings import Option, check_connection_text, check_whole

MAGIC = b"PGDMP"
MAINTENANCE_DB = "postgres"
APPLICATION = "repobackup"  # application_name of every session the engine opens
# High 32 bits of the advisory lock key that guards one database's connection limit ("rbup").
DISCONNECT_LOCK = 0x72627570
ASIDE_PREFIX = ".repobackup-"
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
            self._dump(name, target)
            return {"sessions_ended": 0}
        with self.limit_guard(name):  # no other run reads or changes the limit meanwhile
            previous = self.connection_limit(name)
            record = {"kind": self.kind, "action": "connection_limit", "repository": name,
                      "connection_limit": previous}
            if self.pending is not None:
                self.pending.write(name, record)
            self.set_connection_limit(name, 0)
            try:
                ended = self.terminate_sessions(name)
                self._dump(name, target)
            finally:
                self.set_connection_limit(name, previous)  # raises if the server is gone: the record stays
                if self.pending is not None:
                    self.pending.clear(name)
        return {"sessions_ended": ended}

    def _dump(self, name: str, target: str) -> None:
        self._run([tool("pg_dump"), "--format=custom", "--file=" + target, "--dbname=" + self.conninfo(name)],
                  "pg_dump of database %r" % name)
        try:
            self.verify_file(target)
        except BackupError as exc:
            raise RepositoryError("pg_dump of database %r reported success but wrote no usable archive: %s"
                                  % (name, str(exc))) from None

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
            self._dump(name, copy)
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
        returncode, dummy, err = _call([tool("pg_restore"), "--list", path], stdout=subprocess.DEVNULL)
        if returncode != 0:
            raise FileError("", path, " fails pg_restore --list: %s." % _first_error(err))

    def restore(self, data_file: str, name: str) -> None:
        """Restore into a scratch database; swap names only when pg_restore completed."""
        self.verify_file(data_file)
        scratch, old = aside_names(name)
        for leftover in (scratch, old):
            self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping a leftover", name=leftover)
        live = self.sql("SELECT %s FROM pg_database WHERE datname = :'name';" % _hexed("pg_get_userbyid(datdba)"),
                        name=name)
        owner = _text(live[0][0]) if live else None
        self._restore_into(scratch, data_file, owner, "for %r (the repository is unchanged)" % name)
        if live:
            try:
                with self.limit_guard(name):  # not while a disconnect keeps the live database at 0
                    self.set_connection_limit(scratch, self.connection_limit(name))
                    self._swap(name, scratch, old)
            except RepositoryError:
                self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping the scratch",
                         name=scratch)
                raise
            self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping the replaced", name=old)
        else:
            self.sql("ALTER DATABASE :\"scratch\" RENAME TO :\"name\";", what="Publishing the restore",
                     scratch=scratch, name=name)

    def _restore_into(self, scratch: str, data_file: str, owner: str | None, why: str) -> None:
        """Create database ``scratch`` from template0 and pg_restore into it in one transaction; dropped on failure."""
        create = "CREATE DATABASE :\"scratch\" TEMPLATE template0%s;" % (" OWNER :\"owner\"" if owner else "")
        self.sql(create, what="Creating the scratch database", scratch=scratch,
                 **({"owner": owner} if owner else {}))
        try:
            self._run([tool("pg_restore"), "--exit-on-error", "--single-transaction",
                       "--dbname=" + self.conninfo(scratch), data_file], "pg_restore into a scratch database " + why)
        except RepositoryError:
            self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping the scratch", name=scratch)
            raise

    @contextmanager
    def restored_in_scratch(self, data_file: str):
        """The backup restored into a scratch database no client knows (never listed), dropped afterwards."""
        self.verify_file(data_file)
        scratch = ASIDE_PREFIX + "scratch-%d-%s" % (os.getpid(), hashlib.sha256(data_file.encode()).hexdigest()[:12])
        self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping a leftover", name=scratch)
        self._restore_into(scratch, data_file, None, "for a check")
        try:
            yield scratch
        finally:
            self.sql("DROP DATABASE IF EXISTS :\"name\" WITH (FORCE);", what="Dropping the scratch", name=scratch)

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
