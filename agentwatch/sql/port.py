"""ClickHouse's HTTP interface (default port 8123) in front of the store.

For curl, clickhouse-connect, Grafana, and another agentwatch collector that uses this one as its
ClickHouse (``clickhouse_url``). It speaks the part of ClickHouse's HTTP interface those clients
use: a query by ``GET /?query=``, as the POST body, or as ``POST /?query=<head>`` with the rest
(INSERT data) in the body; ``database``, ``default_format``, ``param_<name>``, ``query_id`` and
ClickHouse settings as URL parameters; the ``X-ClickHouse-*`` response headers; errors as
``Code: N. DB::Exception: …`` with ``X-ClickHouse-Exception-Code`` and ClickHouse's HTTP status.

What it must not do:
- write while the collector is read-only (the default): every statement then goes through
  ``sql_gate.run_read_only`` (a session locked by ClickHouse at readonly = 1, allow-listed
  settings and formats, resource limits); as in ClickHouse, GET and ``readonly=1`` are read-only
  as well;
- let one client's statement touch another's: each runs in a session of its own (a fresh chDB
  connection), on the SQL pool (``collector.run_sql``), never on the store thread that ingestion
  and ``/healthz`` use; a statement whose client went away is cancelled (KILL QUERY);
- block the event loop: every store call runs on a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import uuid

import orjson
from aiohttp import web

from agentwatch.sql.gate import (
    READING_KEYWORDS,
    ReadOnlyViolation,
    new_tag,
    run_read_only,
)
from collector.auth import READER, SQL, Principal
from collector.store import StoreError, StoreUnavailable

log = logging.getLogger("agentwatch.sql")

MAX_INSERT_BODY_BYTES = 1 << 30  # INSERT bodies (writes on) can be large
SERVER_NAME = "agentwatch"

# The ClickHouse error codes raised here, by name, for the "(NAME)" at the end of a message.
SYNTAX_ERROR, BAD_ARGUMENTS, NOT_IMPLEMENTED, UNKNOWN_FORMAT, UNKNOWN_DATABASE = 62, 36, 48, 73, 81
READONLY, AUTHENTICATION_FAILED, UNKNOWN_EXCEPTION = 164, 516, 1002
TOO_MANY_SIMULTANEOUS_QUERIES, QUERY_TOO_LARGE = 202, 1003
_NAMES = {
    SYNTAX_ERROR: "SYNTAX_ERROR",
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
    UNKNOWN_DATABASE: "UNKNOWN_DATABASE",
    READONLY: "READONLY",
    TOO_MANY_SIMULTANEOUS_QUERIES: "TOO_MANY_SIMULTANEOUS_QUERIES",
    QUERY_TOO_LARGE: "QUERY_TOO_LARGE",
    AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    UNKNOWN_EXCEPTION: "UNKNOWN_EXCEPTION",
}
# ClickHouse's HTTP status for each code that is not 500 (its exceptionCodeToHTTPStatus.cpp):
# parse errors 400, unknown table/database/setting… 404, auth 403. READONLY is 500 there too.
_STATUS_OF_CODES = {
    400: (6, 8, 15, 25, 26, 27, 36, 37, 38, 41, 44, 53, 62, 72, 117, 123, 167, 168, 223, 321, 376,
          427, 441, 675, 676),
    401: (194,), 429: (202,),
    403: (192, 193, 497, 512, 516),
    404: (46, 47, 50, 56, 60, 63, 73, 78, 81, 115, 152, 336, 511),
    408: (159,), 411: (381,), 413: (229, 1003), 415: (779,), 501: (48,), 503: (76, 209, 439),
}  # fmt: skip
HTTP_STATUS = {code: status for status, codes in _STATUS_OF_CODES.items() for code in codes}

# URL parameters of the HTTP interface itself, never passed on as settings. ``readonly`` is handled
# here: passed on, it could lift the gate's readonly = 2.
_HTTP_PARAMS = {
    "query", "database", "default_format", "format", "query_id", "session_id", "session_timeout",
    "session_check", "user", "password", "quota_key", "readonly", "compress", "decompress",
    "buffer_size", "wait_end_of_query", "client_protocol_version", "role",
    "enable_http_compression", "send_progress_in_http_headers", "add_http_cors_header",
    "cancel_http_readonly_queries_on_client_close",
}  # fmt: skip
_READ_ONLY = (
    "the SQL endpoint is read-only: INSERT statements are refused; "
    "start the collector with sql_readonly: false to write"
)

# INSERT INTO <target> FORMAT <name>, then the data after blanks and at most one newline (as in
# ClickHouse's parser, so binary data that starts with whitespace survives).
_INSERT_HEAD = re.compile(rb"\s*INSERT\s+INTO\s+(.+?)\s+FORMAT\s+(\w+)[ \t\f]*\r?\n?", re.I | re.S)
_NOT_A_TARGET = re.compile(rb"\b(?:VALUES|SELECT|WITH)\b", re.I)  # those INSERTs run as text
_FORMAT_AT_END = re.compile(r"\sFORMAT\s+(\w+)\s*;?\s*$", re.I)
_FIRST_WORD = re.compile(r"(?:\s|\(|--[^\n]*|/\*.*?\*/)*(\w*)", re.S)
# chDB's Python API reads these "formats" as "return a Python object"; they are not ClickHouse's.
_PYTHON_FORMATS = ("dataframe", "datastore", "arrowtable")
_BINARY_FORMATS = ("native", "rowbinary", "arrow", "parquet", "orc", "avro", "protobuf", "msgpack",
                   "capnproto", "bson", "npy")  # fmt: skip


class ClickHouseError(Exception):
    """An error to answer as ClickHouse would; its code picks the HTTP status."""

    def __init__(self, code: int, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or HTTP_STATUS.get(code, 500)


def build_sql_app(collector) -> web.Application:
    """The app; run it with ``handler_cancellation=True`` so a client that goes away cancels its
    query (``collector._serve`` does)."""
    endpoint = _SqlEndpoint(collector)
    config = collector.config
    # aiohttp counts the body after undoing Content-Encoding: a gzip bomb stops at this size
    max_body = config.sql_max_query_kib * 1024 if config.sql_readonly else MAX_INSERT_BODY_BYTES
    app = web.Application(client_max_size=max_body)
    app.router.add_get("/ping", endpoint.ping)
    app.router.add_get("/", endpoint.handle)
    app.router.add_post("/", endpoint.handle)
    return app


class _SqlEndpoint:
    def __init__(self, collector) -> None:
        self.collector = collector
        self._server: tuple[str, frozenset[str]] | None = None  # timezone, setting names

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def handle(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        headers = {
            "X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Server-Display-Name": SERVER_NAME,
        }
        try:
            if request.method != "POST" and "query" not in params:
                return web.Response(text="Ok.\n")  # ClickHouse's answer to a bare GET /
            principal = self._authenticate(request, params)  # before reading any body
            store_database = getattr(self.collector.store, "database", "default")
            database = params.get("database") or request.headers.get("X-ClickHouse-Database")
            if database and database != store_database:
                raise ClickHouseError(UNKNOWN_DATABASE, f"Database {database} does not exist")
            if params.get("compress") == "1" or params.get("decompress") == "1":
                raise ClickHouseError(
                    NOT_IMPLEMENTED,
                    "compress=1 and decompress=1 (ClickHouse's own block compression) are not "
                    "supported; use HTTP compression (enable_http_compression=1, Content-Encoding)",
                )
            try:
                sql = await _read_query(request, params)
            except web.HTTPRequestEntityTooLarge:
                raise ClickHouseError(
                    QUERY_TOO_LARGE,
                    f"the request body is larger than {request.client_max_size} bytes after"
                    " decompression (sql_max_query_kib while sql_readonly)",
                ) from None
            timezone, setting_names = await self._server_info()
            headers["X-ClickHouse-Timezone"] = params.get("session_timezone") or timezone
            output, summary, fmt = await self._execute(
                request, params, sql, setting_names, principal
            )
        except ClickHouseError as exc:
            return _error(exc, headers)
        except ReadOnlyViolation as exc:
            return _error(ClickHouseError(READONLY, str(exc)), headers)
        except StoreError as exc:
            return _error(ClickHouseError(exc.code or UNKNOWN_EXCEPTION, str(exc)), headers)
        except StoreUnavailable as exc:  # 503: clients retry it, as for a server that is starting
            return _error(ClickHouseError(UNKNOWN_EXCEPTION, str(exc), 503), headers)
        except Exception as exc:  # a bug here: log it, and still answer in ClickHouse's shape
            log.exception("SQL endpoint failed")
            return _error(ClickHouseError(UNKNOWN_EXCEPTION, f"agentwatch: {exc!r}"), headers)
        if fmt is not None:  # only results name a format; clickhouse-connect's command() needs that
            headers["X-ClickHouse-Format"] = fmt
            headers["Content-Type"] = _content_type(fmt)
        summary = {name: str(value) for name, value in summary.items()}  # strings, as ClickHouse's
        headers["X-ClickHouse-Summary"] = orjson.dumps(summary).decode()
        response = web.Response(body=output, headers=headers)
        if params.get("enable_http_compression") in ("1", "true"):
            response.enable_compression()  # gzip or deflate, whichever Accept-Encoding names
        return response

    def _authenticate(self, request: web.Request, params: dict[str, str]) -> Principal:
        """Who asks (``collector.auth``): a token that opens the SQL port (api_token, sql_token
        or a tenant's read_token) as the password: Basic auth, X-ClickHouse-Key, a Bearer token
        or ?password=. Open while none of them is configured."""
        user = request.headers.get("X-ClickHouse-User") or params.get("user") or "default"
        # Any one may carry it: clickhouse-connect sends "Basic default:" next to X-ClickHouse-Key.
        passwords = [request.headers.get("X-ClickHouse-Key"), params.get("password")]
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credentials).decode().partition(":")
                passwords.append(password)
            except (binascii.Error, UnicodeDecodeError):
                pass
        elif scheme.lower() == "bearer":  # clickhouse-connect's access_token
            passwords.append(credentials)
        passwords = [p for p in passwords if p] or [None]
        tokens = self.collector.tokens
        found = [tokens.check(p, (SQL, READER)) for p in passwords]  # each, in constant time
        for principal in found:
            if isinstance(principal, Principal):
                return principal
        given = passwords != [None]
        raise ClickHouseError(
            AUTHENTICATION_FAILED,
            f"{user}: Authentication failed: {found[0]}; send the collector's sql_token (or a"
            " tenant's read_token) as the password (HTTP basic auth with any user, the"
            " X-ClickHouse-Key header or ?password=)",
            403 if given else 401,  # 403 as ClickHouse for a wrong one; 401 asks for one
        )

    async def _server_info(self) -> tuple[str, frozenset[str]]:
        if self._server is None:
            self._server = await self.collector.run_store(_load_server_info, self.collector.store)
        return self._server

    async def _execute(self, request, params, sql: bytes, setting_names, principal) -> tuple:
        """(output, summary counters, output format or None for a statement without a result)."""
        config, store = self.collector.config, self.collector.store
        if not sql.strip():
            raise ClickHouseError(SYNTAX_ERROR, "Empty query")
        refusal = None  # why this request may not write even when the collector may (as ClickHouse)
        if principal.tenant is not None:
            refusal = f"a tenant's read_token ({principal.tenant}) reads only"
        elif request.method != "POST":
            refusal = "method GET implies readonly; use POST to write"
        elif params.get("readonly", "0") not in ("0", ""):
            refusal = f"the request set readonly={params['readonly']}"
        if refusal:
            refusal = f"Cannot execute query in readonly mode: {refusal}"

        settings = {
            name: value
            for name, value in params.items()
            if name in setting_names and name not in _HTTP_PARAMS and not name.startswith("http_")
        }
        insert = _insert_with_data(sql)
        if insert is not None:
            if config.sql_readonly or refusal:
                raise ReadOnlyViolation(_READ_ONLY if config.sql_readonly else refusal)
            summary = await self._run(_insert, store, settings, *insert)
            return b"", summary or {}, None

        default_format = params.get("default_format") or "TabSeparated"
        if not re.fullmatch(r"\w+", default_format) or default_format.lower() in _PYTHON_FORMATS:
            raise ClickHouseError(UNKNOWN_FORMAT, f"Unknown format {default_format}")
        try:
            text = sql.decode()
        except UnicodeDecodeError:
            raise ClickHouseError(BAD_ARGUMENTS, "the query is not valid UTF-8") from None
        query_params = {  # clients send them escaped as TSV fields; the store takes plain values
            name.removeprefix("param_"): _unescape(value)
            for name, value in params.items()
            if name.startswith("param_")
        }
        keyword = _FIRST_WORD.match(text).group(1).upper()
        if config.sql_readonly or (refusal and keyword in READING_KEYWORDS):
            return await self._run(
                run_read_only,
                store,
                text,
                default_format,
                query_params,
                settings,
                config.sql_limits,
                principal.tenant,
            )
        if refusal:
            raise ReadOnlyViolation(refusal)
        if keyword in ("SET", "USE"):
            raise ClickHouseError(
                NOT_IMPLEMENTED,
                f"{keyword} is not supported: there are no sessions (pass settings as URL"
                " parameters; use database default)",
            )
        # Writes on (sql_readonly: false) and a POST: the client has the store's full power, as
        # ClickHouse's default user; its statement still runs in a session of its own.
        output, summary = await self._run(
            _statement, store, settings, text, default_format, query_params
        )
        if keyword not in READING_KEYWORDS:
            return output, summary, None  # DDL, INSERT … VALUES / SELECT: no result
        match = _FORMAT_AT_END.search(text)
        return output, summary, match.group(1) if match else default_format

    async def _run(self, fn, *args) -> tuple:
        """``fn(*args, tag=…)`` on the SQL pool; cancelled (KILL QUERY) if the client goes away."""
        tag = new_tag()
        try:
            return await self.collector.run_sql(fn, *args, tag)
        except asyncio.CancelledError:
            self.collector.cancel_sql(tag)
            raise


def _insert(store, settings, target, fmt, blocks, tag) -> dict:
    """An INSERT with data (writes on): the client's settings apply, in a session of its own."""
    with store.session({**settings, "log_comment": tag}, readonly=False) as session:
        return session.insert_blocks(target, fmt, blocks)


def _statement(store, settings, text, default_format, query_params, tag) -> tuple:
    with store.session({**settings, "log_comment": tag}, readonly=False) as session:
        return session.query(text, default_format, query_params)


def _load_server_info(store) -> tuple[str, frozenset[str]]:
    timezone = store.query("SELECT timezone()", "TSVRaw").decode().strip()
    names = store.query("SELECT name FROM system.settings", "TSVRaw").decode().split()
    return timezone, frozenset(names)


async def _read_query(request: web.Request, params: dict[str, str]) -> bytes:
    """The ``query`` parameter, then a newline and the body, as ClickHouse joins them."""
    if request.content_type == "multipart/form-data":
        # clickhouse-connect sends long query parameters as form fields; files are external tables
        for name, value in (await request.post()).items():
            if not isinstance(value, str):
                raise ClickHouseError(NOT_IMPLEMENTED, "external data (files) is not supported")
            params[name] = value
        body = b""
    else:
        body = await request.read()
    if request.headers.get("Content-Encoding", "").lower() == "lz4":
        body = _lz4_decompress(body)  # aiohttp itself undoes gzip, deflate, br and zstd
    head = params.get("query", "").encode()
    return head + b"\n" + body if head and body else head or body


def _insert_with_data(sql: bytes) -> tuple[str, str, list[bytes]] | None:
    """(target, format, [data]) for ``INSERT INTO target FORMAT fmt <data>``, else None."""
    match = _INSERT_HEAD.match(sql, 0, 1 << 16)  # the head is short: never scan megabytes of data
    if match is None or _NOT_A_TARGET.search(match.group(1)):
        return None
    return match.group(1).decode(), match.group(2).decode(), [sql[match.end() :]]


def _lz4_decompress(data: bytes) -> bytes:
    import lz4.frame  # installed with clickhouse-connect, which compresses with it

    parts = []
    while data:  # clickhouse-connect compresses each block as a frame of its own
        decompressor = lz4.frame.LZ4FrameDecompressor()
        try:
            parts.append(decompressor.decompress(data))
        except RuntimeError as exc:
            raise ClickHouseError(BAD_ARGUMENTS, f"cannot decompress the lz4 body: {exc}") from None
        data = decompressor.unused_data
    return b"".join(parts)


_TSV_ESCAPE = re.compile(r"\\(.)", re.S)
_TSV_CHARS = {
    "t": "\t",
    "n": "\n",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "0": "\0",
    "a": "\a",
    "v": "\v",
}


def _unescape(value: str) -> str | None:
    """A query parameter's value as ClickHouse reads it (an escaped TSV field; ``\\N`` is NULL)."""
    if value == "\\N":
        return None
    return _TSV_ESCAPE.sub(lambda m: _TSV_CHARS.get(m.group(1), m.group(1)), value)


def _content_type(fmt: str) -> str:
    name = fmt.lower()
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        return "text/csv; charset=UTF-8"
    if name.startswith(("json", "ndjson")):
        return "application/json; charset=UTF-8"
    if name == "xml":
        return "application/xml; charset=UTF-8"
    if name.startswith(_BINARY_FORMATS):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def _error(exc: ClickHouseError, headers: dict[str, str]) -> web.Response:
    message = str(exc)
    if not message.startswith("Code: "):  # chDB's own errors already read as ClickHouse's
        name = _NAMES.get(exc.code, "UNKNOWN_EXCEPTION")
        message = f"Code: {exc.code}. DB::Exception: {message}. ({name})"
    headers = {**headers, "X-ClickHouse-Exception-Code": str(exc.code)}
    headers["Content-Type"] = "text/plain; charset=UTF-8"
    body = message.rstrip("\n").encode() + b"\n"
    return web.Response(status=exc.status, body=body, headers=headers)
