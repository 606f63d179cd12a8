"""Enrollment against a real Mosquitto with dynamic security: a device may publish only
under its own topics, and revocation drops it at once."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from devices.dynsec import topic
from telemed.clinic import OPERATOR, Actor
from telemed.errors import Forbidden, ValidationError
from tests.devices.conftest import Rig


def device_client(rig: Rig, username: str, password: str, name: str = "") -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        rig.supervisor.port,
        username=username,
        password=password,
        identifier=name or username,
        timeout=5.0,
    )


def admin_client(rig: Rig) -> aiomqtt.Client:
    return rig.admin_client("test-admin")


async def test_enrollment_output_and_records(rig: Rig) -> None:
    enrolled = await rig.enroll("pulse-oximeter")
    data = enrolled.as_json()
    device_id = data["device_id"]
    assert data["username"] == device_id
    assert len(data["password"]) >= 24
    assert data["host"] == "127.0.0.1"
    assert data["port"] == rig.supervisor.port
    assert data["topic"] == f"telemed/v1/devices/{device_id}/vitals"
    stored = await rig.store.get_device(device_id)
    assert stored is not None
    assert stored.patient_id == rig.patient_id
    assert stored.active
    actions = [r.event.action async for r in rig.store.audit_records(patient_id=rig.patient_id)]
    assert "device.enroll" in actions
    # the secret is not kept by the server: only the broker holds its hash
    assert data["password"] not in repr(stored)


async def test_a_device_publishes_only_under_its_own_topic(rig: Rig) -> None:
    mine = (await rig.enroll()).as_json()
    other = (await rig.enroll()).as_json()
    async with admin_client(rig) as admin:
        await admin.subscribe("telemed/#", qos=1)
        async with device_client(rig, mine["username"], mine["password"]) as device:
            # another device's topic: the broker drops it; then our own, which arrives
            await device.publish(other["topic"], b"forged", qos=1)
            await device.publish(mine["topic"], b"mine", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(admin.messages))
            # same client, same QoS: had the forged one passed, it would have come first
            assert message.topic.value == mine["topic"]
            assert message.payload == b"mine"


async def test_a_device_cannot_subscribe_to_others_or_to_vitals(rig: Rig) -> None:
    mine = (await rig.enroll()).as_json()
    other = (await rig.enroll()).as_json()
    async with device_client(rig, mine["username"], mine["password"]) as device:
        granted = await device.subscribe(mine["errors_topic"], qos=1)
        assert [int(c.value) for c in granted] == [1]  # type: ignore[union-attr]
        for forbidden in (other["errors_topic"], "telemed/#", "#", other["topic"]):
            refused = await device.subscribe(forbidden, qos=1)
            assert all(c.is_failure for c in refused), forbidden  # type: ignore[union-attr]


async def test_wrong_password_and_unknown_user_are_refused(rig: Rig) -> None:
    mine = (await rig.enroll()).as_json()
    for username, password in ((mine["username"], "wrong"), ("nobody", "x")):
        with pytest.raises(aiomqtt.MqttError, match="Not authorized|not authori"):
            async with device_client(rig, username, password):
                pass


async def until_dropped(device: aiomqtt.Client) -> None:
    """Read until the broker ends the connection (raises `MqttError` then)."""
    async with asyncio.timeout(5):
        async for _ in device.messages:
            pass


async def test_revocation_drops_the_device_and_refuses_it(rig: Rig) -> None:
    mine = (await rig.enroll()).as_json()
    async with device_client(rig, mine["username"], mine["password"]) as device:
        await device.subscribe(mine["errors_topic"], qos=1)
        await rig.enrollment.revoke(OPERATOR, mine["device_id"])
        with pytest.raises(aiomqtt.MqttError):
            await until_dropped(device)
    with pytest.raises(aiomqtt.MqttError, match="Not authorized|not authori"):
        async with device_client(rig, mine["username"], mine["password"], "again"):
            pass
    stored = await rig.store.get_device(mine["device_id"])
    assert stored is not None
    assert not stored.active


async def test_only_the_care_team_enrolls(rig: Rig) -> None:
    doctor = await rig.clinic.add_user(
        OPERATOR, role="doctor", email="doc@example.org", name="Doc", password=None
    )
    outsider = Actor.of(doctor, "127.0.0.1")
    with pytest.raises(Forbidden):
        await rig.enrollment.enroll(outsider, rig.patient_id, "watch")
    await rig.clinic.add_care_team_member(OPERATOR, rig.patient_id, doctor.id)
    enrolled = await rig.enrollment.enroll(outsider, rig.patient_id, "watch")
    assert enrolled.device.patient_id == rig.patient_id


async def test_bad_kind_and_unknown_patient_are_named(rig: Rig) -> None:
    with pytest.raises(ValidationError, match="kind"):
        await rig.enrollment.enroll(OPERATOR, rig.patient_id, "")
    with pytest.raises(ValidationError, match="patient"):
        await rig.enrollment.enroll(OPERATOR, "nope", "watch")
    assert await rig.store.list_devices() == []
    assert topic("x", "vitals") == "telemed/v1/devices/x/vitals"
