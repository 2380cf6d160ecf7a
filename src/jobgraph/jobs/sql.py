"""The seed's demo job: run `--query`, append its rows to `--result_table`, like the tutorial image.

The tutorial image runs a Snowflake query and saves the result as a table. Here the database is a
local SQLite file (`--database`, default `results.db`), the table is created on first use with the
query's column names, and Snowflake's `current_time()`-style calls are accepted. Without
`--result_table` the query is only executed (handy for the seed's failure simulation).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,254}\Z")
_SNOWFLAKE_NOW = re.compile(r"\b(current_(?:time|date|timestamp))\s*\(\s*\)", re.IGNORECASE)


def quote(name: str) -> str:
    """A double-quoted SQL identifier (identifiers cannot be bound as parameters)."""
    return '"' + name.replace('"', '""') + '"'


def run(query: str, result_table: str | None, database: str) -> int:
    """Run the query; append its rows to the result table, creating the table on first use."""
    if result_table is not None and not _IDENTIFIER.match(result_table):
        print(f"error: --result_table {result_table!r} is not a valid table name", file=sys.stderr)
        return 2
    connection = sqlite3.connect(database, timeout=30)
    try:
        with connection:
            cursor = connection.execute(_SNOWFLAKE_NOW.sub(r"\1", query))
            rows = cursor.fetchall()
            if result_table is None:
                for row in rows:
                    print(*row, sep="\t")
                return 0
            columns = [quote(d[0]) for d in cursor.description or ()]
            connection.execute(f"CREATE TABLE IF NOT EXISTS {quote(result_table)} ({', '.join(columns)})")
            marks = ", ".join("?" for _ in columns)
            connection.executemany(
                f"INSERT INTO {quote(result_table)} ({', '.join(columns)}) VALUES ({marks})", rows
            )
    except sqlite3.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(f"{len(rows)} row(s) appended to {result_table}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the tutorial image's arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m jobgraph.jobs.sql", description=__doc__)
    parser.add_argument("--query", required=True)
    parser.add_argument("--result_table")
    parser.add_argument("--database", default="results.db")
    args = parser.parse_args(argv)
    return run(args.query, args.result_table, args.database)


if __name__ == "__main__":
    sys.exit(main())
