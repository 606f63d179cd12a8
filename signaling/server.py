"""The one Socket.IO server of a process, shared by the live dashboard feed (namespace
`/`) and the video visits (namespace `/visit`).

- With `signaling.redis_url` set, rooms, emits, `close_room` and `disconnect` reach every
  server process through python-socketio's `AsyncRedisManager`; otherwise they stay in
  this process.
- `max_http_buffer_size` is `signaling.max_event_bytes`: the engine refuses (closes the
  connection of) a larger message before any handler sees it.
- Loggers are off: nothing of an event's content (media descriptions, chat) may reach a
  log line.
- A client's events are handled one after the other, in the order they came, in the
  task that reads its socket (`async_handlers=False`): no task per event, and a sender's
  order holds by construction. A slow event (a store write) delays only that client's
  next events, which waited for it anyway (the visit rooms' per-connection lock).
- Packets, emits and acknowledgements go through `signaling.wire` (python-socketio's
  classes without the per-event work a relayed signal does not need).
- Engine.IO starts per-socket tasks (pings, and its service task) and forgets them; this
  server keeps a reference to each, so that `stop` cancels and awaits what is left. A
  WebSocket's writer task belongs to the request that serves it (`signaling.websocket`).
- The garbage collector, while the server runs, collects its young generation every
  `GC_THRESHOLDS` allocations instead of CPython's 700 (see `_tune_collector`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import socketio
from aiohttp import web

from signaling import wire
from telemed.settings import SignalingSettings

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 10.0  # seconds for the Redis manager to subscribe at start-up
STOP_TIMEOUT = 10.0
# Each connected socket kept about six tasks alive in python-engineio and aiohttp (its
# reader, writer, ping, and their `wait_for`s; three since `signaling.websocket`), some
# re-created every ping (25 s): with CPython's thresholds (700, 10, 10) the ones that
# live a second or more reach the oldest generation fast enough to start a full
# collection every 5-10 s at 5,000 sockets, and a full collection walks every object
# of every socket: 1-2 s with the event loop stopped
# (measured in bench/signaling.py: relay p99 1.3 s). With a young generation of 10,000
# allocations, short-lived objects (a relayed event's task, packets, dicts) die young,
# and a full collection waits for 100 middle ones (CPython still also waits until the
# objects promoted since the last one reach a quarter of the old generation).
GC_THRESHOLDS = (10_000, 10, 100)


class SignalingServer:
    def __init__(self, settings: SignalingSettings) -> None:
        self.settings = settings
        wire.check_library()
        self.manager: Any = None
        rooms: socketio.AsyncManager = wire.LocalRooms()
        if settings.redis_url:
            self.manager = rooms = wire.SharedRooms(settings.redis_url)
        self.sio: Any = wire.Server(
            async_mode="aiohttp",
            client_manager=rooms,
            serializer=wire.Packet,
            async_handlers=False,
            logger=False,
            engineio_logger=False,
            max_http_buffer_size=settings.max_event_bytes,
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._own_engineio_tasks()
        self._gc_thresholds: tuple[int, int, int] | None = None

    @property
    def shared(self) -> bool:
        """Rooms are shared with other processes (through Redis)."""
        return self.manager is not None

    def attach(self, app: web.Application) -> None:
        """Add the `/socket.io/` routes (before the app starts)."""
        self.sio.attach(app)

    def _own_engineio_tasks(self) -> None:
        start = self.sio.eio.start_background_task

        def owned(target: Any, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task: asyncio.Task[Any] = start(target, *args, **kwargs)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return task

        self.sio.eio.start_background_task = owned

    async def start(self) -> None:
        """Start the client manager now (python-socketio would on the first connection),
        so that emits from other processes reach this one from the start."""
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.sio.manager.initialize()
        if self.manager is not None:
            try:
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                    await self._subscribed()
            except TimeoutError:
                raise RuntimeError(
                    f"signaling.redis_url: no Redis subscription within {SUBSCRIBE_TIMEOUT:g} s"
                ) from None
            log.info("signaling: rooms shared through Redis")
        self._tune_collector()

    def _tune_collector(self) -> None:
        """Set `GC_THRESHOLDS` for the process (`stop` puts back what was there): the
        collector's thresholds are the interpreter's, and this server is what fills its
        heap with thousands of long-lived sockets."""
        if self._gc_thresholds is None:
            self._gc_thresholds = gc.get_threshold()
            gc.set_threshold(*GC_THRESHOLDS)

    def _restore_collector(self) -> None:
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)
            self._gc_thresholds = None

    async def _subscribed(self) -> None:
        """Wait until the manager's listener has sent SUBSCRIBE for its channel (redis-py
        marks the channel once the command is written); python-socketio exposes no event
        for it, so look at its pub/sub object between short waits."""
        while True:
            pubsub = self.manager.pubsub
            if pubsub is not None and pubsub.subscribed:
                return
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Disconnect every client of this process, stop the engine, cancel and await its
        tasks (the Redis listener among them), and close the Redis connections."""
        for namespace in list(self.sio.manager.get_namespaces()):
            for sid, _ in list(self.sio.manager.get_participants(namespace, None)):
                await self.sio.disconnect(sid, namespace=namespace, ignore_queue=True)
        await self.sio.shutdown()
        for task in list(self._background):
            task.cancel()
        async with asyncio.timeout(STOP_TIMEOUT):
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.manager is not None:
            if self.manager.pubsub is not None:
                await self.manager.pubsub.aclose()
            if self.manager.redis is not None:
                await self.manager.redis.aclose()
        self._restore_collector()
