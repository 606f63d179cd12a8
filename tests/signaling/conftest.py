"""Fixtures for the visit rooms: a real Redis, booked visits, and Socket.IO clients that
behave as the patient's page and the doctor's dashboard do.

- `redis_server`: one real `redis-server` on a free loopback port for the session.
- `signaling_env`: TELEMED_* overrides for the app under test (a test overrides it, or
  parametrizes it indirectly, e.g. to share rooms through Redis or to tighten limits).
- `book`: a visit booked and claimed as the patient's browser would; its cookie.
- `sockets`: opens `VisitSocket`s against the test server and closes them all at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import socketio
from aiohttp.test_utils import TestClient

from telemed import sessions
from telemed.clinic import OPERATOR
from telemed.reception import Reception
from telemed.settings import Settings
from telemed.visits import Visit
from telemed.web.keys import RECEPTION
from tests.conftest import People, free_port, login, make_settings, wait_for_port

Client = TestClient  # type: ignore[type-arg]
WAIT = 10.0
NAMESPACE = "/visit"


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    if found is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    return found


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis on a free loopback port for the session; yields its URL."""
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = (folder / "redis.log").open("wb")
    process = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def signaling_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Parametrize indirectly: "redis" shares rooms through `redis_server`, a dict sets
    the variables it holds; without a parameter, config.toml as shipped."""
    wanted = getattr(request, "param", {})
    if wanted == "redis":
        return {"TELEMED_SIGNALING_REDIS_URL": request.getfixturevalue("redis_server")}
    return dict(wanted) if isinstance(wanted, dict) else {}


SHARING = pytest.mark.parametrize("signaling_env", ["in-process", "redis"], indirect=True)


@pytest.fixture
def settings(tmp_path: Path, mosquitto: int, signaling_env: dict[str, str]) -> Settings:
    return make_settings(tmp_path, mosquitto, **signaling_env)


@dataclass(frozen=True, slots=True)
class Booked:
    visit: Visit
    token: str
    cookie: str  # the value of `telemed_visit`: "{visit_id}.{pass}"

    @property
    def id(self) -> str:
        return self.visit.id


@pytest.fixture
def book(client: Client, people: People) -> Callable[..., Awaitable[Booked]]:
    async def book_one(patient_id: str = "", clinician_id: str = "") -> Booked:
        reception: Reception = client.app[RECEPTION]
        booking = await reception.book(
            OPERATOR,
            patient_id=patient_id or people.patient_1.id,
            clinician_id=clinician_id or people.doctor_a.id,
        )
        visit, held_pass = await reception.claim(booking.token, "test")
        return Booked(visit, booking.token, f"{visit.id}.{held_pass}")

    return book_one


class VisitSocket:
    """A Socket.IO client on `/visit`, recording every event it receives."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.queues: defaultdict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        self.refused: asyncio.Queue[Any] = asyncio.Queue()
        self.gone = asyncio.Event()
        for name in (
            *("visit", "queue", "call", "peer", "signal", "chat", "media", "quality"),
            *("media_mode", "layout", "recording", "recording_consent", "refused"),
        ):
            self.sio.on(name, self._recorder(name), namespace=NAMESPACE)
        self.sio.on("call_over", self._recorder("call_over"), namespace=NAMESPACE)
        self.sio.on("connect_error", self._refused, namespace=NAMESPACE)
        self.sio.on("disconnect", self._gone, namespace=NAMESPACE)

    def _recorder(self, name: str) -> Callable[[Any], Awaitable[None]]:
        async def record(data: Any) -> None:
            await self.queues[name].put(data)

        return record

    async def _refused(self, data: Any) -> None:
        await self.refused.put(data)

    async def _gone(self, *reason: Any) -> None:
        self.gone.set()

    @property
    def sid(self) -> str:
        sid = self.sio.get_sid(NAMESPACE)
        assert sid is not None
        return str(sid)

    async def connect(
        self,
        url: str,
        cookie: str,
        *,
        transport: str | list[str] = "websocket",
        headers: dict[str, str] | None = None,
        auth: dict[str, Any] | None = None,
    ) -> None:
        await self.sio.connect(
            url,
            auth=auth,
            headers={**({"Cookie": cookie} if cookie else {}), **(headers or {})},
            namespaces=[NAMESPACE],
            transports=[transport] if isinstance(transport, str) else transport,
            wait_timeout=WAIT,
        )

    async def next(self, name: str) -> Any:
        async with asyncio.timeout(WAIT):
            return await self.queues[name].get()

    async def until(self, name: str, check: Callable[[Any], bool]) -> Any:
        """The first `name` event (from now on in the queue) for which `check` holds."""
        async with asyncio.timeout(WAIT):
            while True:
                data = await self.queues[name].get()
                if check(data):
                    return data

    async def call(self, event: str, *data: Any) -> Any:
        """Send `event` with `data` (one object, as the pages do; or none, or several, as
        a broken client might) and return the server's acknowledgement."""
        args: Any = data[0] if len(data) == 1 else data
        return await self.sio.call(event, args, namespace=NAMESPACE, timeout=WAIT)

    async def fire(self, event: str, data: Any) -> asyncio.Future[Any]:
        """Send without waiting for the answer; the future gets the acknowledgement."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def acknowledged(*args: Any) -> None:
            if not answer.done():
                answer.set_result(args[0] if args else None)

        await self.sio.emit(event, data, namespace=NAMESPACE, callback=acknowledged)
        return answer

    async def send(self, event: str, data: Any) -> None:
        """Send without an acknowledgement, as the pages send `signal`: the server answers
        only a refusal, with a `refused` event."""
        await self.sio.emit(event, data, namespace=NAMESPACE)

    async def wait_gone(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.gone.wait()

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        http = self.sio.eio.http  # a refused polling connect leaves Engine.IO's session open
        if http is not None and not http.closed:
            await http.close()


@dataclass
class Sockets:
    client: Client
    opened: list[VisitSocket]

    @property
    def url(self) -> str:
        return str(self.client.make_url("/"))

    async def patient(self, booked: Booked | str, **options: Any) -> VisitSocket:
        """`options`: `transport` ("websocket", "polling", or a list: ["polling",
        "websocket"] upgrades), extra `headers`, `auth`."""
        cookie = booked.cookie if isinstance(booked, Booked) else booked
        return await self._open(f"telemed_visit={cookie}", **options)

    async def guest(self, cookie: str, **options: Any) -> VisitSocket:
        """A guest's page: `cookie` is the value of `telemed_guest`."""
        return await self._open(f"telemed_guest={cookie}", **options)

    async def clinician(self, email: str) -> VisitSocket:
        session = (await login(self.client, email)).cookies[sessions.COOKIE].value
        return await self._open(f"{sessions.COOKIE}={session}")

    async def anonymous(self) -> VisitSocket:
        return await self._open("")

    async def _open(self, cookie: str, **options: Any) -> VisitSocket:
        socket = VisitSocket()
        self.opened.append(socket)
        await socket.connect(self.url, cookie, **options)
        return socket


@pytest_asyncio.fixture
async def sockets(client: Client) -> AsyncIterator[Sockets]:
    opened: list[VisitSocket] = []
    yield Sockets(client, opened)
    for socket in opened:
        await socket.close()
