"""clickhouse-connect's own integration suite against the collector's SQL port.

The official Python client's integration tests (``tests/integration_tests`` of its repository,
pointed at a server by ``CLICKHOUSE_CONNECT_TEST_*`` variables) tell how far the SQL port behaves
like ClickHouse's HTTP interface. This script:

1. gets the tests. They are not in the wheel, and not in the source distribution either: its
   ``MANIFEST.in`` takes only ``*.pyx``/``*.pxd``, and ``setup.py`` excludes ``tests*``, so the
   sdist holds ``tests/test_bare_install.py`` alone. The script still tries the sdist of the
   installed version first (``pip download --no-deps --no-binary :all:``, in case a release
   ships them); otherwise give ``--source``: a checkout of github.com/ClickHouse/clickhouse-connect
   (``git clone --branch v<version> …``), an unpacked source archive, or a git directory (a bare
   mirror too: the tag ``v<installed version>`` is used when it has one, else HEAD). Only the
   ``tests`` folder is copied into a temporary directory, so the tests run against the
   *installed* client (its compiled ``driverc`` modules, which ``tests/helpers.py`` imports).
2. starts ``agentwatch serve`` (``bench.ingest.CollectorProcess``) on free loopback ports, on a
   fresh data directory, once per mode: ``writable`` (``sql_readonly: false``) and ``readonly``
   (the default).
3. runs pytest on the suite against the SQL port with the variables of its ``conftest.py``:
   ``CLICKHOUSE_CONNECT_TEST_HOST`` (127.0.0.1), ``_PORT`` (the SQL port), ``_DATABASE``
   (``default``: the store has no other database, and the suite would otherwise create
   ``ch_connect__<random>``), ``_USER`` / ``_PASSWORD`` (``default`` / the ``sql_token`` when
   ``--token`` is given), ``_DOCKER=False`` (no docker compose), ``_CLOUD=False``,
   ``_TLS=False``, ``_PROXY_ADDR`` unset (proxy tests skip), ``_COMPRESS`` (lz4 by default) and
   ``_FUZZ`` (runs per fuzz test, ``--fuzz``). The suite's session fixture runs
   ``CREATE DATABASE IF NOT EXISTS default``, which a read-only server refuses (so would
   ClickHouse for a ``readonly`` user), and its clients pass a setting
   (``allow_suspicious_low_cardinality_types``) that the read-only port's ``system.settings``
   reports as readonly, so clickhouse-connect raises before sending a query. In the ``readonly``
   mode a small pytest plugin (``READONLY_PLUGIN``) turns that one statement into a no-op and sets
   the client's ``invalid_setting_action`` to ``drop`` (its option for readonly users), or every
   test would error at setup. Nothing else of the suite is changed.
4. prints passed / failed / errors / skipped per mode and the failures grouped by reason (the
   ClickHouse exception line of the error, or its first line, with numbers and names that vary
   per run blanked), as Markdown for the README; then the same failures counted by cause
   (``CAUSES``: what reading the failing tests and the endpoint found), "unclassified" for any
   that matches none.

Test dependencies beyond the project's ``test`` extra (small, from PyPI; tests that need a
missing one fail at collection and are reported as such)::

    pip install pytest-mock sqlalchemy alembic     # mocker fixture, the SQLAlchemy dialect tests

``polars`` is optional (``test_polars.py`` skips without it); ``pyjwt`` is not needed (the JWT
tests skip themselves).

Run from the repository root::

    .venv/bin/python -m bench.clickhouse_connect_suite --source PATH_TO_CLICKHOUSE_CONNECT
    .venv/bin/python -m bench.clickhouse_connect_suite --source … --modes readonly -k test_params
    .venv/bin/python -m bench.clickhouse_connect_suite --source … --json-out bench/results/cc.json

Loopback only. Each mode's pytest run is bounded by ``--timeout`` (and each test by
``--test-timeout``); the collector logs and junit files go to ``--results-dir``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.ingest import CollectorProcess

PACKAGE = "clickhouse-connect"
MODES = ("writable", "readonly")
TEST_DEPENDENCIES = {"pytest_mock": "pytest-mock", "sqlalchemy": "sqlalchemy", "alembic": "alembic"}

# Written next to the copied tests and loaded with ``-p`` in the read-only mode only.
READONLY_PLUGIN = '''"""agentwatch bench: let the suite start against a read-only server.

1. tests/integration_tests/conftest.py runs ``CREATE DATABASE IF NOT EXISTS <test database>``
   before any test; a read-only server refuses it (as ClickHouse does for a readonly user). The
   database (``default``) exists, so that one statement is skipped; every other one is sent.
2. The suite's clients pass ``allow_suspicious_low_cardinality_types=1``; system.settings says
   every setting is readonly there, so clickhouse-connect raises ProgrammingError before sending
   anything. ``invalid_setting_action = drop`` (the client's option for readonly users) drops
   such settings with a warning instead.
"""

import os

from clickhouse_connect import common
from clickhouse_connect.driver.httpclient import HttpClient

common.set_setting("invalid_setting_action", "drop")

_skip = "CREATE DATABASE IF NOT EXISTS " + os.environ["CLICKHOUSE_CONNECT_TEST_DATABASE"]
_command = HttpClient.command


def _command_unless_create_database(self, cmd, *args, **kwargs):
    if isinstance(cmd, str) and " ".join(cmd.split()).upper() == _skip.upper():
        return None
    return _command(self, cmd, *args, **kwargs)


HttpClient.command = _command_unless_create_database
'''

PYTEST_INI = """[pytest]
# as the suite's own pyproject.toml, without its -n 4 (xdist) and .env loading
asyncio_default_fixture_loop_scope = session
"""


# --- the tests ----------------------------------------------------------------------------------


def installed_version() -> str:
    return importlib.metadata.version(PACKAGE)


def _copy_tests(root: Path, work: Path) -> bool:
    """Copy ``root/tests`` to ``work/tests`` if it holds the integration tests."""
    if not (root / "tests" / "integration_tests" / "conftest.py").is_file():
        return False
    shutil.copytree(root / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    return True


def _version_in(text: str) -> str | None:
    match = re.search(r"""version\s*=\s*["']([^"']+)["']""", text)
    return match.group(1) if match else None


def tests_from_sdist(version: str, work: Path) -> str | None:
    """The installed version's sdist, if it ships the integration tests: that version, else None."""
    download = work / "sdist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        + [f"{PACKAGE}=={version}", "-d", str(download), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        print(f"pip download of the {PACKAGE} {version} sdist failed:\n{done.stderr[-2000:]}")
        return None
    unpacked = work / "sdist-unpacked"
    for archive in download.iterdir():
        if archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
        elif archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(unpacked)
    for conftest in sorted(unpacked.glob("*/tests/integration_tests/conftest.py")):
        if _copy_tests(conftest.parents[2], work):
            return version
    found = sorted(p.relative_to(unpacked).as_posix() for p in unpacked.glob("*/tests/**/*.py"))
    print(
        f"the {PACKAGE} {version} sdist has no tests/integration_tests (it holds "
        f"{', '.join(found) or 'no tests'}); give --source, a checkout of its repository"
    )
    return None


def tests_from_source(source: Path, version: str, work: Path) -> str:
    """Copy the tests of a source tree or git directory into ``work``; their client version."""
    if _copy_tests(source, work):
        version_file = source / "clickhouse_connect" / "_version.py"
        return _version_in(version_file.read_text()) if version_file.exists() else "unknown"

    def git(*argv: str, binary: bool = False):
        return subprocess.run(
            ["git", "--git-dir", str(source), *argv], capture_output=True, text=not binary
        )

    if git("rev-parse", "--git-dir").returncode != 0:
        source = source / ".git"
        if git("rev-parse", "--git-dir").returncode != 0:
            raise SystemExit(f"{source.parent}: neither tests/integration_tests nor a git dir")
    ref = (
        f"v{version}"
        if git("rev-parse", "--verify", "-q", f"v{version}").returncode == 0
        else "HEAD"
    )
    archive = git("archive", "--format=tar", ref, "tests", binary=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref} tests failed: {archive.stderr.decode()[-500:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(work, filter="data")
    tests_version = _version_in(git("show", f"{ref}:clickhouse_connect/_version.py").stdout or "")
    return f"{tests_version or 'unknown'} ({ref} of {source})"


def missing_dependencies() -> list[str]:
    return [
        pip for module, pip in TEST_DEPENDENCIES.items() if not importlib.util.find_spec(module)
    ]


# --- one mode -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    mode: str
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # {"test", "kind", "reason", "message"}
    seconds: float = 0.0
    timed_out: bool = False
    exit_code: int | None = None


# Numbers and names that differ from run to run, blanked so that the same failure groups.
_VARYING = [
    (re.compile(r"https?://127\.0\.0\.1:\d+"), "http://127.0.0.1:PORT"),
    (re.compile(r"agentwatch-sql:[0-9a-f-]{36}"), "agentwatch-sql:TAG"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"0x[0-9a-f]{6,}"), "0x…"),
    (re.compile(r"\(version [^)]*\)"), ""),
    (re.compile(r" \(for url [^)]*\)"), ""),
    (re.compile(r"\s+"), " "),
]
_CLICKHOUSE_LINE = re.compile(r"Code: \d+\. DB::Exception: [^\n]*")


def failure_reason(message: str) -> str:
    """What a failure is about: ClickHouse's exception line when there is one, else the first
    line; run-specific numbers blanked, cut to 240 characters."""
    found = _CLICKHOUSE_LINE.search(message)
    line = found.group(0) if found else next((s for s in message.splitlines() if s.strip()), "")
    line = re.sub(r"\. Stack trace:.*", "", line)
    for pattern, replacement in _VARYING:
        line = pattern.sub(replacement, line)
    line = line.strip().rstrip('"').rstrip()  # an error at setup quotes the exception
    return line[:237] + "…" if len(line) > 240 else line


def parse_junit(path: Path, outcome: Outcome) -> None:
    """Counts and failures from pytest's junit file. A test that failed and then errored in
    teardown has two ``testcase`` elements there; it counts once, as failed."""
    results: dict[str, tuple[str, dict | None]] = {}
    rank = {"passed": 0, "skipped": 1, "errors": 2, "failed": 3}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".removeprefix(
            "tests.integration_tests."
        )
        kind, failure = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                if kind != "skipped":
                    message = (child.get("message") or "") + "\n" + (child.text or "")
                    failure = {
                        "test": name,
                        "kind": kind,
                        "reason": failure_reason(message),
                        "message": message.strip()[:4000],
                    }
                break
        if name not in results or rank[kind] > rank[results[name][0]]:
            results[name] = (kind, failure)
    outcome.counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    for kind, failure in results.values():
        outcome.counts[kind] += 1
        if failure:
            outcome.failures.append(failure)


def run_mode(mode: str, args: argparse.Namespace, work: Path, results: Path) -> Outcome:
    outcome = Outcome(mode)
    data_dir = Path(tempfile.mkdtemp(prefix=f"aw-ccsuite-{mode}-"))
    config_path = results / f"cc-suite-{mode}.yaml"
    lines = []
    if mode == "writable":
        lines.append("sql_readonly: false")
    if args.token:
        lines.append(f"sql_token: {json.dumps(args.token)}")
    config_path.write_text("\n".join(lines) + "\n")
    collector = CollectorProcess(
        data_dir, results / f"cc-suite-{mode}-collector.log", str(config_path)
    )
    junit = results / f"cc-suite-{mode}.xml"
    junit.unlink(missing_ok=True)
    log_path = results / f"cc-suite-{mode}-pytest.log"
    try:
        collector.wait_healthy(120)
        env = {
            **os.environ,
            "CLICKHOUSE_CONNECT_TEST_HOST": "127.0.0.1",
            "CLICKHOUSE_CONNECT_TEST_PORT": str(collector.ports["sql"]),
            "CLICKHOUSE_CONNECT_TEST_DATABASE": "default",
            "CLICKHOUSE_CONNECT_TEST_USER": "default",
            "CLICKHOUSE_CONNECT_TEST_PASSWORD": args.token or "",
            "CLICKHOUSE_CONNECT_TEST_DOCKER": "False",
            "CLICKHOUSE_CONNECT_TEST_CLOUD": "False",
            "CLICKHOUSE_CONNECT_TEST_TLS": "False",
            "CLICKHOUSE_CONNECT_TEST_COMPRESS": args.compress,
            "CLICKHOUSE_CONNECT_TEST_FUZZ": str(args.fuzz),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")])),
        }
        env.pop("CLICKHOUSE_CONNECT_TEST_PROXY_ADDR", None)
        command = [sys.executable, "-m", "pytest", "tests/integration_tests"]
        command += ["-p", "no:cacheprovider", "-q", "-rN", "--continue-on-collection-errors"]
        command += [f"--junitxml={junit}", f"--timeout={args.test_timeout}"]
        if mode == "readonly":
            command += ["-p", "_agentwatch_readonly"]
        if args.k:
            command += ["-k", args.k]
        command += args.pytest_args
        print(f"[{mode}] SQL port {collector.ports['sql']}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        with open(log_path, "wb") as log:
            pytest = subprocess.Popen(
                command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                outcome.exit_code = pytest.wait(args.timeout)
            except subprocess.TimeoutExpired:
                outcome.timed_out = True
                os.killpg(pytest.pid, signal.SIGINT)  # pytest still writes its junit file
                try:
                    pytest.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(pytest.pid, signal.SIGKILL)
                    pytest.wait()
        outcome.seconds = time.monotonic() - started
    finally:
        collector.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    if junit.exists():
        parse_junit(junit, outcome)
    else:
        print(f"[{mode}] no junit file; see {log_path}")
    return outcome


# --- report -------------------------------------------------------------------------------------


def counts_line(outcome: Outcome) -> str:
    c = outcome.counts
    total = sum(c.values())
    line = (
        f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('errors', 0)} errors,"
        f" {c.get('skipped', 0)} skipped of {total} ({outcome.seconds:.0f} s)"
    )
    return line + (" - stopped by --timeout" if outcome.timed_out else "")


#: Known causes of failures, first match wins: (label, pattern on the reason, pattern on the test
#: name); either pattern may be None. Found by reading the failing tests and the endpoint (see the
#: README's table); a failure that matches none is printed as "unclassified", so a regression or a
#: new upstream test stands out.
CAUSES: list[tuple[str, str | None, str | None]] = [
    (
        "read-only: writes, DDL, SET, KILL refused",
        r"read-only: [A-Z]+ statements are refused",
        None,
    ),
    ("read-only: compound SELECT (EXCEPT) refused", r"read-only: \(SELECT statements", None),
    ("read-only: table function format() refused", r"format\(\) is refused", None),
    ("read-only: result over sql_max_result_mib", r"Limit for result exceeded", None),
    ("sessions: SET, temporary tables, session lock", r"SET is not supported", None),
    (
        "sessions: SET, temporary tables, session lock",
        r"Table default\.temp_test\w* does not",
        None,
    ),
    ("sessions: SET, temporary tables, session lock", r"detect concurrent session usage", None),
    ("external data (multipart files) not supported", r"external data \(files\)", None),
    (
        "streaming: results buffered, errors not in-band",
        None,
        r"mid_stream_exception|test_stream_failure_|test_stream_error_show_clickhouse_errors",
    ),
    (
        "client_protocol_version ignored",
        None,
        r"::test_protocol_version\[|::test_local_timezones\[",
    ),
    ("NULL query parameter read as 'N'", None, r"::test_params\[|test_form_encode_nullable_params"),
    ("non-UTF-8 bytes in the query refused", r"the query is not valid UTF-8", None),
    (
        "read-only: system.settings says every setting is readonly",
        None,
        r"::test_(column|row)_block_stream\[|::test_(numpy|pandas)_streams|test_connection_settings"
        r"|test_statement_settings_|test_initial_settings_override|test_client_init_unaffected"
        r"|::test_dsn_config$",
    ),
    ("chDB: no users, roles or row policies", r"ACCESS_DENIED", None),
    ("chDB: no SHOW CREATE for system tables", r"There is no metadata of table", None),
    ("chDB: no system.query_log", r"system\.query_log", None),
    ("chDB 26.9: analyzer cannot be disabled", r"'enable_analyzer' cannot be disabled", None),
    (
        "not the server: test/client versions, pandas 3, native port",
        None,
        r"test_alembic_autogenerate_(positional|dictionary)|test_alembic_dictionary_downgrade"
        r"|test_dynamic_shared_variant_unsupported|test_decoy_placeholder_with_dollar"
        r"|test_async_non_remote_close_connection_errors_are_not_retried|::test_pandas_datetime64\["
        r"|test_wrong_port_error_message",
    ),
]


def cause_of(failure: dict) -> str:
    for label, reason, test in CAUSES:
        if (reason is None or re.search(reason, failure["reason"])) and (
            test is None or re.search(test, failure["test"])
        ):
            return label
    return "unclassified"


def grouped(outcome: Outcome) -> list[tuple[str, list[dict]]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for failure in outcome.failures:
        groups[failure["reason"]].append(failure)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def print_report(outcomes: list[Outcome], header: str, examples: int) -> None:
    print(f"\n{header}\n")
    print("| mode | passed | failed | errors | skipped | total |")
    print("|---|---:|---:|---:|---:|---:|")
    for o in outcomes:
        c = o.counts
        print(
            f"| {o.mode}{' (timed out)' if o.timed_out else ''} | {c.get('passed', 0)} |"
            f" {c.get('failed', 0)} | {c.get('errors', 0)} | {c.get('skipped', 0)} |"
            f" {sum(c.values())} |"
        )
    for o in outcomes:
        print(f"\n#### {o.mode}: {counts_line(o)}\n")
        if not o.failures:
            continue
        print("| tests | reason (first line of the error) | e.g. |")
        print("|---:|---|---|")
        for reason, failures in grouped(o):
            names = sorted({f["test"].rsplit("::", 1)[-1] for f in failures})
            shown = ", ".join(f"`{n}`" for n in names[:examples])
            more = f" +{len(names) - examples}" if len(names) > examples else ""
            errors = sum(f["kind"] == "errors" for f in failures)
            count = f"{len(failures)}" + (f" ({errors} errors)" if errors else "")
            print(f"| {count} | {_cell(reason)} | {_cell(shown + more)} |")
    by_cause = {o.mode: defaultdict(int) for o in outcomes}
    for o in outcomes:
        for failure in o.failures:
            by_cause[o.mode][cause_of(failure)] += 1
    labels = sorted(
        {label for counts in by_cause.values() for label in counts},
        key=lambda label: -sum(counts[label] for counts in by_cause.values()),
    )
    if labels:
        print("\n#### by cause (failed + errors)\n")
        print("| cause | " + " | ".join(o.mode for o in outcomes) + " |")
        print("|---|" + "---:|" * len(outcomes))
        for label in labels:
            print(
                f"| {label} | " + " | ".join(str(by_cause[o.mode][label]) for o in outcomes) + " |"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--source", type=Path, help="clickhouse-connect checkout, source archive dir or git dir")
    add("--modes", default=",".join(MODES), help="comma-separated: writable, readonly")
    add("--timeout", type=float, default=1800, help="seconds for each mode's pytest run")
    add("--test-timeout", type=float, default=120, help="seconds for one test (pytest-timeout)")
    add("--fuzz", type=int, default=250, help="CLICKHOUSE_CONNECT_TEST_FUZZ: runs per fuzz test")
    add("--compress", default="True", help="CLICKHOUSE_CONNECT_TEST_COMPRESS (True = lz4)")
    add("--token", help="run the collector with this sql_token and the suite with it as password")
    add("-k", help="pytest -k expression (a subset of the suite)")
    add("--examples", type=int, default=3, help="test names shown per failure group")
    add("--results-dir", type=Path, default=Path("bench/results"))
    add("--json-out", type=Path, help="also write counts and every failure as JSON")
    add("--keep-tests", action="store_true", help="keep the temporary copy of the tests")
    add("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = args.results_dir.resolve()
    version = installed_version()
    missing = missing_dependencies()
    if missing:
        print(f"missing test dependencies (their tests will fail): pip install {' '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="aw-ccsuite-tests-"))
    try:
        tests_version = tests_from_sdist(version, work)
        if tests_version is None:
            if args.source is None:
                print(
                    f"no integration tests: clone github.com/ClickHouse/clickhouse-connect (tag"
                    f" v{version}) and pass it as --source"
                )
                return 2
            tests_version = tests_from_source(args.source.resolve(), version, work)
        (work / "pytest.ini").write_text(PYTEST_INI)
        (work / "_agentwatch_readonly.py").write_text(READONLY_PLUGIN)
        print(f"{PACKAGE} {version} installed; its integration tests from {tests_version}")
        outcomes = [run_mode(mode, args, work, results) for mode in args.modes]
    finally:
        if args.keep_tests:
            print(f"tests kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    header = (
        f"clickhouse-connect {version} (client) with the integration tests of {tests_version},"
        " against `agentwatch serve`'s SQL port"
    )
    print_report(outcomes, header, args.examples)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "client_version": version,
            "tests_version": tests_version,
            "modes": [o.__dict__ for o in outcomes],
        }
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    for o in outcomes:  # the plain closing line, one per mode
        print(f"{o.mode}: {counts_line(o)}")
    return 0 if all(o.exit_code is not None for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
