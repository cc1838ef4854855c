"""Wires the collector together and runs it: store, pipeline, receivers, SQL endpoint and API.

One asyncio loop serves every listener; the store has a thread of its own (``run_store``), so
inserts and queries never block request handling.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from agentwatch.api.server import build_api_app
from agentwatch.config import Config
from agentwatch.sql.port import build_sql_app
from analyzer.baselines import seed_baselines
from analyzer.containment.actions import Containment
from analyzer.containment.control import ControlBoard
from analyzer.engine import Analyzer, Detection, IncidentDesk, default_detectors
from analyzer.gameday.repository import GamedayRepository
from analyzer.incidents.lifecycle import IncidentManager
from analyzer.incidents.repository import IncidentRepository
from analyzer.paging.leader import PagingLeader
from analyzer.paging.notifiers.http import HttpNotifiers
from analyzer.paging.pager import Pager
from analyzer.paging.store import PagingSql
from analyzer.policy import DEFAULT_POLICY, PolicyError, load_policy
from analyzer.restore import restore
from analyzer.session import SessionTable
from analyzer.session_sweep import SessionSweep
from analyzer.worker import DetectionProcess
from collector.auth import Tokens
from collector.forwarder import Forwarder
from collector.gc_tuning import tune_gc
from collector.metrics import Metrics
from collector.normalize import READER, Normalizer, RunningDrills
from collector.pipeline import Pipeline
from collector.pricing import PriceTable
from collector.ratelog import RateLimitedLog
from collector.receivers.grpc import GrpcReceiver
from collector.receivers.http import build_otlp_http_app
from collector.store import Store, StoreUnavailable
from collector.store.lease import Lease, collector_id
from collector.store.lease import keep as keep_lease
from collector.store.migrations import migrate
from collector.store.registry import Registry, api_url_of
from collector.writer import GroupCommitWriter

log = logging.getLogger("agentwatch")
#: the drills a span may claim (``collector.normalize.RunningDrills``), read from the store
DRILLS_REFRESH_S = 2.0
DRILL_GRACE_S = 60.0  # an ended drill's late spans still count as the drill's
DRILL_MAX_AGE_S = 6 * 3600.0  # a drill left running this long sends no more spans


class Collector:
    """One running collector. ``start`` binds every port; ``ports`` then holds the real numbers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.tokens = Tokens(config)  # who a request is, on every port (collector.auth)
        self.store: Store | None = None
        self.ports: dict[str, int] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        # the spans' group commits, apart from the store thread's queries and small writes
        self._insert_executor = ThreadPoolExecutor(
            max_workers=config.batch_inserts_in_flight, thread_name_prefix="insert"
        )
        self._sql_executor = ThreadPoolExecutor(
            max_workers=config.sql_max_concurrent_queries, thread_name_prefix="sql"
        )
        self._sql_in_flight = 0
        self._runners: list[web.AppRunner] = []
        self._grpc: GrpcReceiver | None = None
        self._writer: GroupCommitWriter | None = None
        self.forwarder = None
        self.pipeline: Pipeline | None = None
        self.analyzer = None
        self.session_sweep = None  # analyzer.session_sweep.SessionSweep when it runs here
        # where incidents change: the analyzer, or with detection off a desk of its own (for the
        # API's acknowledge and resolve)
        self.incident_desk: IncidentDesk | None = None
        self.policy = None  # analyzer.policy.Policy from config.policy_file; see reload_policy
        self.control = None  # analyzer.containment.control.ControlBoard: what agents may do now
        self.paging = None  # analyzer.paging.leader.PagingLeader when config.paging is set
        self._queueing_pager = None
        self.collector_id = collector_id()  # this process in leases (collector.store.lease)
        self.registry: Registry | None = None  # its heartbeat in `collectors` (the drill's list)
        self._tasks: list[asyncio.Task] = []
        # the drills a span may claim (agentwatch.drill): started by an admin, from the store
        self.drills = RunningDrills()
        # Async callables given every batch of incident rows once stored (paging, containment).
        self.incident_listeners: list = []

    @property
    def incident_repository(self) -> IncidentRepository:
        """The SQL of ``incidents`` and ``incident_events``, on this collector's store."""
        return IncidentRepository(self.store, self.run_store)

    async def run_store(self, fn, *args):
        """Run a blocking store call on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run_sql(self, fn, *args):
        """Run a client's SQL statement (SQL port, ``/v1/sql``) on the SQL pool: up to
        ``sql_max_concurrent_queries`` at once, apart from the store thread; beyond four times
        that many waiting, refuse (``StoreUnavailable``: 503, retry later)."""
        if self._sql_in_flight >= 4 * self.config.sql_max_concurrent_queries:
            raise StoreUnavailable(
                f"too many SQL queries at once ({self._sql_in_flight}); retry later"
                " (sql_max_concurrent_queries)"
            )
        self._sql_in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._sql_executor, fn, *args)
        finally:
            self._sql_in_flight -= 1

    def cancel_sql(self, tag: str) -> None:
        """Stop the SQL statement tagged ``tag`` (its client went away); never waits."""

        def cancel() -> None:
            try:
                self.store.cancel(tag)
            except Exception:
                log.exception("could not cancel SQL statement %s", tag)

        threading.Thread(target=cancel, name="sql-cancel", daemon=True).start()

    async def start(self) -> None:
        config = self.config
        self._loop = asyncio.get_running_loop()
        check_ports_free(config)  # in a second, before the store and the detection process
        self.store = await self.run_store(open_store, config)
        cluster = config.clickhouse_cluster
        applied = await self.run_store(lambda: migrate(self.store, cluster=cluster))
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        await self._start_control()
        if config.paging is not None:
            await self._start_paging(config.paging)
        self._writer = GroupCommitWriter(
            self.store,
            self._insert_executor,
            self.metrics,
            flush_interval_s=config.batch_flush_interval_s,
            max_batch_spans=config.batch_max_spans,
            max_queue_spans=config.queue_max_spans,
            retry_after_s=config.retry_after_s,
            inserts_in_flight=config.batch_inserts_in_flight,
        )
        self._writer.start()
        if config.forward is not None:
            self.forwarder = Forwarder(config.forward, self.metrics)
            await self.forwarder.start()
        if config.detect:
            self.analyzer = self.incident_desk = await self._build_analyzer()
            await restore(self.analyzer, self.store, self.run_store)
            self._tasks.append(asyncio.get_running_loop().create_task(self._tick_analyzer()))
            self._tasks.append(asyncio.get_running_loop().create_task(self._refresh_baselines()))
            if config.detection.session_sweep_s > 0:  # sessions spanning traces, judged whole
                # one collector of those sharing the store sweeps: the holder of this lease
                lease = self._lease("session_sweep")
                self.session_sweep = sweep = SessionSweep(
                    self.analyzer, self.store, self.run_store, lease.held,
                    every_s=config.detection.session_sweep_s,
                )  # fmt: skip
                loop = asyncio.get_running_loop()
                self._tasks.append(loop.create_task(keep_lease(lease, self.run_store)))
                self._tasks.append(loop.create_task(sweep.run_forever()))
        else:
            self.incident_desk = IncidentDesk(
                self._incident_manager(),
                self.incident_repository.write,
                on_written=self.publish_incident_rows,
                read_record=self.incident_repository.record,
            )
        if READER == "native":
            log.info("OTLP protobuf requests read by the C reader (collector/_otlp_reader.c)")
        else:
            log.warning(
                "C reader of OTLP requests not in use (not built, or AGENTWATCH_NATIVE_READER=0):"
                " the Python reader costs ~3x more CPU per span; reinstall with a C compiler"
                " (pip install -e .) for full speed"
            )
        prices = PriceTable({name: p.to_price() for name, p in config.prices.items()})
        await self._refresh_drills_once()  # a restart honours running drills from the first span
        self._tasks.append(asyncio.get_running_loop().create_task(self._refresh_drills()))
        self.pipeline = Pipeline(
            Normalizer(prices, config.default_tenant, self.drills, self._drill_claim_refused),
            self._writer,
            self.metrics,
            self.forwarder,
            after_commit=[self.analyzer] if self.analyzer is not None else [],
            max_held_spans=config.queue_max_spans,
            retry_after_s=config.retry_after_s,
        )
        self._grpc = GrpcReceiver(
            self.pipeline,
            max_recv_msg_size_mib=config.max_recv_msg_size_mib,
            max_concurrent_requests=config.max_concurrent_requests,
            tokens=self.tokens,
        )
        try:
            grpc_port = await self._grpc.start(config.listen, config.otlp_grpc_port)
        except RuntimeError as exc:  # grpc says only "Failed to bind"
            raise PortInUse(config, "otlp_grpc_port", config.otlp_grpc_port) from exc
        self.ports["otlp_grpc"] = grpc_port
        max_body = config.max_recv_msg_size_mib * 1024 * 1024
        self.ports["otlp_http"] = await self._serve(
            build_otlp_http_app(
                self.pipeline, max_body, self.tokens, config.max_concurrent_requests
            ),
            "otlp_http_port",
        )

        # a client that goes away cancels its handler, and so its query
        self.ports["sql"] = await self._serve(build_sql_app(self), "sql_port", cancel=True)
        self.ports["api"] = await self._serve(build_api_app(self), "api_port", cancel=True)
        api_url = api_url_of(config.public_url, config.listen, self.ports["api"])
        self.registry = Registry(self.store, self.run_store, self.collector_id, api_url)
        self._tasks.append(asyncio.get_running_loop().create_task(self.registry.beat_forever()))
        if not config.api_port:  # picked at random: the incident links learn it now
            self.incident_desk.incidents.link_template = config.link_template(self.ports["api"])
        self._warn_if_open()
        if config.clickhouse_url is None and config.embedded_release_startup_pages:
            # lazy: only with the embedded store, whose module loads chDB
            from collector.store.embedded import release_startup_pages

            released = release_startup_pages()
            if released:
                log.info("released %d MiB of chDB library pages used only at start-up", released)

    def _warn_if_open(self) -> None:
        config = self.config
        if config.loopback_only:
            return
        if not config.api_token:
            log.warning(
                "listening on %s WITHOUT api_token (allow_unauthenticated: true): anyone who"
                " reaches these ports can read every span and incident, acknowledge and resolve"
                " incidents and silence pages",
                config.listen,
            )

    def _lease(self, name: str, **kwargs) -> Lease:
        """This collector's view of lease ``name`` in the store (``collector.store.lease``)."""
        cluster = bool(self.config.clickhouse_cluster)  # a lagging replica syncs before each read
        return Lease(self.store, name, self.collector_id, sync_replica=cluster, **kwargs)

    async def _start_paging(self, paging) -> None:
        """Paging on the collector that holds the 'paging' lease (the only one, or one of several
        sharing the store: ``analyzer.paging.leader``); the others queue test pages for it."""
        lease = self._lease("paging", ttl_s=paging.lease_ttl_s)

        def make_pager(may_send=lease.held) -> Pager:
            return Pager(
                PagingSql(self.run_store, self.store),
                paging,
                notifiers=LoggedNotifiers(HttpNotifiers()),
                metrics=self.metrics,
                may_send=may_send,
            )

        self._queueing_pager = make_pager(lambda: False)  # never sends: its API calls queue
        self.paging = PagingLeader(
            make_pager,
            lease,
            self.run_store,
            self.incident_repository.events_since,
            renew_s=paging.lease_ttl_s / 3,
        )
        await self.paging.start()  # the lease, and the outbox resumed, before any incident
        self.incident_listeners.append(self.paging.on_incident_rows)

    @property
    def pager(self):
        """The pager for the API: the running one here, or one that queues test pages in the
        outbox for the collector that pages (None when paging is off)."""
        if self.paging is None:
            return None
        return self.paging.pager or self._queueing_pager

    async def _start_control(self) -> None:
        """Containment state from the store, refreshed every second; with detection on, policy
        actions and tool circuit breakers listen to incidents."""

        self.control = ControlBoard(self.store, self.run_store, metrics=self.metrics)
        in_force = await self.control.load()
        if in_force:
            log.info("%d containment controls in force", in_force)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.control.refresh_forever()))
        if self.config.detect:
            self.incident_listeners.append(
                Containment(self.control, self._policy_for, self.incident_repository.append_events)
            )

    async def _build_analyzer(self) -> Analyzer:
        if self.config.policy_file is not None and self.policy is None:
            self.policy = load_policy(self.config.policy_file)
        if self.config.detect_process:
            detection = DetectionProcess(self._policy_data())
            await detection.start()
        else:
            detection = Detection(default_detectors(), SessionTable(policy_for=self._policy_for))
        repository = self.incident_repository
        return Analyzer(
            detection,
            self._incident_manager(),
            repository.write,
            on_written=self.publish_incident_rows,
            read_spread=repository.spread,
            policy_for=self._policy_for,
            flush_delay_s=self.config.incident_flush_interval_s,
            on_skipped=self.metrics.detection_skipped_spans.inc,
            read_record=repository.record,
        )

    def _incident_manager(self) -> IncidentManager:
        return IncidentManager(
            self.config.link_template(self.config.api_port), self.config.incident_quiet_period_s
        )

    def _policy_data(self) -> dict | None:
        """The policy as data, for the detection process (which parses it again)."""
        if self.policy is None:
            return None
        return self.policy.spec.model_dump(mode="json", exclude_none=True)

    async def publish_incident_rows(self, rows) -> None:
        """Hand stored incident rows (``analyzer.incidents.model.IncidentRows``) to every listener.

        The incident desk (``analyzer.engine.IncidentDesk``: the analyzer, or its own desk with
        detection off) calls this after each write. A failing listener is logged, never raised:
        the incident is stored whatever a pager or policy does with it.
        """
        latest = {record.incident_id: record for record in rows.incidents}
        for event in rows.events:
            record = latest.get(event.incident_id)
            if event.event == "opened" and record is not None:
                key = (record.tenant, record.service, record.agent, record.detector)
                _EVENT_LOG.log(
                    logging.WARNING, key, "incident %s opened: %s %s %s/%s in %s: %s  %s",
                    record.incident_id, record.severity, record.incident_class, record.detector,
                    record.kind, record.service, record.title, record.link,
                )  # fmt: skip
        for listener in self.incident_listeners:
            try:
                await listener(rows)
            except Exception:
                log.exception("incident listener %r failed", listener)

    def _policy_for(self, service: str, agent: str):
        """The current policy's rule for a new session (reads ``self.policy`` at every call)."""
        if self.policy is None:
            return DEFAULT_POLICY
        return self.policy.for_agent(service, agent)

    def reload_policy(self):
        """Read ``config.policy_file`` again and swap it in; on ``PolicyError`` keep the old one.

        Nothing else is touched: sessions, detector state and incidents stay. A session keeps the
        rule resolved when it was first seen until it ends (TTL or eviction); sessions first seen
        after the reload get the new policy. Returns the new Policy.
        """

        if self.config.policy_file is None:
            raise PolicyError("no policy file configured (start with --policy FILE)")
        policy = load_policy(self.config.policy_file)
        self.policy = policy
        if self.analyzer is not None and hasattr(self.analyzer.detection, "set_policy"):
            # the detection process gets it too; callable from any thread (tests, SIGHUP)
            asyncio.run_coroutine_threadsafe(
                self.analyzer.detection.set_policy(self._policy_data()), self._loop
            )
        log.info("policy reloaded from %s: %d agents rules", policy.source, len(policy.spec.agents))
        return policy

    def _reload_on_signal(self) -> None:

        try:
            self.reload_policy()
        except PolicyError as exc:
            log.error("policy not reloaded, the previous one stays in force:\n%s", exc)

    async def _tick_analyzer(self, every_s: float = 10.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.analyzer.tick()

    async def _refresh_baselines(self, every_s: float = 300.0) -> None:
        """Baselines from the store every few minutes: collectors sharing it converge."""
        while True:
            await asyncio.sleep(every_s)
            await seed_baselines(self.analyzer.detection, self.store, self.run_store)

    async def _refresh_drills(self, every_s: float = DRILLS_REFRESH_S) -> None:
        """The claimable drills from the store every few seconds: drills started on another
        collector sharing it, drills ended (after ``DRILL_GRACE_S``)."""
        while True:
            await asyncio.sleep(every_s)
            await self._refresh_drills_once()

    async def _refresh_drills_once(self) -> None:
        gamedays = GamedayRepository(self.store, self.run_store)
        try:
            drills = await gamedays.claimable(DRILL_GRACE_S, DRILL_MAX_AGE_S)
        except Exception as exc:  # the store is down: the drills known stay as they were
            _EVENT_LOG.log(logging.WARNING, "drills", "cannot refresh the running drills: %s", exc)
            return
        self.drills.replace(drills)

    def _drill_claim_refused(self, spans: int, tenant: str, claim: str, service: str) -> None:
        self.metrics.drill_claims_refused.inc(spans)
        _EVENT_LOG.log(
            logging.WARNING,
            "drill claim",
            "%d span(s) claim drill %r that no admin started for tenant %r, service %r (or it"
            " ended): stored as production",
            spans, claim[:80], tenant, service[:200],
        )  # fmt: skip

    async def _serve(self, app: web.Application, key: str, cancel: bool = False) -> int:
        """Serve ``app`` on the port of config ``key``; returns the port bound."""
        port = getattr(self.config, key)
        # lingering_time=0: after an early answer (a 413 past the body limit, a 401) the rest of
        # the body is not read, and so not decompressed on the loop (a compression bomb was, for
        # up to 10 s: bench/adversarial.py --scenarios bomb)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=cancel,
            lingering_time=0,
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.listen, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(self.config, key, port) from exc
        return site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for

    async def stop(self) -> None:
        """Stop taking requests, commit what was accepted, then close the store."""
        for task in self._tasks:
            task.cancel()
        if self.registry:
            await self.registry.leave()  # drills stop counting on it now, not 30 s from now
        if self._grpc:
            await self._grpc.stop()
        for runner in self._runners:
            await runner.cleanup()
        if self.paging:
            await self.paging.stop()  # a page in flight stays pending; the lease is released
        if self._writer:
            await self._writer.close()
        self._insert_executor.shutdown(wait=True)
        self._sql_executor.shutdown(wait=True)
        if self.analyzer:
            await self.analyzer.close()
        if self.forwarder:
            await self.forwarder.close()
        if self.store:
            await self.run_store(self.store.close)
        self._executor.shutdown(wait=True)


#: incidents opened and pages sent, drill claims refused: one line per kind per minute (the
#: tables and metrics count every one)
_EVENT_LOG = RateLimitedLog(log)


class LoggedNotifiers:
    """The pager's notifiers, each page sent logged (rate-limited; a page not accepted is
    logged by ``analyzer.paging.retry_stage``)."""

    def __init__(self, factory) -> None:
        self._factory = factory

    def __call__(self, receiver):
        return _LoggedNotifier(self._factory(receiver))

    async def close(self) -> None:
        await self._factory.close()


class _LoggedNotifier:
    def __init__(self, notifier) -> None:
        self._notifier = notifier
        self.name = notifier.name
        self.actions = notifier.actions
        self.resend_interval_s = notifier.resend_interval_s

    async def notify(self, page):
        delivery = await self._notifier.notify(page)
        if delivery.ok:
            incident = page.incident
            _EVENT_LOG.log(
                logging.INFO, ("page", self.name, page.action), "page %s of incident %s sent to %s: %s",
                page.action, incident.incident_id, self.name, incident.title,
            )  # fmt: skip
        return delivery


async def serve(config: Config, ready=None) -> None:
    """Run until SIGINT/SIGTERM (SIGHUP reloads the policy file). ``ready(collector)`` is called
    once every port is bound."""
    collector = Collector(config)
    try:
        await collector.start()
    except BaseException:
        await collector.stop()  # the detection process and the store's threads end too
        raise
    tune_gc()
    if ready:
        ready(collector)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config.policy_file is not None:
        loop.add_signal_handler(signal.SIGHUP, collector._reload_on_signal)
    try:
        await stop.wait()
    finally:
        await collector.stop()


#: the flag that changes each port (config key -> flag)
PORT_FLAGS = {
    "otlp_grpc_port": "--otlp-grpc-port",
    "otlp_http_port": "--otlp-http-port",
    "sql_port": "--sql-port",
    "api_port": "--api-port",
}


class PortInUse(OSError):
    """A port the config names is taken: which one, and the flag or key that changes it."""

    def __init__(self, config: Config, key: str, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"port {port} on {config.listen} ({key}) is already in use: stop what holds it, or"
            f" choose another with {PORT_FLAGS[key]} (or `{key}:` in the config file)",
        )

    def __str__(self) -> str:
        return self.strerror


def check_ports_free(config: Config) -> None:
    """Raise ``PortInUse`` for the first port of the config another process listens on.

    The listeners bind only after the store opens (seconds); this answers at once. A race with
    another process is still caught when the listener binds.
    """
    host = config.listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for key in PORT_FLAGS:
        port = getattr(config, key)
        if not port:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(config, key, port) from None
                raise


def open_store(config: Config) -> Store:
    """The store the config names, its module imported only when chosen."""
    if config.clickhouse_url:
        # lazy: a collector on a server never loads chDB, and one on chDB needs no HTTP client
        from collector.store.clickhouse import CLUSTER_SETTINGS, ClickHouseStore

        return ClickHouseStore(
            config.clickhouse_url,
            user=config.clickhouse_user,
            password=config.clickhouse_password,
            database=config.clickhouse_database,
            connect_timeout_s=config.clickhouse_connect_timeout_s,
            query_timeout_s=config.clickhouse_query_timeout_s,
            settings=CLUSTER_SETTINGS if config.clickhouse_cluster else None,
        )
    # lazy: loading chDB costs ~1 s and hundreds of MB
    from collector.store.embedded import EmbeddedStore

    return EmbeddedStore(
        config.data_dir, config.embedded_server_settings, config.embedded_malloc_conf
    )
