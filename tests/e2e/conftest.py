"""Browser tests: the real `telemed serve` in a subprocess, driven by headless Chromium.

- `server`: one server for the session, started through the CLI on free loopback ports
  (HTTP and its embedded Mosquitto), its SQLite store and var dir in tmp, with a doctor,
  the doctor's patient and an unrelated patient created through the CLI beforehand.
- `browser`: Debian's Chromium (Playwright's own download is not used), with fake media
  devices so that later tests can open a camera and a microphone.
- `page`: a fresh context and page per test; console errors, uncaught page errors and
  Content-Security-Policy violations are collected in `page_errors`.

When a test fails, the tail of the server's standard error is added to its report.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
)

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TELEMED = Path(sys.executable).with_name("telemed")
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path("/tmp/telemed-shots")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
PASSWORD = "correct horse battery staple"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 30.0
LOG_TAIL_LINES = 40

# Reports each CSP violation as a console error, which the `page` fixture collects.
# Playwright injects init scripts itself, so the page's CSP does not block this one.
CSP_REPORTER = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    email: str
    name: str
    password: str = PASSWORD


@dataclass(frozen=True, slots=True)
class Server:
    base_url: str
    log: Path
    doctor: Person
    patient: Person  # on the doctor's care team
    stranger: Person  # a patient on nobody's care team
    config: Path
    env: dict[str, str]

    def cli(self, *args: str) -> dict[str, object]:
        """`telemed --config ... ARGS --json` against this server's store and broker."""
        return _cli(self.config, self.env, *args)

    def log_tail(self) -> str:
        return _tail(self.log)


@dataclass(slots=True)
class PageErrors:
    messages: list[str] = field(default_factory=list)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return "(empty)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _cli(config: Path, env: dict[str, str], *args: str, stdin: str = "") -> dict[str, object]:
    """Run `telemed --config CONFIG ARGS --json`; fail the fixture with stderr on error."""
    command = [str(TELEMED), "--config", str(config), *args, "--json"]
    done = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _add_user(config: Path, env: dict[str, str], role: str, email: str, name: str) -> Person:
    data = _cli(
        config,
        env,
        "user",
        "add",
        "--role",
        role,
        "--email",
        email,
        "--name",
        name,
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    return Person(id=str(data["id"]), email=email, name=name)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"telemed serve exited with {process.returncode} before answering; "
                f"its stderr ends with:\n{_tail(log)}"
            )
        if _healthy(base_url + "/healthz"):
            return
        time.sleep(0.1)
    pytest.fail(
        f"telemed serve did not answer /healthz within {START_TIMEOUT:g} s; "
        f"its stderr ends with:\n{_tail(log)}"
    )


@contextlib.contextmanager
def running_server(
    tmp: Path,
    *,
    host: str = "127.0.0.1",
    public_url: str = "",
    people: tuple[tuple[str, str, str], ...] = (
        ("doctor", "dr.carter@example.org", "Dr Dana Carter"),
        ("patient", "pia.mine@example.org", "Pia Careteam"),
        ("patient", "olaf.other@example.org", "Olaf Elsewhere"),
    ),
    settings: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`telemed serve` with its own config, store and embedded broker under `tmp`,
    listening on `host`, with (doctor, patient on the doctor's team, stranger) = `people`;
    its `base_url` is always the loopback one."""
    config = tmp / "config.toml"
    config.write_text((ROOT / "config.toml").read_text(encoding="utf-8"), encoding="utf-8")
    http_port, mqtt_port = free_port(), free_port()
    var_dir = tmp / "var"
    env = {
        # A developer's own TELEMED_* settings must not leak into the test server.
        **{k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")},
        "TELEMED_VAR_DIR": str(var_dir),
        "TELEMED_STORE_URL": f"sqlite:///{var_dir / 'telemed.db'}",
        "TELEMED_SERVER_HOST": host,
        "TELEMED_SERVER_PORT": str(http_port),
        "TELEMED_SERVER_PUBLIC_URL": public_url.format(port=http_port),
        "TELEMED_MQTT_EMBEDDED": "true",
        "TELEMED_MQTT_PORT": str(mqtt_port),
        "TELEMED_DEMO_SEED": "false",
        "TELEMED_LOG_JSON": "true",
        **(settings or {}),  # TELEMED_* overrides a test module needs
    }
    doctor, patient, stranger = (_add_user(config, env, *person) for person in people)
    _cli(config, env, "care-team", "add", "--patient", patient.id, "--clinician", doctor.id)

    log = tmp / "server.log"  # stdout and stderr
    base_url = f"http://127.0.0.1:{http_port}"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(TELEMED), "--config", str(config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=env,
        )
    try:
        _wait_healthy(base_url, process, log)
        yield Server(base_url, log, doctor, patient, stranger, config, env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("telemed-e2e")) as running:
        yield running


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test`, which installs Chromium")
    return CHROMIUM


@pytest.fixture(scope="session")
def shots() -> Path:
    """Where tests save screenshots for a person to look at (outside the repository)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_executable: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(chromium_executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def viewport() -> ViewportSize:
    """Override (or parametrize indirectly) for another window size."""
    return {"width": 1280, "height": 800}


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest_asyncio.fixture(loop_scope="module")
async def page(
    browser: Browser, server: Server, viewport: ViewportSize, page_errors: PageErrors
) -> AsyncIterator[Page]:
    context = await browser.new_context(base_url=server.base_url, viewport=viewport)
    try:
        await context.add_init_script(CSP_REPORTER)
        new_page = await context.new_page()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                page_errors.messages.append(f"console: {message.text} at {message.location}")

        new_page.on("console", on_console)
        new_page.on("pageerror", lambda exc: page_errors.messages.append(f"page error: {exc}"))
        yield new_page
    finally:
        await context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    running = getattr(item, "funcargs", {}).get("server")
    if report.failed and isinstance(running, Server):
        report.sections.append(("telemed server stderr (tail)", running.log_tail()))
    return report


# Video visits: two people in two browser contexts ------------------------------------

# Keeps every RTCPeerConnection a page creates in `window.__pcs` (oldest first), so that
# tests read WebRTC statistics whichever page script made the connection, and sums the
# newest open connection's inbound statistics into `window.__rtcStats` twice a second
# (tests wait on it with synchronous `wait_for_function` expressions).
RTC_RECORDER = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native) return;
  window.__pcs = [];
  window.__rtcStats = null;
  window.RTCPeerConnection = new Proxy(Native, {
    construct(target, args, newTarget) {
      const pc = Reflect.construct(target, args, newTarget);
      window.__pcs.push(pc);
      return pc;
    },
  });
  setInterval(async () => {
    let index = window.__pcs.length - 1;
    while (index >= 0 && window.__pcs[index].signalingState === "closed") index -= 1;
    if (index < 0) {
      window.__rtcStats = null;
      return;
    }
    const pc = window.__pcs[index];
    const stats = {
      pc: index,
      state: pc.connectionState,
      framesDecoded: 0,
      videoBytesReceived: 0,
      audioBytesReceived: 0,
    };
    (await pc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "video") {
        stats.framesDecoded += s.framesDecoded || 0;
        stats.videoBytesReceived += s.bytesReceived || 0;
      } else if (s.kind === "audio") {
        stats.audioBytesReceived += s.bytesReceived || 0;
      }
    });
    window.__rtcStats = stats;
  }, 500);
})();
"""


@dataclass(slots=True)
class Participant:
    """One person's browser context and page, and what went wrong in it."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)


OpenParticipant = Callable[[], Awaitable[Participant]]


async def new_participant(
    browser: Browser, base_url: str, viewport: ViewportSize, scripts: Sequence[str]
) -> Participant:
    """A fresh browser context (its own cookies: another person) and page, running
    `scripts` before the page's own, with console errors and page errors collected."""
    context = await browser.new_context(base_url=base_url, viewport=viewport)
    for script in scripts:
        await context.add_init_script(script)
    new_page = await context.new_page()
    person = Participant(context, new_page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            person.errors.append(f"console: {message.text} at {message.location}")

    new_page.on("console", on_console)
    new_page.on("pageerror", lambda exc: person.errors.append(f"page error: {exc}"))
    return person


@pytest_asyncio.fixture(loop_scope="module")
async def participants(
    browser: Browser, server: Server, viewport: ViewportSize
) -> AsyncIterator[OpenParticipant]:
    """Open a fresh browser context (its own cookies: another person) and page, with
    WebRTC connections recorded in `window.__pcs`; all are closed after the test."""
    opened: list[Participant] = []

    async def open_participant() -> Participant:
        person = await new_participant(
            browser, server.base_url, viewport, (CSP_REPORTER, RTC_RECORDER)
        )
        opened.append(person)
        return person

    try:
        yield open_participant
    finally:
        for person in opened:
            await person.context.close()


@pytest.fixture(scope="session")
def admin(server: Server) -> Person:
    """A clinic admin, added through the CLI on first use."""
    return _add_user(server.config, server.env, "admin", "ada.admin@example.org", "Ada Admin")
