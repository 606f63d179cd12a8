"""The `telemed` command line: its JSON contract, exit codes and refusals, on real SQLite.

The CLI runs as a real subprocess where the contract matters (stdout, stderr, exit code)
and in-process through `telemed.cli.main` where only the outcome does, to keep the file
fast. The running-server tests share one SQLite file between the app and the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from telemed.accounts import Patient, Role, User, new_id
from telemed.cli import main
from telemed.clock import utcnow
from telemed.passwords import verify_password
from telemed.settings import Settings
from telemed.store.sqlite import SqliteStore
from telemed.tokens import ApiToken, new_token, token_hash
from telemed.web.keys import STORE
from tests.conftest import ROOT, People, login

Client = TestClient  # type: ignore[type-arg]
Cli = Callable[..., "CliRun"]

CONFIG = ROOT / "config.toml"
STRONG = "a long enough passphrase"


# helpers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        """The one JSON object the command printed (and nothing else on stdout)."""
        lines = self.out.splitlines()
        assert len(lines) == 1, self.out
        return json.loads(lines[0])


def cli_env(var_dir: Path, url: str | None = None) -> dict[str, str]:
    """The process environment without the caller's TELEMED_* and with the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    env.update(
        TELEMED_VAR_DIR=str(var_dir),
        TELEMED_STORE_URL=url or f"sqlite:///{var_dir / 'telemed.db'}",
        TELEMED_MQTT_EMBEDDED="false",
        TELEMED_DEMO_SEED="false",
        TELEMED_LOG_JSON="false",
    )
    return env


def command(args: tuple[str, ...], config: Path) -> list[str]:
    return [sys.executable, "-m", "telemed.cli", "--config", str(config), *args]


def run_cli(env: dict[str, str], *args: str, stdin: str = "", config: Path = CONFIG) -> CliRun:
    """`telemed ARGS` as a real subprocess."""
    done = subprocess.run(
        command(args, config),
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return CliRun(done.returncode, done.stdout, done.stderr)


async def arun_cli(env: dict[str, str], *args: str, stdin: str = "") -> CliRun:
    """`telemed ARGS` as a real subprocess, without blocking the running app's loop."""
    proc = await asyncio.create_subprocess_exec(
        *command(args, CONFIG),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate(stdin.encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CliRun(proc.returncode, out.decode(), err.decode())


def run_main(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    *args: str,
    stdin: str = "",
    config: Path = CONFIG,
) -> CliRun:
    """`telemed ARGS` in-process (faster); the root logger is left as it was found."""
    for key in os.environ:
        if key.startswith("TELEMED_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("TELEMED_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        code = main(["--config", str(config), *args])
    except SystemExit as exc:  # argparse refusing the command line
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def db_path(env: dict[str, str]) -> Path:
    return Path(env["TELEMED_STORE_URL"].removeprefix("sqlite:///"))


def user_count(env: dict[str, str]) -> int:
    path = db_path(env)
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / "var")


@pytest.fixture
def cli(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    def run(*args: str, stdin: str = "", config: Path = CONFIG) -> CliRun:
        return run_main(monkeypatch, capsys, env, *args, stdin=stdin, config=config)

    return run


def add_user(cli: Cli, role: str, email: str) -> str:
    """A user without a password (no hashing: fast); returns the new id."""
    done = cli("user", "add", "--role", role, "--email", email, "--name", role.title(), "--json")
    assert done.code == 0, done.err
    return str(done.json()["id"])


# users ------------------------------------------------------------------------------
def test_user_add_prints_one_json_object_and_the_user_is_listed(env: dict[str, str]) -> None:
    added = run_cli(
        env,
        "user", "add", "--role", "doctor", "--email", "Dora@Example.org",
        "--name", "Dr  Dora", "--password-stdin", "--json",
        stdin=STRONG + "\n",
    )  # fmt: skip
    assert added.code == 0, added.err
    user = added.json()
    assert isinstance(user, dict)
    assert user["email"] == "dora@example.org"
    assert user["role"] == "doctor"
    assert user["name"] == "Dr Dora"
    assert user["id"]
    assert STRONG not in added.out + added.err

    listed = run_cli(env, "user", "list", "--json")
    assert listed.code == 0, listed.err
    users = listed.json()["users"]
    assert [(u["id"], u["email"], u["role"]) for u in users] == [
        (user["id"], "dora@example.org", "doctor")
    ]


def test_a_patient_gets_a_patient_record(cli: Cli, env: dict[str, str]) -> None:
    done = cli(
        "user", "add", "--role", "patient", "--email", "rosa@example.org", "--name", "Rosa",
        "--language", "es", "--birth-date", "1950-01-02", "--password-stdin", "--json",
        stdin=STRONG + "\n",
    )  # fmt: skip
    assert done.code == 0, done.err
    patient_id = done.json()["id"]

    async def read() -> Any:
        store = await SqliteStore.open(env["TELEMED_STORE_URL"])
        try:
            return await store.get_patient(patient_id), await store.get_user(patient_id)
        finally:
            await store.close()

    patient, user = asyncio.run(read())
    assert patient is not None
    assert (patient.name, patient.language, patient.birth_date) == ("Rosa", "es", date(1950, 1, 2))
    assert user is not None
    assert verify_password(user.password_hash, STRONG)


def test_a_doctor_gets_no_patient_record(cli: Cli, env: dict[str, str]) -> None:
    doctor_id = add_user(cli, "doctor", "dan@example.org")
    with sqlite3.connect(db_path(env)) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 0
    assert doctor_id


ADD = ("user", "add", "--name", "Nora")


@pytest.mark.parametrize(
    ("args", "stdin", "field"),
    [
        pytest.param(
            ("--role", "nurse", "--email", "nora-at-example.org", "--password-stdin"),
            STRONG + "\n",
            "email:",
            id="bad-email",
        ),
        pytest.param(
            ("--role", "nurse", "--email", "nora@example.org", "--password-stdin"),
            "too short\n",
            "password:",
            id="short-password",
        ),
        pytest.param(
            ("--role", "nurse", "--email", "nora@example.org", "--password-stdin"),
            "",
            "password:",
            id="empty-stdin",
        ),
        pytest.param(
            ("--role", "nurse", "--email", "nora@example.org", "--password-stdin"),
            "\n",
            "password:",
            id="empty-line-on-stdin",
        ),
        pytest.param(
            ("--role", "patient", "--email", "nora@example.org", "--birth-date", "1950-13-45"),
            "",
            "birth_date:",
            id="bad-birth-date",
        ),
        pytest.param(
            ("--role", "patient", "--email", "nora@example.org", "--language", "espanol!"),
            "",
            "language:",
            id="bad-language",
        ),
    ],
)
def test_user_add_refuses_bad_input_naming_the_field(
    cli: Cli, env: dict[str, str], args: tuple[str, ...], stdin: str, field: str
) -> None:
    done = cli(*ADD, *args, stdin=stdin)
    assert done.code == 2
    assert done.out == ""
    last = done.err.splitlines()[-1]
    assert last.startswith("telemed: error: ")
    assert field in last
    assert user_count(env) == 0


def test_a_duplicate_email_is_refused_with_a_json_error(cli: Cli, env: dict[str, str]) -> None:
    add_user(cli, "doctor", "dora@example.org")
    done = run_cli(
        env,
        "user", "add", "--role", "nurse", "--email", "DORA@example.org", "--name", "Other",
        "--password-stdin", "--json",
        stdin=STRONG + "\n",
    )  # fmt: skip
    assert done.code == 2
    assert done.json() == {"error": "email: is already registered"}
    assert "email:" in done.err
    assert user_count(env) == 1


def test_an_unknown_role_is_refused_by_argparse(cli: Cli, env: dict[str, str]) -> None:
    done = cli(*ADD, "--role", "surgeon", "--email", "nora@example.org")
    assert done.code == 2
    assert "--role" in done.err
    assert "invalid choice" in done.err
    assert user_count(env) == 0


# care teams -------------------------------------------------------------------------
def test_care_team_add_and_remove(cli: Cli) -> None:
    patient = add_user(cli, "patient", "pat@example.org")
    other_patient = add_user(cli, "patient", "pia@example.org")
    doctor = add_user(cli, "doctor", "doc@example.org")
    nurse = add_user(cli, "nurse", "nurse@example.org")

    def team(verb: str, clinician: str, on: str = patient) -> CliRun:
        # `--opt=ID`: a generated id may start with "-" (see test_ids_starting_with_a_dash)
        return cli("care-team", verb, f"--patient={on}", f"--clinician={clinician}", "--json")

    first = team("add", doctor)
    assert first.code == 0, first.err
    assert first.json() == {
        "patient": patient,
        "clinician": doctor,
        "changed": True,
        "care_team": [doctor],
    }
    again = team("add", doctor).json()
    assert again["changed"] is False
    assert again["care_team"] == [doctor]
    assert team("add", nurse).json()["care_team"] == sorted([doctor, nurse])

    refused = team("add", other_patient)
    assert refused.code == 2
    assert refused.json()["error"].startswith("clinician:")
    assert "clinician:" in refused.err

    unknown = team("add", doctor, on="no-such-patient")
    assert unknown.code == 2
    assert unknown.json()["error"].startswith("patient:")
    assert "no-such-patient" in unknown.err

    removed = team("remove", doctor).json()
    assert removed["changed"] is True
    assert removed["care_team"] == [nurse]
    assert team("remove", doctor).json()["changed"] is False
    assert team("add", doctor, on=other_patient).json()["care_team"] == [doctor]


def test_generated_ids_never_look_like_options() -> None:
    """A URL-safe base64 id started with "-" one time in 64, and argparse took it for an
    option; ids are now 128-bit hex."""
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and not i.startswith("-") for i in ids)
    assert all(int(i, 16) >= 0 for i in ids)


def dash_id() -> str:
    """An id as an older build could make: starting with "-"."""
    return "-" + new_id()[1:]


@pytest.mark.parametrize("command_", ["care-team", "token"])
def test_ids_starting_with_a_dash_can_still_be_passed(
    cli: Cli, env: dict[str, str], command_: str
) -> None:
    """Such an id goes in as --patient=ID, or after --."""

    async def seed() -> tuple[str, str, str]:
        store = await SqliteStore.open(env["TELEMED_STORE_URL"])
        try:
            now = utcnow()
            patient = User(dash_id(), "pat@example.org", "Pat", Role.PATIENT, "", now)
            doctor = User(dash_id(), "doc@example.org", "Doc", Role.DOCTOR, "", now)
            await store.add_user(patient)
            await store.add_user(doctor)
            await store.add_patient(Patient(patient.id, "Pat", None, "en", now))
            token = ApiToken(dash_id(), doctor.id, "lab", token_hash(new_token()), now)
            await store.add_token(token)
            return patient.id, doctor.id, token.id
        finally:
            await store.close()

    patient, doctor, token = asyncio.run(seed())
    if command_ == "care-team":
        done = cli("care-team", "add", f"--patient={patient}", f"--clinician={doctor}", "--json")
        assert done.code == 0, done.err
        assert done.json()["care_team"] == [doctor]
    else:
        done = cli("token", "revoke", "--", token)
        assert done.code == 0, done.err
        assert token in done.out


# API tokens -------------------------------------------------------------------------
def test_tokens_are_shown_once_stored_hashed_and_revocable(cli: Cli, env: dict[str, str]) -> None:
    user_id = add_user(cli, "doctor", "dora@example.org")
    created = run_cli(env, "token", "create", "--email", "dora@example.org", "--name", "lab",
                      "--json")  # fmt: skip
    assert created.code == 0, created.err
    data = created.json()
    secret, token_id = data["token"], data["id"]
    assert secret.startswith("tmd_")
    assert len(secret) > 40
    assert (data["user_id"], data["name"]) == (user_id, "lab")

    random_part = secret.removeprefix("tmd_").encode()
    files = sorted(db_path(env).parent.glob("telemed.db*"))
    assert files
    for file in files:
        assert random_part not in file.read_bytes(), file.name
    with sqlite3.connect(db_path(env)) as conn:
        rows = conn.execute("SELECT * FROM api_tokens").fetchall()
        audit = conn.execute("SELECT * FROM audit_log").fetchall()
    assert len(rows) == 1
    assert hashlib.sha256(secret.encode()).hexdigest() in rows[0]
    assert not any(secret in str(value) for row in rows + audit for value in row)

    listed = cli("token", "list", "--json")
    assert listed.code == 0
    assert secret not in listed.out
    assert random_part.decode() not in listed.out
    assert listed.json() == {
        "tokens": [{"id": token_id, "user_id": user_id, "name": "lab", "active": True}]
    }

    revoked = cli("token", "revoke", "--", token_id)
    assert revoked.code == 0, revoked.err
    assert token_id in revoked.out
    assert cli("token", "list", "--json").json()["tokens"][0]["active"] is False

    unknown = cli("token", "revoke", "no-such-token")
    assert unknown.code == 2
    assert "no-such-token" in unknown.err


def test_token_create_for_an_unknown_email_names_the_field(cli: Cli) -> None:
    done = cli("token", "create", "--email", "nobody@example.org")
    assert done.code == 2
    assert "email:" in done.err


# while the server runs --------------------------------------------------------------
def app_env(settings: Settings) -> dict[str, str]:
    """The CLI pointed at the running app's own SQLite file."""
    return cli_env(settings.var_dir, settings.store.url)


async def test_a_token_made_and_revoked_by_the_cli_works_at_once_in_the_running_app(
    client: Client, people: People, settings: Settings
) -> None:
    env = app_env(settings)
    created = await arun_cli(env, "token", "create", "--email", people.doctor_a.email, "--json")
    assert created.code == 0, created.err
    token = created.json()
    bearer = {"Authorization": f"Bearer {token['token']}"}

    me = await client.get("/api/me", headers=bearer)
    assert me.status == 200
    assert (await me.json())["id"] == people.doctor_a.id
    read = await client.get(f"/api/patients/{people.patient_1.id}", headers=bearer)
    assert read.status == 200

    revoked = await arun_cli(env, "token", "revoke", "--json", "--", token["id"])
    assert revoked.code == 0, revoked.err
    assert revoked.json() == {"id": token["id"], "revoked": True}

    refused = await client.get("/api/me", headers=bearer)
    assert refused.status == 401
    assert "error" in await refused.json()


async def test_a_user_added_by_the_cli_signs_in_to_the_running_app(
    client: Client, people: People, settings: Settings
) -> None:
    env = app_env(settings)
    added = await arun_cli(
        env,
        "user", "add", "--role", "nurse", "--email", "nell@example.org", "--name", "Nurse Nell",
        "--password-stdin", "--json",
        stdin=STRONG + "\n",
    )  # fmt: skip
    assert added.code == 0, added.err

    signed_in = await login(client, "nell@example.org", STRONG)
    assert signed_in.status == 302
    me = await client.get("/api/me")
    assert me.status == 200
    assert (await me.json())["email"] == "nell@example.org"

    # the app and the CLI appended to one chain, each in turn
    verified = await arun_cli(env, "audit", "verify", "--json")
    assert verified.code == 0, verified.out
    verdict = verified.json()
    assert verdict["ok"] is True
    records = [r async for r in client.app[STORE].audit_records()]
    assert {"cli", added.json()["id"]} <= {r.event.actor_id for r in records}
    assert verdict["count"] == verdict["head_seq"] == len(records)


# the audit chain --------------------------------------------------------------------
def test_audit_verify_on_a_fresh_log(cli: Cli, env: dict[str, str]) -> None:
    empty = run_cli(env, "audit", "verify")
    assert empty.code == 0, empty.err
    assert "intact" in empty.out

    add_user(cli, "doctor", "dora@example.org")
    add_user(cli, "nurse", "nick@example.org")
    done = run_cli(env, "audit", "verify", "--json")
    assert done.code == 0, done.err
    verdict = done.json()
    with sqlite3.connect(db_path(env)) as conn:
        head = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    assert verdict["ok"] is True
    assert verdict["count"] == 2
    assert (verdict["head_seq"], verdict["head_hash"]) == (head[0], head[1])
    assert verdict["first_bad_seq"] is None


# configuration ----------------------------------------------------------------------
def test_a_malformed_port_fails_any_command_in_one_line(env: dict[str, str]) -> None:
    done = run_cli({**env, "TELEMED_SERVER_PORT": "abc"}, "user", "list", "--json")
    assert done.code == 2
    assert done.out == ""
    assert len(done.err.splitlines()) == 1
    assert "server.port" in done.err
    assert not db_path(env).exists()


def test_a_config_without_a_store_section_fails_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    text = CONFIG.read_text(encoding="utf-8")
    without_store = re.sub(r"^\[store\]\n(?:[^\[\n].*\n|\n)*", "", text, flags=re.MULTILINE)
    assert "[store]" not in without_store
    assert "[mqtt]" in without_store
    config = tmp_path / "config.toml"
    config.write_text(without_store, encoding="utf-8")

    done = run_cli(env, "audit", "verify", config=config)
    assert done.code == 2
    assert len(done.err.splitlines()) == 1
    assert "[store]" in done.err


@pytest.mark.parametrize(
    "args",
    [
        ("user", "add", "--role", "admin", "--email", "a@example.org", "--name", "A"),
        ("user", "list"),
        ("care-team", "add", "--patient", "p", "--clinician", "c"),
        ("token", "list"),
        ("token", "revoke", "x"),
        ("audit", "verify"),
        ("demo", "seed"),
    ],
)
@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("TELEMED_SERVER_PORT", "abc", "server.port"),
        ("TELEMED_SERVER_PORT", "70000", "server.port"),
        ("TELEMED_MQTT_EMBEDDED", "maybe", "mqtt.embedded"),
        ("TELEMED_LOG_LEVEL", "LOUD", "log.level"),
        ("TELEMED_STORE_URL", "postgres://db", "store.url"),
    ],
)
def test_every_command_refuses_a_malformed_config(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    variable: str,
    value: str,
    key: str,
) -> None:
    done = run_main(monkeypatch, capsys, {**env, variable: value}, *args)
    assert done.code == 2
    assert done.out == ""
    assert len(done.err.splitlines()) == 1
    assert done.err.startswith("telemed: configuration error: ")
    assert key in done.err
    assert not db_path(env).exists()


# demo -------------------------------------------------------------------------------
def test_demo_seed_prints_five_logins_once(cli: Cli, env: dict[str, str]) -> None:
    seeded = run_cli(env, "demo", "seed")
    assert seeded.code == 0, seeded.err
    logins = [line.split() for line in seeded.out.splitlines() if "password:" in line]
    assert [login[0] for login in logins] == ["admin", "doctor", "nurse", "patient", "patient"]

    saved = Path(env["TELEMED_VAR_DIR"]) / "demo-logins.txt"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text(encoding="utf-8").rstrip() == seeded.out.rstrip()

    with sqlite3.connect(db_path(env)) as conn:
        stored = dict(conn.execute("SELECT email, password_hash FROM users").fetchall())
    assert len(stored) == 5
    for login_ in logins:
        email, password = login_[1], login_[3]
        assert verify_password(stored[email], password), email

    again = cli("demo", "seed")
    assert again.code == 2
    assert "empty" in again.err
    assert saved.read_text(encoding="utf-8").rstrip() == seeded.out.rstrip()
    assert user_count(env) == 5


# visits -----------------------------------------------------------------------------
def test_visit_create_prints_the_join_link_once_and_the_visit_is_listed(cli: Cli) -> None:
    doctor = add_user(cli, "doctor", "doc@example.org")
    patient = add_user(cli, "patient", "pat@example.org")
    assert cli("care-team", "add", "--patient", patient, "--clinician", doctor).code == 0

    made = cli(
        "visit", "create", "--patient", patient, "--doctor", doctor,
        "--at", "2030-01-02T09:30+01:00", "--json",
    )  # fmt: skip
    assert made.code == 0, made.err
    visit = made.json()
    assert visit["state"] == "scheduled"
    assert visit["scheduled_at"] == "2030-01-02T08:30:00.000Z"
    assert re.fullmatch(r"http://127\.0\.0\.1:8080/v/[A-Za-z0-9_-]{43}", visit["join_url"])

    listed = cli("visit", "list", "--patient", patient, "--json").json()["visits"]
    assert [v["visit_id"] for v in listed] == [visit["visit_id"]]
    assert "join_url" not in listed[0]

    relinked = cli("visit", "link", visit["visit_id"], "--json").json()
    assert relinked["join_url"] != visit["join_url"]
    cancelled = cli("visit", "cancel", visit["visit_id"], "--json").json()
    assert cancelled["state"] == "cancelled"
    human = cli("visit", "list", "--doctor", doctor)
    assert f"{visit['visit_id']}  cancelled" in human.out


def test_visit_create_refuses_what_is_wrong_and_names_it(cli: Cli) -> None:
    doctor = add_user(cli, "doctor", "doc@example.org")
    patient = add_user(cli, "patient", "pat@example.org")
    cases = [
        (("--patient", patient, "--doctor", doctor), "doctor: is not on the patient's care team"),
        (("--patient", "nobody", "--doctor", doctor), "patient: no patient has id nobody"),
        (("--patient", patient, "--doctor", doctor, "--at", "noon"), "--at: not a time"),
        (
            ("--patient", patient, "--doctor", doctor, "--at", "2030-01-02T09:30"),
            "--at: give the time zone too",
        ),
    ]
    for args, expected in cases:
        done = cli("visit", "create", *args)
        assert done.code == 2, done
        assert expected in done.err, done.err
    assert cli("visit", "cancel", "nosuchvisit").code == 2
    assert cli("visit", "list", "--json").json() == {"visits": []}


def test_visit_invite_prints_the_guests_join_link_once(cli: Cli) -> None:
    doctor = add_user(cli, "doctor", "doc@example.org")
    patient = add_user(cli, "patient", "pat@example.org")
    assert cli("care-team", "add", "--patient", patient, "--clinician", doctor).code == 0
    visit = cli("visit", "create", "--patient", patient, "--doctor", doctor, "--json").json()

    made = cli(
        "visit", "invite", "--visit", visit["visit_id"], "--role", "interpreter",
        "--name", "Ines Ortiz", "--json",
    )  # fmt: skip
    assert made.code == 0, made.err
    guest = made.json()
    assert re.fullmatch(r"[0-9a-f]{32}", guest["guest_id"])
    assert re.fullmatch(r"http://127\.0\.0\.1:8080/v/[A-Za-z0-9_-]{43}", guest["join_url"])
    assert guest["join_url"] != visit["join_url"]
    assert (guest["role"], guest["name"], guest["state"]) == (
        "interpreter",
        "Ines Ortiz",
        "invited",
    )
    assert guest["expires_at"] == visit["link_expires_at"]

    human = cli(
        "visit", "invite", "--visit", visit["visit_id"], "--role", "family", "--name", "Fran"
    )
    assert human.code == 0, human.err
    assert "join_url" in human.out
    assert re.search(r"guest_id\s+[0-9a-f]{32}", human.out)
    listed = cli("visit", "list", "--patient", patient, "--json").json()["visits"]
    assert [g["name"] for g in listed[0]["guests"]] == ["Ines Ortiz", "Fran"]
    assert "join_url" not in str(listed)

    full = cli(
        "visit", "invite", "--visit", visit["visit_id"], "--role", "colleague", "--name", "X"
    )
    assert full.code == 2
    assert "guests: a call has at most 4 participants" in full.err
    for args, expected in [
        (("--role", "plumber", "--name", "X"), "role: must be one of interpreter, family"),
        (("--role", "family", "--name", " "), "name: is required"),
    ]:
        done = cli("visit", "invite", "--visit", visit["visit_id"], *args)
        assert done.code == 2, done
        assert expected in done.err, done.err
    assert cli("visit", "invite", "--visit", "nosuch", "--role", "family", "--name", "X").code == 2
