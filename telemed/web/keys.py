"""Typed keys for what the composition root stores on the app (no module globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from devices.broker import BrokerAccess
from devices.enrollment import Enrollment
from devices.ingest import Ingestor
from devices.monitor import Monitor
from telemed.clinic import Clinic
from telemed.clock import Clock
from telemed.i18n import Catalogues
from telemed.probes import Probe
from telemed.reception import Reception
from telemed.records_office import RecordsOffice
from telemed.sessions import SessionPolicy
from telemed.settings import Settings
from telemed.store import Store
from telemed.throttle import LoginThrottling
from telemed.web.metrics import Metrics

if TYPE_CHECKING:
    from signaling.live import LiveHub
    from signaling.server import SignalingServer
    from signaling.visits import VisitRooms

SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
STORE: web.AppKey[Store] = web.AppKey("store")
CLINIC = web.AppKey("clinic", Clinic)
SESSION_POLICY = web.AppKey("session_policy", SessionPolicy)
THROTTLE_POLICY = web.AppKey("throttle_policy", LoginThrottling)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", Metrics)
PROBES = web.AppKey("probes", list[Probe])
BROKER = web.AppKey("broker", BrokerAccess)
ENROLLMENT = web.AppKey("enrollment", Enrollment)
INGESTOR = web.AppKey("ingestor", Ingestor)
MONITOR = web.AppKey("monitor", Monitor)
LIVE: web.AppKey[LiveHub] = web.AppKey("live")  # LiveHub imports the web layer itself
SIGNALING: web.AppKey[SignalingServer] = web.AppKey("signaling")
VISIT_ROOMS: web.AppKey[VisitRooms] = web.AppKey("visit_rooms")  # imports the web layer too
RECEPTION = web.AppKey("reception", Reception)
CATALOGUES = web.AppKey("catalogues", Catalogues)  # the patient pages' languages
RECORDS = web.AppKey("records", RecordsOffice)
