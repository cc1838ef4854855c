"""Apply the numbered DDL files in ``schemas/`` once each, in order, recording them in a table.

Every statement is idempotent (``IF NOT EXISTS``), so two collectors starting together against one
ClickHouse server, or a start interrupted half-way, converge on the same schema.
"""

from __future__ import annotations

import re
from pathlib import Path

from collector.store import Store

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version
"""


def migration_files(directory: Path = SCHEMAS_DIR) -> list[tuple[int, str, Path]]:
    files = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match:
            files.append((int(match.group(1)), match.group(2), path))
    return files


def statements(sql: str) -> list[str]:
    """Split a DDL file on semicolons that end a line (the DDL has none inside strings)."""
    without_comments = "\n".join(
        line for line in sql.splitlines() if not line.strip().startswith("--")
    )
    return [
        s.strip() for s in re.split(r";\s*$", without_comments, flags=re.MULTILINE) if s.strip()
    ]


def migrate(store: Store, directory: Path = SCHEMAS_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied now."""
    store.command(MIGRATIONS_TABLE)
    done = {
        int(line)
        for line in store.query("SELECT version FROM schema_migrations", "TSV").decode().split()
        if line.strip()
    }
    applied = []
    for version, name, path in migration_files(directory):
        if version in done:
            continue
        for statement in statements(path.read_text()):
            store.command(statement)
        store.command(f"INSERT INTO schema_migrations (version, name) VALUES ({version}, '{name}')")
        applied.append(f"{version:03d}_{name}")
    return applied
