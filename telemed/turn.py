"""ICE servers for a visit's participants, with TURN REST credentials.

coturn's `use-auth-secret` scheme (draft-uberti-behave-turn-rest): the username is
`expiry:id`, where expiry is a Unix time; the password is
base64(HMAC-SHA1(static-auth-secret, username)). coturn checks the HMAC and refuses the
username once its expiry has passed, so the server never tells coturn who is allowed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from telemed.settings import WebRtcSettings, split_urls


@dataclass(frozen=True, slots=True)
class TurnCredential:
    username: str
    password: str
    expires_at: datetime


def turn_credential(
    secret: str, participant: str, *, now: datetime, ttl: timedelta
) -> TurnCredential:
    """The credential coturn accepts for `participant` until `now + ttl`."""
    if ":" in participant:
        raise ValueError("a TURN participant id must not contain ':'")
    expires = now + ttl
    username = f"{int(expires.timestamp())}:{participant}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires)


def ice_servers(settings: WebRtcSettings, participant: str, now: datetime) -> list[dict[str, Any]]:
    """RTCPeerConnection's `iceServers` for one participant of one visit."""
    servers: list[dict[str, Any]] = []
    stun = split_urls(settings.stun_urls)
    if stun:
        servers.append({"urls": stun})
    turn = split_urls(settings.turn_urls)
    if turn:
        credential = turn_credential(
            settings.turn_secret.reveal(),
            participant,
            now=now,
            ttl=timedelta(minutes=settings.turn_ttl_minutes),
        )
        servers.append(
            {"urls": turn, "username": credential.username, "credential": credential.password}
        )
    return servers
