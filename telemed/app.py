"""The composition root: the one place that builds the aiohttp app and wires its parts.

Each resource is created in a cleanup context (started in order, closed in reverse) and
stored under a typed key from `telemed.web.keys`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from prometheus_client import CollectorRegistry

from devices.broker import BrokerProbe, MosquittoSupervisor, broker_access
from devices.enrollment import Enrollment
from devices.ingest import Ingestor, IngestSettings
from devices.monitor import Monitor
from devices.simulator import credentials_path, enroll_or_reuse, simulate
from signaling.live import LiveHub
from signaling.roster import LocalRoster, RedisRoster, Roster
from signaling.server import SignalingServer
from signaling.visits import NAMESPACE, VisitRooms
from telemed.archive import BackupKeyError
from telemed.backup_schedule import BackupSchedule, BackupStatus
from telemed.clinic import Clinic
from telemed.clock import Clock, utcnow
from telemed.demo import MARKER as DEMO_MARKER
from telemed.i18n import load_catalogues
from telemed.key_custody import open_key_provider
from telemed.reception import Reception, visit_policy
from telemed.records_office import RecordsOffice, record_policy
from telemed.sealing import Sealer
from telemed.sessions import SessionPolicy
from telemed.settings import Settings
from telemed.store import Store, open_store
from telemed.throttle import LoginThrottling, ThrottlePolicy
from telemed.web import (
    api,
    auth,
    devices_pages,
    fhir,
    monitoring_api,
    monitoring_pages,
    ops,
    pages,
    records_api,
    visit_pages,
    visits_api,
    vitals_api,
)
from telemed.web.compression import compress_static
from telemed.web.keys import (
    BROKER,
    CATALOGUES,
    CLINIC,
    CLOCK,
    ENROLLMENT,
    INGESTOR,
    LIVE,
    METRICS,
    MONITOR,
    PROBES,
    RECEPTION,
    RECORDS,
    REGISTRY,
    SESSION_POLICY,
    SETTINGS,
    SIGNALING,
    STORE,
    THROTTLE_POLICY,
    VISIT_ROOMS,
)
from telemed.web.metrics import Metrics
from telemed.web.middleware import authenticate, csrf, observe, security_headers

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"


async def i18n_ctx(app: web.Application) -> AsyncIterator[None]:
    """The patient pages' catalogues, compiled from their .po files (a bad one stops
    start-up); the messages the patient's script needs are read from the script."""
    app[CATALOGUES] = await asyncio.to_thread(load_catalogues, scripts=[STATIC / "js/visit.js"])
    yield


class StoreProbe:
    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store

    async def check(self) -> None:
        await self.store.ping()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[STORE] = store = await open_store(settings.store, base_dir=str(settings.base_dir))
    try:  # a missing or wrong key stops start-up here, with a message that says which
        provider = await open_key_provider(settings, store, app[CLOCK])
    except BaseException:
        await store.close()
        raise
    app[CLINIC] = clinic = Clinic(store, app[CLOCK])
    app[RECEPTION] = Reception(clinic, visit_policy(settings.visits))
    policy = record_policy(settings.records, recording_max_mib=settings.media.recording_max_mib)
    app[RECORDS] = RecordsOffice(clinic, Sealer(provider), policy)
    app[PROBES].append(StoreProbe(store))
    log.info("store open kind=%s", store.kind)
    yield
    await store.close()


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    mqtt = settings.mqtt
    supervisor = None
    if mqtt.embedded:
        supervisor = MosquittoSupervisor(mqtt.mosquitto, mqtt.port, settings.var_dir)
        await supervisor.start()
    app[BROKER] = access = await asyncio.to_thread(broker_access, mqtt, settings.var_dir)
    app[ENROLLMENT] = Enrollment(app[CLINIC], access)
    app[PROBES].append(
        BrokerProbe(access.host, access.port, access.username, access.password, access.tls)
    )
    yield
    if supervisor is not None:
        await supervisor.stop()


async def signaling_ctx(app: web.Application) -> AsyncIterator[None]:
    """Socket.IO: the live feed and the visit rooms. Stopping disconnects this process's
    clients while the store is still open (their disconnect handlers write to it)."""
    server, hub, rooms = app[SIGNALING], app[LIVE], app[VISIT_ROOMS]
    await server.start()
    await hub.start()
    yield
    await hub.stop()
    await rooms.shutdown()  # recordings finished and sealed, relay rooms closed
    await server.stop()
    await rooms.roster.close()


def add_signaling(app: web.Application, settings: Settings) -> None:
    """One Socket.IO server for the live feed (`/`) and the visits (`/visit`)."""
    app[SIGNALING] = server = SignalingServer(settings.signaling)
    server.attach(app)
    app[LIVE] = LiveHub(app, server.sio, lambda: app[STORE])
    url = settings.signaling.redis_url
    roster: Roster = RedisRoster(url) if url else LocalRoster()
    app[VISIT_ROOMS] = rooms = VisitRooms(app, settings, roster)
    server.sio.register_namespace(rooms)
    server.sio.quick_events(NAMESPACE, rooms.quick_event)


async def monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    """Alerting, fed by ingestion; the offline check runs where vitals are ingested."""
    monitor = Monitor(app[STORE], app[CLOCK], app[CLINIC], app[LIVE])
    app[MONITOR] = monitor
    task = None
    if app[SETTINGS].monitoring.ingest:
        task = asyncio.create_task(monitor.watch_offline(), name="monitor-offline")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def backup_ctx(app: web.Application) -> AsyncIterator[None]:
    """Scheduled backups (backup.interval_hours > 0): a missing backup key stops start-up."""
    settings = app[SETTINGS]
    hours = settings.backup.interval_hours
    if not hours:
        yield
        return
    key_file = settings.backup_key_file
    if not await asyncio.to_thread(key_file.exists):
        raise BackupKeyError(
            f"backup.interval_hours: scheduled backups need the backup key {key_file}: make it "
            "with `telemed backup new-key` (and keep a copy apart from the backups)"
        )
    metrics = app[METRICS]
    # its own connection: on SQLite a backup holds one read transaction for its whole
    # length, which must not wrap the server's own writes
    store = await open_store(settings.store, base_dir=str(settings.base_dir))

    def show(status: BackupStatus) -> None:
        if status.last_success is not None:
            metrics.backup_last_success.set(status.last_success.timestamp())
        metrics.backup_failing.set(1 if status.failing else 0)

    schedule = BackupSchedule(
        store,
        app[CLOCK],
        folder=settings.backup_folder,
        key_file=key_file,
        interval=timedelta(hours=hours),
        keep=settings.backup.keep,
        on_status=show,
    )
    task = asyncio.create_task(schedule.run(), name="backup-schedule")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.close()


async def demo_stream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The demo clinic's wearables, simulated, so a newcomer sees live vitals at once.

    Only on a SQLite store that holds the demo clinic (never on MongoDB, a production
    store), and only while the server runs.
    """
    settings, store = app[SETTINGS], app[STORE]
    count = settings.demo.stream_devices
    demo_clinic = await store.find_user_by_email(DEMO_MARKER) is not None
    if not (settings.demo.seed and count and store.kind == "sqlite" and demo_clinic):
        yield
        return
    devices = await enroll_or_reuse(
        app[ENROLLMENT], app[CLINIC], count, credentials_path(settings.var_dir)
    )
    task = asyncio.create_task(
        simulate(devices, rate_hz=0.5, duration=None, deteriorate=0.5, seed=1),
        name="demo-stream",
    )
    log.info("demo: %d simulated devices streaming", len(devices))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def ingest_settings(settings: Settings) -> IngestSettings:
    m = settings.monitoring
    node = m.node_id or socket.gethostname()
    return IngestSettings(
        client_id=f"telemed-ingest-{node}"[:64],
        # the embedded broker serves one server (var_dir is locked): no group to share
        share_group="" if settings.mqtt.embedded else "telemed",
        batch_max=m.batch_max,
        batch_wait=m.batch_wait_ms / 1000,
        receive_maximum=m.receive_maximum,
        max_age=timedelta(hours=m.max_age_hours),
        max_skew=timedelta(seconds=m.max_skew_seconds),
        max_bytes=m.max_payload_bytes,
    )


async def ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    """Consume vitals while the app runs; the task is cancelled and awaited on shutdown."""
    if not app[SETTINGS].monitoring.ingest:
        yield
        return
    ingestor = Ingestor(
        app[STORE],
        app[CLOCK],
        app[BROKER],
        ingest_settings(app[SETTINGS]),
        on_stored=app[MONITOR].observations_stored,
        on_status=app[MONITOR].on_device_status,
    )
    app[INGESTOR] = ingestor
    task = asyncio.create_task(ingestor.run(), name="ingest")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, *, clock: Clock = utcnow) -> web.Application:
    app = web.Application(
        middlewares=[observe, authenticate, csrf, compress_static], client_max_size=1024**2
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    security = settings.security
    app[SESSION_POLICY] = SessionPolicy(
        idle=timedelta(minutes=security.session_idle_minutes),
        absolute=timedelta(hours=security.session_absolute_hours),
    )
    lock = timedelta(minutes=security.lock_minutes)
    app[THROTTLE_POLICY] = LoginThrottling(
        account=ThrottlePolicy(security.throttle_delay_after, security.lock_account_after, lock),
        # an address (a clinic's NAT) slows down only after half its lock threshold
        address=ThrottlePolicy(
            max(security.throttle_delay_after, security.lock_address_after // 2),
            security.lock_address_after,
            lock,
        ),
    )
    app[REGISTRY] = registry = CollectorRegistry()
    app[METRICS] = Metrics.create(registry)
    app[PROBES] = []
    add_signaling(app, settings)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True  # as babel.cfg extracts them
    env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]  # the ext adds it
    app.on_response_prepare.append(security_headers)
    app.cleanup_ctx.append(i18n_ctx)
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(signaling_ctx)
    app.cleanup_ctx.append(broker_ctx)
    app.cleanup_ctx.append(monitor_ctx)
    app.cleanup_ctx.append(ingest_ctx)
    app.cleanup_ctx.append(backup_ctx)
    app.cleanup_ctx.append(demo_stream_ctx)
    for table in (
        auth.routes,
        pages.routes,
        api.routes,
        fhir.routes,
        ops.routes,
        vitals_api.routes,
        visits_api.routes,
        visit_pages.routes,
        monitoring_api.routes,
        monitoring_pages.routes,
        devices_pages.routes,
        records_api.routes,
    ):
        app.router.add_routes(table)
    static = app.router.add_static("/static/", STATIC, name="static", append_version=True)
    env.globals["static"] = lambda path: str(static.url_for(filename=path))
    return app
