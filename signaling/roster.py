"""Who of a visit is connected, and who is in its call, across every server process.

Socket.IO rooms deliver messages across processes (the Redis manager), but a process can
list only its own members of a room. The visit rooms need two answers that span all the
processes: "which sockets does this patient have open" (to mark them offline when the
last one goes, and to disconnect them all when the visit ends) and "who is in the call
now" (the `peer` of a `call` answer). A `Roster` answers them: in this process's memory
with one server process, in Redis with several.

A call has one seat per participant ("patient", "clinician", and "guest:{guest_id}" for
each guest admitted): a newer socket of the same participant takes the seat (a reloaded
page), and leaving frees the seat only for the socket that holds it. A guest's sockets
are counted like a patient's, under the key "{visit_id}/guest/{guest_id}".
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

KEY_TTL_SECONDS = 2 * 24 * 3600  # a crashed process's entries do not outlive a visit's link


class Roster(Protocol):
    async def join_visit(self, visit_id: str, sid: str) -> None:
        """A patient's socket of the visit is connected."""

    async def leave_visit(self, visit_id: str, sid: str) -> int:
        """It is gone; answers how many of the visit's patient sockets are left."""

    async def visit_sids(self, visit_id: str) -> list[str]:
        """The patient's connected sockets of the visit, in every process."""

    async def take_seat(
        self, visit_id: str, role: str, sid: str
    ) -> tuple[dict[str, str], str | None]:
        """`sid` sits in the call for `role`; answers the others seated (role -> sid) and
        the socket that held this seat before, if any."""

    async def leave_seat(self, visit_id: str, role: str, sid: str) -> bool:
        """Free the seat if `sid` holds it; answers whether it did."""

    async def seats(self, visit_id: str) -> dict[str, str]:
        """Who sits in the call now: seat -> sid."""

    async def clear_call(self, visit_id: str) -> None:
        """The call is over: every seat is free."""

    async def forget_visit(self, visit_id: str) -> None:
        """The visit ended: nothing of it is kept."""

    async def close(self) -> None: ...


class LocalRoster:
    """One server process: plain dictionaries."""

    def __init__(self) -> None:
        self._sockets: defaultdict[str, set[str]] = defaultdict(set)
        self._seats: defaultdict[str, dict[str, str]] = defaultdict(dict)

    async def join_visit(self, visit_id: str, sid: str) -> None:
        self._sockets[visit_id].add(sid)

    async def leave_visit(self, visit_id: str, sid: str) -> int:
        sockets = self._sockets.get(visit_id, set())
        sockets.discard(sid)
        if not sockets:
            self._sockets.pop(visit_id, None)
        return len(sockets)

    async def visit_sids(self, visit_id: str) -> list[str]:
        return sorted(self._sockets.get(visit_id, ()))

    async def take_seat(
        self, visit_id: str, role: str, sid: str
    ) -> tuple[dict[str, str], str | None]:
        seats = self._seats[visit_id]
        previous = seats.get(role)
        seats[role] = sid
        return {r: s for r, s in seats.items() if r != role}, previous

    async def leave_seat(self, visit_id: str, role: str, sid: str) -> bool:
        seats = self._seats.get(visit_id, {})
        if seats.get(role) != sid:
            return False
        del seats[role]
        if not seats:
            self._seats.pop(visit_id, None)
        return True

    async def seats(self, visit_id: str) -> dict[str, str]:
        return dict(self._seats.get(visit_id, {}))

    async def clear_call(self, visit_id: str) -> None:
        self._seats.pop(visit_id, None)

    async def forget_visit(self, visit_id: str) -> None:
        self._seats.pop(visit_id, None)
        self._sockets.pop(visit_id, None)

    async def close(self) -> None:
        return None


# Free a seat only if this socket still holds it (atomically, in Redis).
_LEAVE_SEAT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class RedisRoster:
    """Several server processes: a set of sockets and a hash of seats per visit."""

    def __init__(self, url: str, prefix: str = "telemed:visit") -> None:
        from redis import asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._leave_seat = self._redis.register_script(_LEAVE_SEAT)

    def _sockets(self, visit_id: str) -> str:
        return f"{self._prefix}:{visit_id}:sockets"

    def _seats(self, visit_id: str) -> str:
        return f"{self._prefix}:{visit_id}:seats"

    async def join_visit(self, visit_id: str, sid: str) -> None:
        key = self._sockets(visit_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.sadd(key, sid).expire(key, KEY_TTL_SECONDS).execute()

    async def leave_visit(self, visit_id: str, sid: str) -> int:
        key = self._sockets(visit_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            _, left = await pipe.srem(key, sid).scard(key).execute()
        return int(left)

    async def visit_sids(self, visit_id: str) -> list[str]:
        return sorted(await self._redis.smembers(self._sockets(visit_id)))

    async def take_seat(
        self, visit_id: str, role: str, sid: str
    ) -> tuple[dict[str, str], str | None]:
        key = self._seats(visit_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, role).hset(key, role, sid).expire(key, KEY_TTL_SECONDS).hgetall(key)
            previous, _, _, seats = await pipe.execute()
        return {r: s for r, s in seats.items() if r != role}, previous

    async def leave_seat(self, visit_id: str, role: str, sid: str) -> bool:
        return bool(await self._leave_seat(keys=[self._seats(visit_id)], args=[role, sid]))

    async def seats(self, visit_id: str) -> dict[str, str]:
        return dict(await self._redis.hgetall(self._seats(visit_id)))

    async def clear_call(self, visit_id: str) -> None:
        await self._redis.delete(self._seats(visit_id))

    async def forget_visit(self, visit_id: str) -> None:
        await self._redis.delete(self._seats(visit_id), self._sockets(visit_id))

    async def close(self) -> None:
        await self._redis.aclose()
