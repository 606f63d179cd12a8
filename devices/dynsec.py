"""Mosquitto's dynamic-security plugin: the broker holds each device's credential and ACL.

The embedded broker starts from a generated `dynamic-security.json` that knows one client:
the server's admin. From then on the server changes clients and roles at run time by
publishing JSON commands to `$CONTROL/dynamic-security/v1` and reading the answers on
`.../response` (Mosquitto 2.0). The plugin saves every change to the same file.

Each device gets a role of its own that allows exactly:
- publish to `telemed/v1/devices/{id}/vitals` and `telemed/v1/devices/{id}/status`;
- subscribe to, and receive, `telemed/v1/devices/{id}/errors`.
Everything else is denied by the default ACL access.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from devices.inbox import client_with_inbox

log = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
ADMIN_ROLE = "telemed-server"
COMMAND_TIMEOUT = 5.0
PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/opt/homebrew/lib/mosquitto_dynamic_security.so",
    "/usr/local/opt/mosquitto/lib/mosquitto_dynamic_security.so",
)


class DynsecError(Exception):
    """The broker refused or did not answer a dynamic-security command."""


def topic(device_id: str, leaf: str) -> str:
    return f"telemed/v1/devices/{device_id}/{leaf}"


def find_plugin() -> str | None:
    return next((p for p in PLUGIN_PATHS if Path(p).is_file()), None)


def _hash(password: str, iterations: int = 1000) -> dict[str, Any]:
    """Mosquitto's stored form: PBKDF2-HMAC-SHA512 over the decoded salt, 64 bytes."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def initial_config(admin_username: str, admin_password: str) -> dict[str, Any]:
    """The plugin's first file: the server's admin client and a deny-by-default policy."""
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": admin_username,
                "textName": "telemed server",
                **_hash(admin_password),
                "roles": [{"rolename": ADMIN_ROLE}],
            }
        ],
        "groups": [],
        "roles": [
            {
                "rolename": ADMIN_ROLE,
                "acls": [
                    _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
                    _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
                    _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
                    _acl("publishClientSend", "telemed/#"),
                    _acl("publishClientReceive", "telemed/#"),
                    _acl("subscribePattern", "telemed/#"),
                    _acl("subscribePattern", "$share/#"),
                    _acl("unsubscribePattern", "#"),
                ],
            }
        ],
    }


@dataclass(frozen=True, slots=True)
class AdminCredentials:
    username: str
    password: str

    @classmethod
    def load_or_create(cls, path: Path) -> AdminCredentials:
        """The embedded broker's admin secret, created once with mode 0600."""
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["username"], data["password"])
        creds = cls("telemed-admin", secrets.token_urlsafe(24))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"username": creds.username, "password": creds.password}, f)
        return creds


def device_role(device_id: str) -> str:
    return f"device-{device_id}"


def device_acls(device_id: str) -> list[dict[str, Any]]:
    return [
        _acl("publishClientSend", topic(device_id, "vitals")),
        _acl("publishClientSend", topic(device_id, "status")),
        _acl("subscribeLiteral", topic(device_id, "errors")),
        _acl("publishClientReceive", topic(device_id, "errors")),
        _acl("unsubscribeLiteral", topic(device_id, "errors")),
    ]


class Dynsec:
    """An admin session with the broker's dynamic-security plugin."""

    def __init__(self, client: aiomqtt.Client, inbox: asyncio.Queue[aiomqtt.Message]) -> None:
        self._client = client
        self._inbox = inbox
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, host: str, port: int, username: str, password: str, *, tls: bool = False
    ) -> AsyncIterator[Dynsec]:
        try:
            client, inbox = client_with_inbox(
                host,
                port,
                username=username,
                password=password,
                identifier=f"telemed-dynsec-{uuid.uuid4().hex[:12]}",
                tls_params=aiomqtt.TLSParameters() if tls else None,
                timeout=COMMAND_TIMEOUT,
            )
            async with client:
                session = cls(client, inbox)
                await client.subscribe(RESPONSE, qos=1)
                reader = asyncio.create_task(session._read(), name="dynsec-responses")
                try:
                    yield session
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        except aiomqtt.MqttError as exc:
            raise DynsecError(
                f"cannot reach the MQTT broker at {host}:{port} as {username}: {exc}"
            ) from exc

    async def _read(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                body = json.loads(bytes(message.payload))
            except (TypeError, ValueError):
                log.warning("dynsec: unreadable response ignored")
                continue
            for response in body.get("responses", []):
                future = self._pending.pop(str(response.get("correlationData", "")), None)
                if future is not None and not future.done():
                    future.set_result(response)

    async def command(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; raise `DynsecError` on an error."""
        correlation = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = future
        payload = {"commands": [{"command": command, "correlationData": correlation, **fields}]}
        try:
            await self._client.publish(CONTROL, json.dumps(payload), qos=1)
            async with asyncio.timeout(COMMAND_TIMEOUT):
                response = await future
        except TimeoutError:
            raise DynsecError(f"{command}: the broker did not answer") from None
        finally:
            self._pending.pop(correlation, None)
        if response.get("error"):
            raise DynsecError(f"{command}: {response['error']}")
        return response

    async def create_device(self, device_id: str, password: str) -> None:
        role = device_role(device_id)
        await self.command("createRole", rolename=role, acls=device_acls(device_id))
        await self.command(
            "createClient",
            username=device_id,
            password=password,
            roles=[{"rolename": role}],
            textname="telemed device",
        )

    async def delete_device(self, device_id: str) -> None:
        """Remove the device's client (the broker disconnects it at once) and its role."""
        for command, fields in (
            ("deleteClient", {"username": device_id}),
            ("deleteRole", {"rolename": device_role(device_id)}),
        ):
            try:
                await self.command(command, **fields)
            except DynsecError as exc:
                if "not found" not in str(exc).lower():
                    raise
