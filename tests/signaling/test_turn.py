"""TURN REST credentials (telemed/turn.py) as coturn's `use-auth-secret` checks them."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from telemed.settings import Secret, WebRtcSettings
from telemed.turn import ice_servers, turn_credential

NOW = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
SECRET = "coturn-static-secret"
# computed outside Python, with OpenSSL:
#   printf '%s' 1767229200:v1-patient | openssl dgst -sha1 -hmac coturn-static-secret -binary \
#     | base64
KNOWN_PASSWORD = "IdvMT7R9lqOb0DHL1F9hp5t1Sjw="


def webrtc(**changes: object) -> WebRtcSettings:
    values: dict[str, object] = {
        "stun_urls": "stun:turn.example.org:3478",
        "turn_urls": "turn:turn.example.org:3478?transport=udp, turns:turn.example.org:5349",
        "turn_secret": Secret(SECRET),
        "turn_ttl_minutes": 60,
        **changes,
    }
    return WebRtcSettings(**values)  # type: ignore[arg-type]


def test_the_credential_matches_a_known_vector() -> None:
    credential = turn_credential(SECRET, "v1-patient", now=NOW, ttl=timedelta(minutes=60))
    assert credential.username == "1767229200:v1-patient"  # expiry:id, expiry in Unix time
    assert credential.password == KNOWN_PASSWORD
    assert credential.expires_at == NOW + timedelta(minutes=60)


def test_the_password_is_the_hmac_sha1_of_the_username() -> None:
    credential = turn_credential("s3cret", "abc-clinician", now=NOW, ttl=timedelta(hours=4))
    digest = hmac.new(b"s3cret", credential.username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(credential.password) == digest
    expiry = int(credential.username.split(":")[0])
    assert expiry == int((NOW + timedelta(hours=4)).timestamp())


def test_a_participant_id_with_a_colon_is_refused() -> None:
    with pytest.raises(ValueError, match="':'"):
        turn_credential(SECRET, "v1:patient", now=NOW, ttl=timedelta(minutes=5))


def test_ice_servers_carry_stun_and_each_participants_turn_credential() -> None:
    servers = ice_servers(webrtc(), "v1-patient", NOW)
    assert servers[0] == {"urls": ["stun:turn.example.org:3478"]}
    assert servers[1] == {
        "urls": ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"],
        "username": "1767229200:v1-patient",
        "credential": KNOWN_PASSWORD,
    }
    other = ice_servers(webrtc(), "v1-clinician", NOW)[1]
    assert other["username"] == "1767229200:v1-clinician"
    assert other["credential"] != KNOWN_PASSWORD


def test_without_stun_or_turn_there_are_no_ice_servers() -> None:
    assert ice_servers(webrtc(stun_urls="", turn_urls="", turn_secret=Secret("")), "v", NOW) == []
    assert ice_servers(webrtc(turn_urls=""), "v", NOW) == [{"urls": ["stun:turn.example.org:3478"]}]
