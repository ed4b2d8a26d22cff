"""The server's schema migrations: numbered SQL files beside this module, applied in order once each.

    NNNN_what_it_does.sql    statements separated by `;`, `--` comments; the file name gives the number
                             and the name recorded in the `_migrations` table ("0010_cardholder_services"
                             -> 10, "cardholder services")

sync_server/db.py applies them (migrate), each in its own transaction. A migration that needs Python
(a data backfill SQL cannot express) adds a function named after its number here, `m0040(conn)`; it
runs right after that file's statements, in the same transaction. Never edit an applied migration:
add the next number. The files are the one source of truth another SQL dialect can follow.

This module reads files and splits statements; it imports nothing of the server, so it can sit below
db.py.
"""
import collections
import importlib.resources
import re
import sqlite3

FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9]+(?:_[a-z0-9]+)*)\.sql$")

Migration = collections.namedtuple("Migration", "number name statements python_step")


def split_statements(script):
    """The statements of a SQL script, each with its comments; `;` inside strings and comments does
    not split (sqlite3.complete_statement decides where a statement ends). ValueError on trailing text
    that is not a complete statement."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = "\n".join(line for line in pending.splitlines() if not line.strip().startswith("--"))
    if leftover.strip():
        raise ValueError("SQL script ends inside a statement (missing ';'?): %r" % leftover.strip()[:80])
    return statements


def load():
    """Every migration, in ascending order of number."""
    found = {}
    for entry in importlib.resources.files(__name__).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = FILE_NAME.match(entry.name)
        if match is None:
            raise ValueError("migration file %s: name it NNNN_words_with_underscores.sql" % entry.name)
        number = int(match.group(1))
        if number in found:
            raise ValueError("two migrations numbered %d" % number)
        found[number] = Migration(number, match.group(2).replace("_", " "),
                                  split_statements(entry.read_text(encoding="utf-8")),
                                  globals().get("m%04d" % number))
    steps = {int(name[1:]) for name in globals() if re.fullmatch(r"m\d{4}", name)}
    assert steps <= set(found), "Python migration steps without their SQL file: %s" % sorted(steps - set(found))
    return [found[number] for number in sorted(found)]
