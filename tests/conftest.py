"""Shared fixtures: real servers on loopback ports chosen at run time.

- `mosquitto`: one real Mosquitto for the session, on a free port.
- `settings`: the repository's config.toml with test overrides (temp var dir, free ports).
- `clock`: a clock the test moves by hand, so expiry is tested without sleeping.
- `client`: the real app on aiohttp's test server, its store a SQLite file in tmp_path.
- `people`: a small clinic with two care teams, created through the same code as the CLI.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from telemed.accounts import User
from telemed.app import create_app
from telemed.clinic import OPERATOR, Clinic
from telemed.clock import truncate
from telemed.settings import Settings, load_settings
from tests.media.peers import Clip, encode_clip

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if found is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    return found


@pytest_asyncio.fixture(autouse=True)
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running: every task needs an owner that ends it."""
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in left:
        task.cancel()
    assert not left, f"tasks left running: {[t.get_name() for t in left]}"


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real Mosquitto on a free loopback port for the whole session; yields the port."""
    folder = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (folder / "mosquitto.log").open("wb")
    process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stderr=log, stdout=log)
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes], within: float = 10.0) -> None:
    """Poll until `port` accepts a connection; fail at once if the process died."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listened on port {port} within {within} s")


def make_settings(tmp_path: Path, broker_port: int, **env: str) -> Settings:
    """config.toml as shipped, with the overrides a test needs (as TELEMED_* variables)."""
    environ = {
        "TELEMED_VAR_DIR": str(tmp_path / "var"),
        "TELEMED_STORE_URL": f"sqlite:///{tmp_path / 'var' / 'telemed.db'}",
        "TELEMED_MQTT_EMBEDDED": "false",
        "TELEMED_MQTT_PORT": str(broker_port),
        "TELEMED_SERVER_PORT": "0",
        "TELEMED_DEMO_SEED": "false",
        "TELEMED_MONITORING_INGEST": "false",  # the ingestion tests turn it on
        **env,
    }
    return load_settings(ROOT / "config.toml", environ)


@pytest.fixture
def settings(tmp_path: Path, mosquitto: int) -> Settings:
    return make_settings(tmp_path, mosquitto)


class FakeClock:
    def __init__(self) -> None:
        self.now = truncate(datetime(2026, 11, 29, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now = truncate(self.now + timedelta(**delta))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def client(
    aiohttp_client: object, settings: Settings, clock: FakeClock
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = create_app(settings, clock=clock)
    test_client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    yield test_client


@dataclass
class People:
    admin: User
    doctor_a: User
    nurse_a: User
    doctor_b: User
    patient_1: User  # in team A (doctor_a, nurse_a)
    patient_2: User  # in team B (doctor_b)


@pytest_asyncio.fixture
async def people(client: TestClient) -> People:  # type: ignore[type-arg]
    from telemed.web.keys import CLINIC

    clinic: Clinic = client.app[CLINIC]

    async def add(role: str, name: str, email: str) -> User:
        return await clinic.add_user(OPERATOR, role=role, email=email, name=name, password=PASSWORD)

    p = People(
        admin=await add("admin", "Ada Admin", "admin@example.org"),
        doctor_a=await add("doctor", "Dr Alice", "alice@example.org"),
        nurse_a=await add("nurse", "Nurse Ann", "ann@example.org"),
        doctor_b=await add("doctor", "Dr Bob", "bob@example.org"),
        patient_1=await add("patient", "Paula One", "paula@example.org"),
        patient_2=await add("patient", "Peter Two", "peter@example.org"),
    )
    await clinic.add_care_team_member(OPERATOR, p.patient_1.id, p.doctor_a.id)
    await clinic.add_care_team_member(OPERATOR, p.patient_1.id, p.nurse_a.id)
    await clinic.add_care_team_member(OPERATOR, p.patient_2.id, p.doctor_b.id)
    return p


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no CSRF token"
    return match.group(1)


async def login(client: TestClient, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def,type-arg]
    """Sign in through the real form; returns the final response (redirects not followed)."""
    page = await client.get("/login")
    token = csrf_from(await page.text())
    return await client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token},
        allow_redirects=False,
    )


async def page_csrf(client: TestClient, path: str = "/dashboard") -> str:  # type: ignore[type-arg]
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return csrf_from(await response.text())


@pytest.fixture(scope="session")
def clip() -> Clip:
    """VP8 and Opus frames, encoded once, that relay tests' client peers replay."""
    return encode_clip()
