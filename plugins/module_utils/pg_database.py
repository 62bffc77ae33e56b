# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a PostgreSQL backup records beside its ``pg_dump`` archive, and how an import gives it back.

A pure leaf (no I/O): SQL text, and the reading and checking of what it returns.

``pg_dump`` without ``--create`` leaves out the database itself: owner, ACL,
``ALTER DATABASE ... SET``, ``ALTER ROLE ... IN DATABASE ... SET``, comment,
connection limit, encoding and locale.  With ``--create`` it would restore under
the original name, which defeats restore-aside-then-swap and drills, and under
``disconnect`` it would carry the limit 0.  So the export reads these
properties in the dump's own snapshot (``FACTS_SQL``) and records them in the
manifest (``database``); the import creates the scratch database with the
recorded encoding and locale and applies the rest (``APPLY_SQL``) before the
swap.  The same query records the facts a restore check compares: per-table
row counts and the schema objects.

Names never become SQL text here: the server builds every statement with
``format('%I', ...)`` / ``%L`` from psql variables (``\\gexec``).
"""

from __future__ import annotations

import json
import re

# The schemas that hold no user objects.
_SYSTEM = ("n.nspname IN ('pg_catalog', 'information_schema') OR n.nspname LIKE 'pg\\_toast%' "
           "OR n.nspname LIKE 'pg\\_temp\\_%'")
# An object that belongs to an extension (restored by CREATE EXTENSION, not listed on its own).
_MEMBER = "EXISTS (SELECT 1 FROM pg_depend e WHERE e.deptype = 'e' AND e.classid = %s AND e.objid = %s)"

# The schema objects of the connected database, one text each, sorted.  The same query runs at backup
# time (in the dump's snapshot) and on a restored copy, so the two lists compare.
OBJECTS_SQL = """
SELECT coalesce(json_agg(o ORDER BY o), '[]'::json) FROM (
 SELECT 'schema ' || quote_ident(n.nspname) AS o FROM pg_namespace n
  WHERE NOT (%(system)s) AND NOT %(nsp_member)s
 UNION ALL
 SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
   WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index' WHEN 'I' THEN 'index'
   WHEN 'f' THEN 'foreign table' ELSE 'type' END || ' ' || format('%%I.%%I', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'I', 'f', 'c') AND c.relpersistence <> 't'
   AND NOT (%(system)s) AND NOT %(rel_member)s
 UNION ALL
 SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END || ' '
   || format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE NOT (%(system)s) AND NOT %(proc_member)s
 UNION ALL
 SELECT 'type ' || format('%%I.%%I', n.nspname, t.typname) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typtype IN ('d', 'e', 'r', 'm') AND NOT (%(system)s) AND NOT %(type_member)s
 UNION ALL
 SELECT 'constraint ' || format('%%I on %%I.%%I', k.conname, n.nspname, coalesce(c.relname, t.typname))
  FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
  LEFT JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_type t ON t.oid = k.contypid
  WHERE NOT (%(system)s) AND NOT %(rel_of_con_member)s
 UNION ALL
 SELECT 'trigger ' || format('%%I on %%I.%%I', g.tgname, n.nspname, c.relname)
  FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE NOT g.tgisinternal AND NOT (%(system)s)
 UNION ALL
 SELECT 'policy ' || format('%%I on %%I.%%I', y.polname, n.nspname, c.relname)
  FROM pg_policy y JOIN pg_class c ON c.oid = y.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 UNION ALL
 SELECT 'rule ' || format('%%I on %%I.%%I', r.rulename, n.nspname, c.relname)
  FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE r.rulename <> '_RETURN' AND NOT (%(system)s)
 UNION ALL
 SELECT 'extension ' || quote_ident(x.extname) FROM pg_extension x
) objects""" % {
    "system": _SYSTEM,
    "nsp_member": _MEMBER % ("'pg_namespace'::regclass", "n.oid"),
    "rel_member": _MEMBER % ("'pg_class'::regclass", "c.oid"),
    "proc_member": _MEMBER % ("'pg_proc'::regclass", "p.oid"),
    "type_member": _MEMBER % ("'pg_type'::regclass", "t.oid"),
    "rel_of_con_member": _MEMBER % ("'pg_class'::regclass", "coalesce(c.oid, 0)"),
}

# Row counts of the ordinary tables (partitions count, their parents do not), each by ``count(*)`` through
# query_to_xml: one statement, in the transaction's own snapshot.
COUNTS_SQL = """
SELECT coalesce(json_object_agg(format('%I.%I', n.nspname, c.relname),
  (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname),
   false, true, '')))[1]::text::bigint), '{}'::json)
 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND NOT (""" + _SYSTEM + ") AND NOT " + \
    _MEMBER % ("'pg_class'::regclass", "c.oid")

# The database's own properties; ``roles``: every role the database's objects name (owners, grantees,
# grantors, policies: pg_shdepend), its owner, and the roles of its settings.
DATABASE_SQL = """
SELECT json_build_object(
 'owner', pg_get_userbyid(d.datdba),
 'encoding', pg_encoding_to_char(d.encoding),
 'collate', d.datcollate, 'ctype', d.datctype,
 'locale_provider', %(provider)s,
 'icu_locale', %(icu)s,
 'connection_limit', d.datconnlimit,
 'comment', shobj_description(d.oid, 'pg_database'),
 'acl', d.datacl::text[],
 'tablespace', (SELECT spcname FROM pg_tablespace WHERE oid = d.dattablespace),
 'settings', (SELECT coalesce(json_agg(json_build_object(
     'role', CASE s.setrole WHEN 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, 'config', s.setconfig)
     ORDER BY s.setrole), '[]'::json)
   FROM pg_db_role_setting s WHERE s.setdatabase = d.oid),
 'roles', (SELECT coalesce(json_agg(DISTINCT r.rolname ORDER BY r.rolname), '[]'::json) FROM pg_roles r
   WHERE r.oid = d.datdba
    OR r.oid IN (SELECT refobjid FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass
                 AND (dbid = d.oid OR (classid = 'pg_database'::regclass AND objid = d.oid)))
    OR r.oid IN (SELECT a.grantee FROM aclexplode(d.datacl) a UNION SELECT a.grantor FROM aclexplode(d.datacl) a)
    OR r.oid IN (SELECT setrole FROM pg_db_role_setting WHERE setdatabase = d.oid)))
 FROM pg_database d WHERE d.datname = current_database()"""


def database_sql(server_version_num: int) -> str:
    """DATABASE_SQL for a server of that version: the locale provider came with 15, ``datlocale`` with 17."""
    if server_version_num >= 170000:
        columns = {"provider": "CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END",
                   "icu": "d.datlocale"}
    elif server_version_num >= 150000:
        columns = {"provider": "CASE d.datlocprovider WHEN 'i' THEN 'icu' ELSE 'libc' END", "icu": "d.daticulocale"}
    else:
        columns = {"provider": "'libc'", "icu": "NULL::text"}
    return DATABASE_SQL % columns


def facts_sql(server_version_num: int, counts: bool = True) -> str:
    """One statement: the hex of {"database": ..., "tables": ..., "objects": ...} as JSON (UTF-8)."""
    tables = "(%s)" % COUNTS_SQL if counts else "NULL"
    return ("SELECT encode(convert_to(json_build_object('database', (%s), 'tables', %s, 'objects', (%s))::text,"
            " 'UTF8'), 'hex');\n" % (database_sql(server_version_num), tables, OBJECTS_SQL))


def check_sql() -> str:
    """What a restore check reads from the restored copy: the same tables and objects as ``facts_sql``."""
    return ("SELECT encode(convert_to(json_build_object('tables', (%s), 'objects', (%s))::text, 'UTF8'), 'hex');\n"
            % (COUNTS_SQL, OBJECTS_SQL))


def read_hexed_json(text: str) -> dict:
    return json.loads(bytes.fromhex(text.strip()).decode("utf-8"))


# -- giving the properties back -------------------------------------------------------------------

# Run in the maintenance database with psql variables ``db`` (the restored copy's name), ``owner``,
# ``comment`` (empty: none; ``has_comment`` says), ``limit``, ``acl`` (a text array literal, or empty for the
# default ACL) and ``settings`` (JSON from ``settings_for_sql``).  The owner comes first: ALTER OWNER
# rewrites the ACL.  A GRANT by the owner is made by the superuser (PostgreSQL records the owner as its
# grantor); one by another role is made as that role, as pg_dump does.
APPLY_SQL = r"""
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'owner') \gexec
SELECT format('ALTER DATABASE %I CONNECTION LIMIT %s', :'db', (:'limit')::int) \gexec
SELECT format('COMMENT ON DATABASE %I IS %L', :'db', :'comment') WHERE :'has_comment' = 'yes' \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') WHERE :'acl' <> '' \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM %I', :'db', :'owner') WHERE :'acl' <> '' \gexec
WITH o AS (SELECT oid FROM pg_roles WHERE rolname = :'owner'),
 a AS (SELECT x.*, row_number() OVER () AS n FROM aclexplode(nullif(:'acl', '')::aclitem[]) x)
SELECT s FROM (
 SELECT a.n, 1 AS step, CASE WHEN a.grantor = o.oid THEN NULL
   ELSE format('SET SESSION AUTHORIZATION %I', pg_get_userbyid(a.grantor)) END AS s FROM a, o
 UNION ALL
 SELECT a.n, 2, format('GRANT %s ON DATABASE %I TO %s%s', a.privilege_type, :'db',
   CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
   CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) FROM a
 UNION ALL
 SELECT a.n, 3, CASE WHEN a.grantor = o.oid THEN NULL ELSE 'RESET SESSION AUTHORIZATION' END FROM a, o
) steps WHERE s IS NOT NULL ORDER BY n, step \gexec
SELECT CASE WHEN s->>'role' IS NULL
  THEN format('ALTER DATABASE %I SET %I TO %s', :'db', s->>'name', v)
  ELSE format('ALTER ROLE %I IN DATABASE %I SET %I TO %s', s->>'role', :'db', s->>'name', v) END
 FROM json_array_elements((:'settings')::json) s,
  LATERAL (SELECT string_agg(quote_literal(e), ', ' ORDER BY i) AS v
           FROM json_array_elements_text(s->'values') WITH ORDINALITY AS l(e, i)) vals \gexec
"""

# Settings PostgreSQL keeps as a list of quoted elements (GUC_LIST_QUOTE): set element by element.
_LIST_QUOTE = frozenset(("search_path", "temp_tablespaces", "session_preload_libraries", "shared_preload_libraries",
                         "local_preload_libraries", "unix_socket_directories"))


def split_guc_list(value: str) -> list:
    """The elements of a list setting as PostgreSQL stores it (``"$user", public``), unquoted."""
    items, i, text = [], 0, value
    while i < len(text):
        while i < len(text) and text[i] in " \t":
            i += 1
        if i >= len(text):
            break
        if text[i] == '"':
            i += 1
            item = []
            while i < len(text):
                if text[i] == '"':
                    if text[i + 1:i + 2] == '"':
                        item.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                item.append(text[i])
                i += 1
            items.append("".join(item))
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            items.append(text[i:end].strip())
            i = end
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
    return items


def settings_for_sql(settings: list) -> str:
    """JSON for APPLY_SQL's ``settings``: one entry per ``name=value`` of each recorded setconfig."""
    out = []
    for entry in settings or []:
        for item in entry.get("config") or []:
            name, dummy, value = item.partition("=")
            values = split_guc_list(value) if name.lower() in _LIST_QUOTE else [value]
            out.append({"role": entry.get("role"), "name": name, "values": values})
    return json.dumps(out)


def acl_literal(acl) -> str:
    """The recorded ACL (a list of aclitem texts, or None for the default) as an array literal ('' = default)."""
    if acl is None:
        return ""
    return "{" + ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in acl) + "}"


def check_properties(props) -> str | None:
    """Why a manifest's ``database`` record cannot be used (it is untrusted input), or None."""
    if not isinstance(props, dict):
        return "is not an object"
    for key in ("owner", "encoding", "collate", "ctype"):
        if not isinstance(props.get(key), str) or not props[key] or "\0" in props[key]:
            return "has no text %r" % key
    if props.get("locale_provider", "libc") not in ("libc", "icu"):
        return "has locale_provider %r (libc or icu is allowed)" % props.get("locale_provider")
    limit = props.get("connection_limit", -1)
    if not isinstance(limit, int) or isinstance(limit, bool) or not -1 <= limit <= 2 ** 31 - 1:
        return "has connection_limit %r, not a whole number from -1" % (limit,)
    for key in ("comment", "icu_locale", "tablespace"):
        if props.get(key) is not None and not isinstance(props[key], str):
            return "has %s %r, not text" % (key, props[key])
    if props.get("acl") is not None and not _texts(props["acl"]):
        return "has an acl that is not a list of texts"
    if not _texts(props.get("roles", [])):
        return "has roles that are not a list of names"
    settings = props.get("settings", [])
    if not isinstance(settings, list) or not all(
            isinstance(s, dict) and (s.get("role") is None or isinstance(s["role"], str))
            and (s.get("config") is None or _texts(s["config"])) for s in settings):
        return "has settings that are not a list of {role, config}"
    return None


def _texts(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and "\0" not in v for v in value)


# -- roles from the saved globals ------------------------------------------------------------------

_ROLE_WORDS = frozenset(("SUPERUSER", "NOSUPERUSER", "INHERIT", "NOINHERIT", "CREATEROLE", "NOCREATEROLE",
                         "CREATEDB", "NOCREATEDB", "LOGIN", "NOLOGIN", "REPLICATION", "NOREPLICATION",
                         "BYPASSRLS", "NOBYPASSRLS"))
_IDENT = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*')


def _ident(text: str, pos: int) -> tuple:
    """(name, end) of the SQL identifier at ``pos`` (as pg_dumpall writes one), or (None, pos)."""
    match = _IDENT.match(text, pos)
    if not match:
        return None, pos
    token = match.group(0)
    if token.startswith('"'):
        return token[1:-1].replace('""', '"'), match.end()
    return token.lower(), match.end()


def roles_in_globals(script: str) -> dict:
    """Role name -> {"options": [...], "member_of": [...]} from a ``pg_dumpall --globals-only`` script.

    Only what is safe to give back is read: the attribute words of ``ALTER ROLE ... WITH`` (with
    ``CONNECTION LIMIT n`` and ``VALID UNTIL '...'``; never a password: the script has none) and role
    memberships (``GRANT role TO member``).  Nothing of the script is run as it is.
    """
    roles = {}
    for line in script.splitlines():
        if line.startswith("CREATE ROLE "):
            name, dummy = _ident(line, len("CREATE ROLE "))
            if name is not None:
                roles.setdefault(name, {"options": [], "member_of": []})
        elif line.startswith("ALTER ROLE "):
            name, end = _ident(line, len("ALTER ROLE "))
            if name in roles and line.startswith(" WITH ", end):
                roles[name]["options"] = _role_options(line[end + len(" WITH "):].rstrip().rstrip(";"))
        elif line.startswith("GRANT "):
            group, end = _ident(line, len("GRANT "))
            if group is not None and line.startswith(" TO ", end):
                member, end = _ident(line, end + len(" TO "))
                if member in roles:
                    roles[member]["member_of"].append(group)
    return roles


def _role_options(text: str) -> list:
    words, out, i = text.split(" "), [], 0
    while i < len(words):
        word = words[i]
        if word in _ROLE_WORDS:
            out.append(word)
        elif word == "CONNECTION" and i + 2 < len(words) and words[i + 1] == "LIMIT" \
                and re.fullmatch(r"-?\d+", words[i + 2]):
            out.append("CONNECTION LIMIT %d" % int(words[i + 2]))
            i += 2
        elif word == "VALID" and i + 2 < len(words) and words[i + 1] == "UNTIL":
            rest = " ".join(words[i + 2:])
            match = re.match(r"'([0-9A-Za-z:+ .-]*)'", rest)
            if match:
                out.append("VALID UNTIL '%s'" % match.group(1))
                i += 2 + len(match.group(0).split(" ")) - 1
        i += 1
    return out


# Creates the roles in ``roles`` (JSON list of {"name", "options", "member_of"}) that do not exist, with no
# password; memberships only for the roles it creates, in groups that exist.  Existing roles are untouched.
CREATE_ROLES_SQL = r"""
SELECT format('CREATE ROLE %I WITH %s', r->>'name', coalesce(nullif((SELECT string_agg(o, ' ')
   FROM json_array_elements_text(r->'options') o), ''), 'NOLOGIN'))
 FROM json_array_elements((:'roles')::json) r WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r->>'name')
\gexec
SELECT format('GRANT %I TO %I', g, r->>'name') FROM json_array_elements((:'roles')::json) r,
  json_array_elements_text(r->'member_of') g WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g)
\gexec
"""


# -- versions -------------------------------------------------------------------------------------

def tool_version(output: str) -> str | None:
    """``15.14`` from ``pg_dump (PostgreSQL) 15.14 (Debian ...)``; None when there is none."""
    match = re.search(r"\)\s+(\d+(?:\.\d+)*)", output) or re.search(r"(\d+(?:\.\d+)+)", output)
    return match.group(1) if match else None


def major(version: str) -> tuple:
    """The major release: (15,) for 15.14, (9, 6) for 9.6.24.  The archive format changes only between them."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] or [0]
    return tuple(parts[:1]) if parts[0] >= 10 else tuple(parts[:2])
