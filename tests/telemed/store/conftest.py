"""Fixtures for the store contract: the same tests against every adapter.

`backend` is parametrized: SQLite (a file under the test's tmp_path), the MongoDB adapter
against nx-27017 (a MongoDB wire-protocol server started once per session on a free
loopback port), the same with the time-series code path (the key log, no unique index)
over the plain collection nx-27017 makes, and the MongoDB adapter against a real MongoDB
when `TELEMED_TEST_MONGODB_URI` is set. Every test gets a fresh database, dropped
afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from telemed.settings import StoreSettings
from telemed.store import Store, open_store
from telemed.store.mongo import MongoStore, ObservationLayout
from tests.conftest import free_port

MONGODB_URI_ENV = "TELEMED_TEST_MONGODB_URI"
NX_START_TIMEOUT = 15.0  # seconds
NX_START_ATTEMPTS = 3  # a free port can be taken by someone else before nx binds it
NX_STOP_TIMEOUT = 10.0
NX = "nx"
NX_KEY_LOG = "nx-key-log"  # a backend named NX, storing observations through the key log
MONGODB = "mongodb"
SQLITE = "sqlite"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=NX_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_nx(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start nx-27017 in the foreground on a free port; return once it accepts."""
    port = free_port()
    output = workdir / "nx.out"
    command = [
        sys.executable,
        "-c",
        "import sys; from nx_27017.nx_27017 import main; sys.exit(main())",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(workdir / "data"),
        "--log-file",
        str(workdir / "nx.log"),
        "--pid-file",
        str(workdir / "nx.pid"),
    ]
    with output.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    deadline = time.monotonic() + NX_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _accepts(port):
            return proc, port
        time.sleep(0.05)
    _stop(proc)
    tail = output.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"nx-27017 did not start on port {port} (exit {proc.returncode}):\n{tail}")


@pytest.fixture(scope="session")
def nx_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running nx-27017 for the whole session; yields its mongodb:// URI."""
    failures: list[str] = []
    for _ in range(NX_START_ATTEMPTS):
        workdir = tmp_path_factory.mktemp("nx-27017")
        try:
            proc, port = _start_nx(workdir)
        except RuntimeError as exc:
            failures.append(str(exc))
            continue
        try:
            yield f"mongodb://127.0.0.1:{port}/"
        finally:
            _stop(proc)
        return
    pytest.fail("\n\n".join(failures))


class Backend:
    """Opens stores of one kind on one fresh database; closes them and drops it at the end."""

    def __init__(self, name: str, opener: Callable[[], Awaitable[Store]]) -> None:
        self.name = name
        self._opener = opener
        self._open: list[Store] = []

    async def open(self) -> Store:
        store = await self._opener()
        self._open.append(store)
        return store

    async def close(self, store: Store) -> None:
        self._open.remove(store)
        await store.close()

    async def close_all(self) -> None:
        while self._open:
            await self._open.pop().close()


async def _open_key_log(uri: str, database: str) -> Store:
    """The time-series code path over whatever collection the server makes."""
    return await MongoStore.open(
        uri,
        database,
        observation_layout=ObservationLayout.TIMESERIES,
        timeseries_over_plain=True,
    )


def _mongo_backend(
    name: str, uri: str, *, key_log: bool = False
) -> tuple[Backend, Callable[[], Awaitable[None]]]:
    database = f"telemed_test_{uuid.uuid4().hex}"
    settings = StoreSettings(url=uri, database=database)

    async def drop() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=5_000
        )
        try:
            await client.drop_database(database)
        finally:
            await client.close()

    if key_log:
        return Backend(name, lambda: _open_key_log(uri, database)), drop
    return Backend(name, lambda: open_store(settings)), drop


@pytest_asyncio.fixture(
    params=[
        SQLITE,
        pytest.param(NX, marks=pytest.mark.mongo),
        pytest.param(NX_KEY_LOG, marks=pytest.mark.mongo),
        pytest.param(MONGODB, marks=pytest.mark.mongo),
    ]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with backend_of(request.param, request, tmp_path / "store.db") as backend:
        yield backend


@contextlib.asynccontextmanager
async def backend_of(
    name: str, request: pytest.FixtureRequest, sqlite_path: Path
) -> AsyncIterator[Backend]:
    """A backend named as `backend`'s parameters are, on a fresh database (SQLite: the
    file `sqlite_path`); its stores are closed and its database dropped at the end."""
    drop: Callable[[], Awaitable[None]] | None = None
    if name == SQLITE:
        settings = StoreSettings(url=f"sqlite:///{sqlite_path}", database="")
        backend = Backend(name, lambda: open_store(settings))
    elif name == NX:
        backend, drop = _mongo_backend(name, request.getfixturevalue("nx_uri"))
    elif name == NX_KEY_LOG:
        # named NX: the contract's nx-27017 exceptions apply to it as well
        backend, drop = _mongo_backend(NX, request.getfixturevalue("nx_uri"), key_log=True)
    else:
        uri = os.environ.get(MONGODB_URI_ENV, "")
        if not uri:
            pytest.skip(f"{MONGODB_URI_ENV} is not set: no real MongoDB to test against")
        backend, drop = _mongo_backend(name, uri)
    try:
        yield backend
    finally:
        await backend.close_all()
        if drop is not None:
            await drop()


@pytest_asyncio.fixture
async def store(backend: Backend) -> Store:
    """A fresh, empty store of the backend's kind (closed by `backend`)."""
    return await backend.open()


@pytest_asyncio.fixture
async def other_backend(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    """Another backend of `backend`'s kind, on a database of its own: `backend.open()`
    opens the same database again, this opens a different one."""
    name: str = request.node.callspec.params["backend"]
    async with backend_of(name, request, tmp_path / "other.db") as other:
        yield other


@pytest.fixture(autouse=True)
def collect_driver_garbage() -> Iterator[None]:
    """PyMongo's server monitors release their sockets only when collected; collecting
    after each test closes them cleanly instead of a ResourceWarning in a later test."""
    yield
    gc.collect()
