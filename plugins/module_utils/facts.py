# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts a backup records about its repository, and their comparison with a restored copy.

A pure leaf (no I/O).  At backup time each kind records, in the snapshot it
exports, the manifest field ``facts``:

- ``tables``: table name -> row count (``schema.table`` for PostgreSQL, the
  table's name for SQLite), or null when counting was left out;
- ``objects``: the schema objects as sorted texts (``table public.t``,
  ``index public.t_pkey``, ``function public.f(integer)``...).

A restore check (``check_restorable``) reads the same facts from the restored
copy with the same query and compares them here.  The manifest is untrusted
input: ``facts_problem`` says why a ``facts`` field cannot be used.
"""

from __future__ import annotations

from .errors import RestoreCheckFailed

COUNT_MAX = 2 ** 63 - 1
# Objects a restore into a new database has whatever the backup held: PostgreSQL's template0 has the
# schema public even when the original database dropped it.
ALWAYS_THERE = frozenset(("schema public",))


def facts_problem(facts) -> str | None:
    """Why a manifest's ``facts`` cannot be used, or None."""
    if not isinstance(facts, dict):
        return "is not an object"
    tables = facts.get("tables")
    if tables is not None and not (isinstance(tables, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= COUNT_MAX
            for k, v in tables.items())):
        return "has tables that are not a map of names to row counts"
    objects = facts.get("objects")
    if objects is not None and not (isinstance(objects, list) and all(isinstance(o, str) for o in objects)):
        return "has objects that are not a list of texts"
    return None


def compare_facts(recorded, found: dict, source: str) -> list:
    """The names of the comparisons that passed (``row_counts``, ``objects``): those ``recorded`` has.

    ``found``: the same facts read from the restored copy of ``source`` (a backup, named in the
    sentence).  Raises RestoreCheckFailed naming the first difference.
    """
    passed = []
    if not isinstance(recorded, dict) or facts_problem(recorded):
        return passed
    tables = recorded.get("tables")
    if tables is not None:
        have = found.get("tables") or {}
        for table in sorted(tables):
            if table not in have:
                raise RestoreCheckFailed("Table %s, which the backup recorded with %d rows, is missing from the "
                                         "copy restored from %s." % (table, tables[table], source))
            if have[table] != tables[table]:
                raise RestoreCheckFailed("Table %s has %d rows in the copy restored from %s; the backup recorded %d."
                                         % (table, have[table], source, tables[table]))
        extra = sorted(set(have) - set(tables))
        if extra:
            raise RestoreCheckFailed("Table %s is in the copy restored from %s, but the backup recorded no such "
                                     "table." % (extra[0], source))
        passed.append("row_counts")
    objects = recorded.get("objects")
    if objects is not None:
        have = set(found.get("objects") or ())
        missing = sorted(set(objects) - have)
        if missing:
            raise RestoreCheckFailed("The copy restored from %s lacks %s, which the backup recorded%s."
                                     % (source, missing[0], _more(missing)))
        extra = sorted(have - set(objects) - ALWAYS_THERE)
        if extra:
            raise RestoreCheckFailed("The copy restored from %s has %s, which the backup did not record%s."
                                     % (source, extra[0], _more(extra)))
        passed.append("objects")
    return passed


def _more(items: list) -> str:
    return " (and %d more)" % (len(items) - 1) if len(items) > 1 else ""
