"""The SQL surfaces: the ClickHouse-compatible SQL port (``port``) and the read-only gate every
statement from outside passes (``gate``), also used by ``POST /v1/sql``."""
