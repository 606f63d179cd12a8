"""devices/paho_properties.py: paho's Properties with shared tables behave as paho's own,
and a paho upgrade that changes what the patch relies on fails here, loudly."""

from __future__ import annotations

import inspect

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices import paho_properties
from devices.paho_properties import ATTRIBUTES, built_by_paho, share_tables

PACKET_TYPES = [
    PacketTypes.CONNECT,
    PacketTypes.CONNACK,
    PacketTypes.PUBLISH,
    PacketTypes.PUBACK,
    PacketTypes.SUBSCRIBE,
    PacketTypes.DISCONNECT,
    PacketTypes.WILLMESSAGE,
]


@pytest.fixture
def shared() -> None:
    share_tables()


def test_paho_still_builds_properties_as_the_patch_expects() -> None:
    """If this fails, paho-mqtt changed `Properties`: update devices/paho_properties.py."""
    for packet_type in PACKET_TYPES:
        assert set(vars(built_by_paho(packet_type))) == ATTRIBUTES
    assert list(inspect.signature(Properties.unpack).parameters) == ["self", "buffer"]
    assert "self.clear()" in inspect.getsource(Properties.unpack)


@pytest.mark.usefixtures("shared")
def test_a_shared_instance_has_the_tables_paho_builds() -> None:
    assert Properties.__init__ is not paho_properties._ORIGINAL_INIT
    for packet_type in PACKET_TYPES:
        assert vars(Properties(packet_type)) == vars(built_by_paho(packet_type))


@pytest.mark.usefixtures("shared")
def test_properties_pack_and_unpack_as_with_paho_alone() -> None:
    for make in (Properties, built_by_paho):
        sent = make(PacketTypes.PUBLISH)
        sent.MessageExpiryInterval = 30
        sent.ContentType = "application/senml+json"
        sent.UserProperty = ("k", "v")
        sent.UserProperty = ("k2", "v2")
        got = make(PacketTypes.PUBLISH)
        got.ResponseTopic = "left/over"  # unpack must clear what was there before
        got.unpack(sent.pack())
        assert got.json() == {
            "MessageExpiryInterval": 30,
            "ContentType": "application/senml+json",
            "UserProperty": [("k", "v"), ("k2", "v2")],
        }
        got.unpack(make(PacketTypes.PUBLISH).pack())  # none at all
        assert got.isEmpty()
        assert set(vars(got)) == ATTRIBUTES


@pytest.mark.usefixtures("shared")
def test_instances_do_not_share_their_properties() -> None:
    one, two = Properties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    one.UserProperty = ("a", "1")
    one.TopicAlias = 3
    assert two.isEmpty()
    assert str(two) == "[]"
    with pytest.raises(Exception, match="does not apply"):  # paho's checks still run
        two.SessionExpiryInterval = 5


def test_a_changed_paho_constructor_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def grown(self: Properties, packetType: int) -> None:
        original(self, packetType)  # type: ignore[no-untyped-call]
        object.__setattr__(self, "cache", {})

    original = paho_properties._ORIGINAL_INIT
    monkeypatch.setattr(paho_properties, "_ORIGINAL_INIT", grown)
    monkeypatch.setattr(Properties, "__init__", original)
    with pytest.raises(RuntimeError, match="must be updated"):
        share_tables()
