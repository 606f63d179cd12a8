"""paho-mqtt's MQTT 5 `Properties`, made cheap to create.

Why this module exists: paho makes a `Properties` for every PUBLISH it receives, and its
constructor builds its two lookup tables (27 property names, 27 property types) afresh,
each assignment through its own validating `__setattr__`; `unpack` then calls `clear`,
which looks for each of the 27 names with `hasattr`. On the ingest hot path that was a
sixth of the event loop, for a PUBLISH that carries no property at all.

The tables are constants that paho only reads. `share_tables` makes every `Properties`
take the same ones, built once by paho's own constructor, and lets `clear` skip an
instance that holds no property. Every other method, and what any of them returns, is
paho's. This patches the class for the whole process, once, and refuses to (raising
RuntimeError at start-up) if paho's constructor no longer sets exactly the attributes it
relies on; tests/devices/test_paho_properties.py also fails loudly on a paho upgrade that
changes them. devices/manual_ack.py reaches into paho the same way, for the same reason.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# What paho's constructor sets (in its instance dict): the packet type and three tables.
TABLES = ("types", "names", "properties")
ATTRIBUTES = frozenset({"packetType", *TABLES})

_ORIGINAL_INIT = Properties.__init__
_ORIGINAL_CLEAR = Properties.clear


def built_by_paho(packet_type: int) -> Properties:
    """A `Properties` made by paho's own constructor, whatever `share_tables` did."""
    properties = Properties.__new__(Properties)
    _ORIGINAL_INIT(properties, packet_type)  # type: ignore[no-untyped-call]
    return properties


def share_tables() -> None:
    """Patch `Properties` (idempotent); raise RuntimeError if paho's layout changed."""
    if Properties.__init__ is _shared_init:
        return
    prototype = built_by_paho(PacketTypes.PUBLISH)
    if set(vars(prototype)) != ATTRIBUTES:
        raise RuntimeError(
            f"paho's Properties now sets {sorted(vars(prototype))}, not "
            f"{sorted(ATTRIBUTES)}: devices/paho_properties.py must be updated for this "
            f"paho-mqtt version"
        )
    _SHARED.update({name: vars(prototype)[name] for name in TABLES})
    Properties.__init__ = _shared_init  # type: ignore[method-assign]
    Properties.clear = _clear  # type: ignore[method-assign]


_SHARED: dict[str, Any] = {}


def _shared_init(self: Properties, packetType: int) -> None:  # paho names it so
    attributes = vars(self)
    attributes["packetType"] = packetType
    attributes.update(_SHARED)


def _clear(self: Properties) -> None:
    if len(vars(self)) > len(ATTRIBUTES):  # it holds properties: paho removes them
        _ORIGINAL_CLEAR(self)  # type: ignore[no-untyped-call]
