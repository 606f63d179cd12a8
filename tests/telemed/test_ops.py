"""Operations: health and readiness, metrics, FHIR metadata, security headers, TLS, error
pages, and configuration errors."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
import ssl
import stat
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509

from telemed import sessions, tls
from telemed.app import create_app
from telemed.clinic import OPERATOR, Clinic
from telemed.clock import utcnow
from telemed.settings import ConfigError, Settings, load_settings, settings_from_mapping
from telemed.store import open_store
from telemed.web.keys import STORE
from tests.conftest import (
    PASSWORD,
    ROOT,
    FakeClock,
    People,
    csrf_from,
    free_port,
    login,
    make_settings,
)

Client = TestClient  # type: ignore[type-arg]
TELEMED = Path(sys.executable).with_name("telemed")
SERVE_TIMEOUT = 20.0
POLL_EVERY = 0.1


async def client_for(aiohttp_client: Any, settings: Settings, clock: FakeClock) -> Client:
    client: Client = await aiohttp_client(create_app(settings, clock=clock))
    return client


# health and readiness -----------------------------------------------------------------
async def test_healthz(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_checks_store_and_broker(client: Client) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ready"
    assert body["checks"] == ["store", "mqtt"]


async def test_readyz_names_an_unreachable_broker(
    aiohttp_client: Any, tmp_path: Path, clock: FakeClock
) -> None:
    port = free_port()  # nothing listens here
    client = await client_for(aiohttp_client, make_settings(tmp_path, port), clock)
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert set(body["failures"]) == {"mqtt"}
    assert f"127.0.0.1:{port}" in body["failures"]["mqtt"]


async def test_readyz_names_a_closed_store(client: Client) -> None:
    await client.app[STORE].close()
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert set(body["failures"]) == {"store"}
    assert "closed" in body["failures"]["store"]


# metrics ------------------------------------------------------------------------------
async def test_metrics_count_requests_and_logins_without_personal_data(
    client: Client, people: People
) -> None:
    assert (await login(client, people.patient_1.email, "not the password at all")).status == 401
    assert (await login(client, people.doctor_a.email)).status == 302
    assert (await client.get(f"/patients/{people.patient_1.id}")).status == 200

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert re.search(r'^telemed_logins_total\{outcome="failure"\} 1\.0$', text, re.M)
    assert re.search(r'^telemed_logins_total\{outcome="success"\} 1\.0$', text, re.M)
    assert re.search(
        r'^telemed_http_requests_total\{method="POST",route="/login",status="401"\} 1\.0$',
        text,
        re.M,
    )
    assert 'route="/patients/{patient_id}"' in text
    for person in (people.patient_1, people.doctor_a):
        assert person.name not in text
        assert person.email not in text
    assert people.patient_1.id not in text


# FHIR ---------------------------------------------------------------------------------
async def test_fhir_metadata_is_a_capability_statement(client: Client) -> None:
    response = await client.get("/fhir/metadata")
    assert response.status == 200
    assert response.content_type == "application/fhir+json"
    body = await response.json(content_type=None)
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    types = {r["type"] for rest in body["rest"] for r in rest["resource"]}
    assert {"Patient", "AuditEvent"} <= types


# security headers ---------------------------------------------------------------------
async def static_css_url(client: Client) -> str:
    html = await (await client.get("/login")).text()
    match = re.search(r'<link rel="stylesheet" href="(/static/css/app\.css\?v=[^"]+)"', html)
    assert match, "the login page links no versioned stylesheet"
    return match.group(1)


async def responses_of_every_kind(client: Client) -> dict[str, aiohttp.ClientResponse]:
    kinds = {
        "page": await client.get("/login"),
        "404": await client.get("/no/such/page"),
        "static": await client.get(await static_css_url(client)),
        "api error": await client.get("/api/patients"),
    }
    expected = {"page": 200, "404": 404, "static": 200, "api error": 401}
    assert {k: r.status for k, r in kinds.items()} == expected
    return kinds


async def test_security_headers_on_every_kind_of_response(client: Client) -> None:
    for kind, response in (await responses_of_every_kind(client)).items():
        csp = response.headers.get("Content-Security-Policy", "")
        directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";")}
        assert directives.get("frame-ancestors") == "frame-ancestors 'none'", kind
        assert directives.get("script-src") == "script-src 'self'", kind
        assert "unsafe-inline" not in csp, kind
        assert response.headers.get("X-Content-Type-Options") == "nosniff", kind
        assert response.headers.get("Referrer-Policy"), kind
        assert "Strict-Transport-Security" not in response.headers, kind


async def test_hsts_when_the_server_has_tls(
    aiohttp_client: Any, tmp_path: Path, mosquitto: int, clock: FakeClock
) -> None:
    cert, key = tls.self_signed(tmp_path / "tls", "127.0.0.1")
    settings = make_settings(
        tmp_path, mosquitto, TELEMED_SERVER_TLS_CERT=str(cert), TELEMED_SERVER_TLS_KEY=str(key)
    )
    client = await client_for(aiohttp_client, settings, clock)
    for kind, response in (await responses_of_every_kind(client)).items():
        hsts = response.headers.get("Strict-Transport-Security", "")
        assert hsts.startswith("max-age="), kind
        assert int(hsts.split(";")[0].removeprefix("max-age=")) >= 180 * 24 * 3600, kind


# TLS ----------------------------------------------------------------------------------
def test_self_signed_certificate(tmp_path: Path) -> None:
    cert_path, key_path = tls.self_signed(tmp_path / "tls", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def serve_env(tmp_path: Path) -> dict[str, str]:
    """A server of its own under `tmp_path`: store, embedded broker port, no demo clinic."""
    var = tmp_path / "var"
    return {
        "TELEMED_VAR_DIR": str(var),
        "TELEMED_STORE_URL": f"sqlite:///{var / 'telemed.db'}",
        "TELEMED_MQTT_PORT": str(free_port()),
        "TELEMED_DEMO_SEED": "false",
        "TELEMED_LOG_JSON": "false",
    }


async def start_serve(
    env: dict[str, str], log_path: Path, *options: str, own_group: bool = False
) -> asyncio.subprocess.Process:
    """`telemed serve` with `options`, its output to `log_path`; `own_group`: in a
    process group of its own, as a shell's foreground job."""
    with log_path.open("wb") as log:
        return await asyncio.create_subprocess_exec(
            str(TELEMED),
            "--config",
            str(ROOT / "config.toml"),
            "serve",
            *options,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=own_group,
        )


async def test_serve_self_signed_over_https(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    settings = load_settings(ROOT / "config.toml", env)
    assert settings.mqtt.embedded  # the server runs and supervises its own Mosquitto
    store = await open_store(settings.store, base_dir=str(settings.base_dir))
    try:
        doctor = await Clinic(store, utcnow).add_user(
            OPERATOR, role="doctor", email="tls@example.org", name="Dr Tls", password=PASSWORD
        )
    finally:
        await store.close()

    port = free_port()
    log_path = tmp_path / "serve.log"
    process = await start_serve(env, log_path, "--self-signed", "--port", str(port))
    base = f"https://127.0.0.1:{port}"
    try:
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address
        connector = aiohttp.TCPConnector(ssl=False)  # the certificate is self-signed
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:
            health = await _poll_until_up(http, f"{base}/healthz", process, log_path)
            assert await health.json() == {"status": "ok"}
            assert health.headers["Strict-Transport-Security"].startswith("max-age=")

            page = await http.get(f"{base}/login")
            token = csrf_from(await page.text())
            signed_in = await http.post(
                f"{base}/login",
                data={"email": doctor.email, "password": PASSWORD, "csrf_token": token},
                allow_redirects=False,
            )
            assert signed_in.status == 302, await signed_in.text()
            cookie = signed_in.cookies[sessions.COOKIE]
            assert cookie["secure"] is True
            assert cookie["httponly"] is True
            assert "Strict-Transport-Security" in signed_in.headers
            dashboard = await http.get(f"{base}/dashboard", allow_redirects=False)
            assert dashboard.status == 200
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(SERVE_TIMEOUT):
            code = await process.wait()
    assert code == 0, tail(log_path)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _poll_until_up(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process, log: Path
) -> aiohttp.ClientResponse:
    """Poll `url` until it answers; fail at once if the server exited."""
    try:
        async with asyncio.timeout(SERVE_TIMEOUT):
            while True:
                if process.returncode is not None:
                    pytest.fail(f"telemed serve exited early:\n{tail(log)}")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    return await http.get(url)
                await asyncio.sleep(POLL_EVERY)
    except TimeoutError:
        pytest.fail(f"telemed serve did not answer within {SERVE_TIMEOUT:g} s")


# error pages --------------------------------------------------------------------------
async def test_unknown_page_is_a_404_page(client: Client) -> None:
    response = await client.get("/no/such/page")
    assert response.status == 404
    assert response.content_type == "text/html"
    assert 'data-testid="error"' in await response.text()


async def test_unknown_api_route_is_json(client: Client) -> None:
    response = await client.get("/api/no-such-thing")
    assert response.status == 404
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    assert body["error"]


async def test_unknown_fhir_route_is_an_operation_outcome(client: Client) -> None:
    response = await client.get("/fhir/NoSuchResource")
    assert response.status == 404
    assert response.content_type == "application/fhir+json"
    body = await response.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    assert body["issue"][0]["code"] == "not-found"


async def test_a_server_error_shows_a_reference_and_no_internals(
    aiohttp_client: Any, settings: Settings, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app = create_app(settings, clock=clock)
    app.router.add_get("/boom", boom)
    client: Client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR):
        response = await client.get("/boom")
    assert response.status == 500
    html = await response.text()
    assert 'data-testid="error"' in html
    assert "secret internals" not in html
    assert "Traceback" not in html
    assert "RuntimeError" not in html
    match = re.search(r"Reference: ([0-9a-f]{16})", html)
    assert match, html
    reference = match.group(1)
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert logged, "the log does not name the reference"
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None  # the traceback goes to the log, not the page


# configuration ------------------------------------------------------------------------
def shipped_config() -> dict[str, Any]:
    return tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))


def settings_with(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], environ: dict[str, str] | None = None
) -> Settings:
    raw = shipped_config()
    change(raw)
    return settings_from_mapping(raw, environ or {}, base_dir=tmp_path)


def _set(section: str, key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw[section].__setitem__(key, value)


def _delete(section: str, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw[section].pop(key)


def _tls_cert_only(raw: dict[str, Any]) -> None:
    raw["server"]["tls_cert"] = str(ROOT / "config.toml")  # an existing file; no key


def _tls_files_missing(raw: dict[str, Any]) -> None:
    raw["server"]["tls_cert"] = "no/such/cert.pem"
    raw["server"]["tls_key"] = "no/such/key.pem"


CONFIG_ERRORS = [
    pytest.param(_delete("server", "port"), {}, "server.port: missing", id="missing key"),
    pytest.param(
        lambda raw: raw.pop("security"), {}, "[security]: section missing", id="missing section"
    ),
    pytest.param(
        _set("server", "port", "8080"),
        {},
        "server.port: expected a whole number, got '8080'",
        id="wrong type",
    ),
    pytest.param(
        _set("mqtt", "embedded", "yes"),
        {},
        "mqtt.embedded: expected true or false",
        id="wrong type bool",
    ),
    pytest.param(
        lambda raw: None,
        {"TELEMED_SERVER_PORT": "eighty"},
        "server.port (from TELEMED_SERVER_PORT): expected a whole number, got 'eighty'",
        id="malformed env int",
    ),
    pytest.param(
        lambda raw: None,
        {"TELEMED_DEMO_SEED": "maybe"},
        "demo.seed (from TELEMED_DEMO_SEED): expected true or false",
        id="malformed env bool",
    ),
    pytest.param(_set("server", "colour", "blue"), {}, "server.colour: unknown key", id="key"),
    pytest.param(
        lambda raw: raw.__setitem__("extras", {"a": 1}),
        {},
        "[extras]: unknown section",
        id="unknown section",
    ),
    pytest.param(_tls_cert_only, {}, "server.tls_key:", id="tls cert without key"),
    pytest.param(_tls_files_missing, {}, "server.tls_cert: file not found", id="tls cert missing"),
    pytest.param(
        _set("store", "url", "postgres://db/telemed"), {}, "store.url: expected", id="scheme"
    ),
    pytest.param(
        _set("security", "session_idle_minutes", 0),
        {},
        "security.session_idle_minutes: expected at least 1, got 0",
        id="below minimum",
    ),
    pytest.param(
        _set("server", "port", 70000),
        {},
        "server.port: expected at most 65535",
        id="above maximum",
    ),
    pytest.param(
        _set("log", "level", "VERBOSE"),
        {},
        "log.level: expected one of DEBUG, INFO, WARNING, ERROR, got 'VERBOSE'",
        id="not a choice",
    ),
]


@pytest.mark.parametrize(("change", "environ", "message"), CONFIG_ERRORS)
def test_config_errors_name_the_key(
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    environ: dict[str, str],
    message: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, change, environ)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text  # one line, fit for a start-up error


def test_the_shipped_config_loads(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, lambda raw: None)
    assert settings.server.port == 8080
    assert settings.var_dir == tmp_path / "var"


def test_env_overrides_the_file(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path, lambda raw: None, {"TELEMED_SERVER_PORT": "9001", "TELEMED_MQTT_TLS": "yes"}
    )
    assert settings.server.port == 9001
    assert settings.mqtt.tls is True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "config file not found", id="missing file"),
        pytest.param("[server\nport = ", "not valid TOML", id="bad toml"),
    ],
)
def test_unreadable_config_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "config.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_secret_repr_hides_the_value(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, _set("mqtt", "password", "hunter2-broker-secret"))
    assert settings.mqtt.password.reveal() == "hunter2-broker-secret"
    for text in (repr(settings), str(settings.mqtt), repr(settings.mqtt.password)):
        assert "hunter2-broker-secret" not in text
    assert f"{settings.mqtt.password}" == "Secret('**********')"

    from_env = settings_with(
        tmp_path, lambda raw: None, {"TELEMED_MQTT_PASSWORD": "env-secret-value"}
    )
    assert from_env.mqtt.password.reveal() == "env-secret-value"
    assert "env-secret-value" not in repr(from_env)


async def test_ctrl_c_stops_the_server_and_then_its_broker(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group. The embedded
    Mosquitto runs in a session of its own, so the server stops it after its MQTT
    clients: no connection torn from under them, no restart, no error in the log."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    process = await start_serve(serve_env(tmp_path), log_path, "--port", str(port), own_group=True)
    try:
        async with aiohttp.ClientSession() as http:
            await _poll_until_up(http, f"http://127.0.0.1:{port}/readyz", process, log_path)
        started = re.search(r"mosquitto started pid=(\d+)", tail(log_path))
        assert started is not None, tail(log_path)
        broker = int(started.group(1))
        assert os.getpgid(broker) != process.pid  # out of reach of the terminal's signals
        os.killpg(process.pid, signal.SIGINT)
        async with asyncio.timeout(SERVE_TIMEOUT):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = tail(log_path)
    assert code == 0, text
    assert "mosquitto stopped" in text
    assert "ERROR" not in text, text
    assert "Traceback" not in text, text
    with pytest.raises(ProcessLookupError):  # stopped with the server, not left behind
        os.kill(broker, 0)
