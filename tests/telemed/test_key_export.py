"""`telemed keys export` and `telemed keys import`: the keys move between two machines
(two var folders, two stores) in a passphrase-protected file, and every way the file or
the passphrase can be wrong is refused without touching the key file.

scrypt runs at a low cost here (`SCRYPT_COST` replaced), except in the one test that
checks the cost every real export uses."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from telemed import key_export
from telemed.clock import iso, utcnow
from telemed.keyring import EnvKeys, KeyFile
from telemed.sealing import Binding, Sealer
from tests.telemed.test_cli import CliRun, cli_env, db_path, run_main
from tests.telemed.test_cli_keys import add_data_keys, key_path

PASSPHRASE = "correct horse battery staple"
PRODUCTION_COST = key_export.SCRYPT_COST  # as the module defines it, before any test
FAST = key_export.ScryptCost(n=2**10, r=8, p=1)
ALTERED = "wrong passphrase, or the file was altered"


@dataclass(frozen=True)
class Machine:
    env: dict[str, str]
    run: Callable[..., CliRun]

    @property
    def key_path(self) -> Path:
        return key_path(self.env)

    def key_file(self) -> KeyFile:
        keys = KeyFile(self.key_path)
        keys.load()
        return keys

    def export(self, out: Path, *extra: str, passphrase: str = PASSPHRASE) -> CliRun:
        return self.run(
            "keys", "export", "--out", str(out), "--passphrase-stdin", "--json", *extra,
            stdin=passphrase + "\n",
        )  # fmt: skip

    def import_(self, path: Path, *extra: str, passphrase: str = PASSPHRASE) -> CliRun:
        return self.run(
            "keys", "import", str(path), "--passphrase-stdin", "--json", *extra,
            stdin=passphrase + "\n",
        )  # fmt: skip


NewMachine = Callable[..., Machine]


@pytest.fixture
def new_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> NewMachine:
    """An install with its own var folder, store and key file (none yet); `extra` are
    more TELEMED_* variables."""
    monkeypatch.setattr(key_export, "SCRYPT_COST", FAST)

    def machine(name: str, **extra: str) -> Machine:
        env = {**cli_env(tmp_path / name / "var"), **extra}

        def run(*args: str, stdin: str = "") -> CliRun:
            return run_main(monkeypatch, capsys, env, *args, stdin=stdin)

        return Machine(env, run)

    return machine


@pytest.fixture
def machines(new_machine: NewMachine) -> tuple[Machine, Machine]:
    return new_machine("a"), new_machine("b")


@pytest.fixture
def exported(machines: tuple[Machine, Machine], tmp_path: Path) -> Path:
    """Machine A's keys (a first key, then a rotation's second) in an export file, alone
    in its folder."""
    a, _ = machines
    assert a.run("keys", "status").code == 0
    assert a.run("keys", "rotate").code == 0
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "clinic.keys"
    done = a.export(path)
    assert done.code == 0, done.err
    return path


def body_of(path: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(path.read_text())
    return body


def flip(text: str) -> str:
    """The base64 of the same bytes with one bit of the first byte flipped."""
    data = bytearray(base64.b64decode(text))
    data[0] ^= 0x01
    return base64.b64encode(bytes(data)).decode()


# moving keys --------------------------------------------------------------------------
def test_a_data_key_sealed_on_one_machine_opens_on_the_other_after_import(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    a, b = machines
    assert a.run("keys", "status").code == 0
    binding = Binding("record-1", 1, "patient-1", "note")
    data_key, wrapped = Sealer(a.key_file()).new_key("patient-1", utcnow())
    sealed = data_key.seal(binding, b"consultation note")

    path = tmp_path / "clinic.keys"
    shown = a.export(path)
    assert shown.code == 0, shown.err
    [kid] = [k.id for k in a.key_file().keys()]
    assert shown.json() == {"out": str(path), "keys": [kid], "primary": kid}

    assert not b.key_path.exists()
    done = b.import_(path)
    assert done.code == 0, done.err
    assert done.json() == {"added": [kid], "present": [], "primary": kid, "created": True}
    assert stat.S_IMODE(b.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(b.key_path.parent.stat().st_mode) == 0o700
    opened = Sealer(b.key_file()).open_key(wrapped)
    assert opened.open(binding, sealed) == b"consultation note"


def test_a_restored_store_starts_once_its_keys_are_imported(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    """B holds a copy of A's database (a restored backup) and no key file: refused until
    the import, which must not need the keys the store is waiting for."""
    a, b = machines
    assert a.run("keys", "status").code == 0
    add_data_keys(a.env, 3)
    db_path(b.env).parent.mkdir(parents=True)
    with (
        contextlib.closing(sqlite3.connect(db_path(a.env))) as source,
        contextlib.closing(sqlite3.connect(db_path(b.env))) as target,
    ):
        source.backup(target)
    missing = b.run("keys", "status")
    assert missing.code == 2
    assert "not found" in missing.err

    path = tmp_path / "clinic.keys"
    assert a.export(path).code == 0
    assert b.import_(path).code == 0
    [key] = b.run("keys", "status", "--json").json()["keys"]
    assert key["kek_id"] == a.key_file().primary_id()
    assert key["primary"]
    assert key["data_keys"] == 3


def test_the_local_primary_stays_unless_primary_is_asked(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    a, b = machines
    assert a.run("keys", "status").code == 0
    assert b.run("keys", "status").code == 0
    [mine] = [k.id for k in b.key_file().keys()]
    [theirs] = [k.id for k in a.key_file().keys()]
    path = tmp_path / "clinic.keys"
    assert a.export(path).code == 0

    merged = b.import_(path)
    assert merged.code == 0, merged.err
    assert merged.json() == {"added": [theirs], "present": [], "primary": mine, "created": False}
    assert b.key_file().primary_id() == mine
    assert {k.id for k in b.key_file().keys()} == {mine, theirs}

    again = b.import_(path).json()
    assert again == {"added": [], "present": [theirs], "primary": mine, "created": False}
    human = b.run("keys", "import", str(path), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert "0 keys added, 1 already present; primary key " + mine in human.out

    promoted = b.import_(path, "--primary").json()
    assert promoted == {"added": [], "present": [theirs], "primary": theirs, "created": False}
    assert b.key_file().primary_id() == theirs
    status = b.run("keys", "status", "--json")
    assert status.code == 0, status.err  # both keys proven against B's store
    assert [(k["kek_id"], k["primary"]) for k in status.json()["keys"]] == [
        (theirs, True),
        (mine, False),
    ]


def test_a_key_id_held_with_other_bytes_refuses_the_whole_import(
    machines: tuple[Machine, Machine], exported: Path
) -> None:
    a, b = machines
    first, second = a.key_file().keys()
    b.key_path.parent.mkdir(parents=True, mode=0o700)
    b.key_path.write_text(
        json.dumps(
            {
                "format": 1,
                "primary": first.id,
                "keys": [
                    {
                        "id": first.id,
                        "key": base64.b64encode(os.urandom(32)).decode(),
                        "created_at": iso(first.created_at),
                    }
                ],
            }
        )
    )
    b.key_path.chmod(0o600)
    before = b.key_path.read_bytes()

    refused = b.import_(exported)
    assert refused.code == 2
    assert f"key {first.id}: " in refused.err
    assert "different key" in refused.err
    assert b.key_path.read_bytes() == before  # not even the other key was added
    assert second.id not in before.decode()


# the file -----------------------------------------------------------------------------
def test_the_export_is_private_and_holds_no_key_in_the_clear(
    machines: tuple[Machine, Machine], exported: Path
) -> None:
    a, _ = machines
    keys = a.key_file().keys()
    assert len(keys) == 2
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    assert os.listdir(exported.parent) == [exported.name]  # no temporary file beside it
    data = exported.read_bytes()
    for key in keys:
        for form in (
            key.key,
            base64.b64encode(key.key),
            base64.urlsafe_b64encode(key.key),
            key.key.hex().encode(),
        ):
            assert form not in data

    body = body_of(exported)
    assert sorted(body) == ["ciphertext", "format", "kdf", "kind", "nonce"]
    assert (body["format"], body["kind"]) == (1, "telemed-keys")
    kdf = body["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", FAST.n, FAST.r, FAST.p)
    salt = base64.b64decode(kdf["salt"])
    assert len(salt) == 16
    # the header is the associated data: the right key opens it only with the header
    derived = Scrypt(salt=salt, length=32, n=FAST.n, r=FAST.r, p=FAST.p).derive(PASSPHRASE.encode())
    nonce, ciphertext = base64.b64decode(body["nonce"]), base64.b64decode(body["ciphertext"])
    with pytest.raises(InvalidTag):
        AESGCM(derived).decrypt(nonce, ciphertext, None)
    header = {k: body[k] for k in ("format", "kind", "kdf")}
    aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    payload = json.loads(AESGCM(derived).decrypt(nonce, ciphertext, aad))
    assert payload["primary"] == a.key_file().primary_id()
    assert [base64.b64decode(k["key"]) for k in payload["keys"]] == [k.key for k in keys]


def test_each_export_has_its_own_salt_and_nonce(
    machines: tuple[Machine, Machine], exported: Path
) -> None:
    a, _ = machines
    again = exported.with_name("again.keys")
    assert a.export(again).code == 0
    first, second = body_of(exported), body_of(again)
    assert first["kdf"]["salt"] != second["kdf"]["salt"]
    assert first["nonce"] != second["nonce"]


def test_an_existing_file_is_replaced_only_with_force(
    machines: tuple[Machine, Machine], exported: Path
) -> None:
    a, b = machines
    before = exported.read_bytes()
    refused = a.export(exported)
    assert refused.code == 2
    assert "already exists" in refused.err
    assert "--force" in refused.err
    assert exported.read_bytes() == before

    forced = a.export(exported, "--force")
    assert forced.code == 0, forced.err
    assert exported.read_bytes() != before
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    assert b.import_(exported).code == 0


@pytest.mark.parametrize(
    ("passphrase", "message"),
    [
        ("short one", "passphrase: at least 12 characters"),
        ("", "passphrase: nothing was read"),
    ],
)
def test_a_short_passphrase_is_refused(
    machines: tuple[Machine, Machine], tmp_path: Path, passphrase: str, message: str
) -> None:
    a, _ = machines
    path = tmp_path / "clinic.keys"
    refused = a.export(path, passphrase=passphrase)
    assert refused.code == 2
    assert message in refused.err
    assert not path.exists()


def test_without_a_terminal_the_passphrase_comes_from_stdin(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    a, _ = machines
    path = tmp_path / "clinic.keys"
    refused = a.run("keys", "export", "--out", str(path), stdin=PASSPHRASE + "\n")
    assert refused.code == 2
    assert "--passphrase-stdin" in refused.err
    assert not path.exists()


# refusals on import -------------------------------------------------------------------
def test_a_wrong_passphrase_is_refused(machines: tuple[Machine, Machine], exported: Path) -> None:
    _, b = machines
    refused = b.import_(exported, passphrase="another long passphrase")
    assert refused.code == 2
    assert ALTERED in refused.err
    assert not b.key_path.exists()


def _ciphertext(body: dict[str, Any]) -> None:
    body["ciphertext"] = flip(body["ciphertext"])


def _last_ciphertext_byte(body: dict[str, Any]) -> None:  # in the tag
    data = bytearray(base64.b64decode(body["ciphertext"]))
    data[-1] ^= 0x80
    body["ciphertext"] = base64.b64encode(bytes(data)).decode()


def _nonce(body: dict[str, Any]) -> None:
    body["nonce"] = flip(body["nonce"])


def _salt(body: dict[str, Any]) -> None:
    body["kdf"]["salt"] = flip(body["kdf"]["salt"])


def _n(body: dict[str, Any]) -> None:
    body["kdf"]["n"] *= 2


def _r(body: dict[str, Any]) -> None:
    body["kdf"]["r"] = 4


def _p(body: dict[str, Any]) -> None:
    body["kdf"]["p"] = 2


@pytest.mark.parametrize(
    "alter",
    [_ciphertext, _last_ciphertext_byte, _nonce, _salt, _n, _r, _p],
    ids=lambda f: f.__name__,
)
def test_an_altered_file_is_refused(
    machines: tuple[Machine, Machine], exported: Path, alter: Callable[[dict[str, Any]], None]
) -> None:
    _, b = machines
    body = body_of(exported)
    alter(body)
    exported.write_text(json.dumps(body))
    refused = b.import_(exported)
    assert refused.code == 2
    assert ALTERED in refused.err
    assert not b.key_path.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "format 2 comes from a newer telemed"),
        ({"format": "1"}, "is not a format version"),
        ({"kind": "something-else"}, "not a telemed key export"),
        ({"kdf": {"name": "pbkdf2"}}, "kdf: expected scrypt"),
        ({"kdf": {"n": 2**30}}, "out of range"),
        ({"kdf": {"n": 1000}}, "out of range"),  # not a power of two
        ({"kdf": {"r": True}}, "out of range"),
        ({"nonce": "not base64!"}, "nonce is not base64"),
        ({"ciphertext": None}, "ciphertext is missing"),
    ],
    ids=str,
)
def test_a_malformed_or_newer_file_says_what_it_is(
    machines: tuple[Machine, Machine], exported: Path, change: dict[str, Any], message: str
) -> None:
    _, b = machines
    body = body_of(exported)
    for name, value in change.items():
        if isinstance(value, dict):
            body[name].update(value)
        else:
            body[name] = value
    exported.write_text(json.dumps(body))
    refused = b.import_(exported)
    assert refused.code == 2
    assert message in refused.err
    assert not b.key_path.exists()


def test_a_file_that_is_not_an_export_is_named_as_such(
    machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    a, b = machines
    assert a.run("keys", "status").code == 0
    for path in (a.key_path, tmp_path / "missing.keys"):  # the key file itself, no file
        refused = b.import_(path)
        assert refused.code == 2
        assert str(path) in refused.err
    assert "not a telemed key export" in b.import_(a.key_path).err
    assert "no such file" in b.import_(tmp_path / "missing.keys").err
    binary = tmp_path / "binary.keys"
    binary.write_bytes(os.urandom(64) + b"\xff")
    assert "not a telemed key export" in b.import_(binary).err
    assert not b.key_path.exists()


# around the commands ------------------------------------------------------------------
def test_both_commands_are_audited_without_key_material(
    machines: tuple[Machine, Machine], exported: Path
) -> None:
    a, b = machines
    assert b.import_(exported).code == 0
    secrets = [base64.b64encode(k.key).decode() for k in a.key_file().keys()] + [PASSPHRASE]
    for machine, action in ((a, "keys.export"), (b, "keys.import")):
        with contextlib.closing(sqlite3.connect(db_path(machine.env))) as conn:
            rows = conn.execute("SELECT * FROM audit_log").fetchall()
            [entry] = conn.execute(
                "SELECT entity, detail FROM audit_log WHERE action = ?", (action,)
            ).fetchall()
        assert entry[0] == f"Key/{a.key_file().primary_id()}"
        assert not any(s in str(value) for row in rows for value in row for s in secrets)
        verified = machine.run("audit", "verify", "--json")
        assert verified.code == 0, verified.out


def test_the_environment_provider_has_nothing_to_export_or_import(
    new_machine: NewMachine, exported: Path
) -> None:
    on_env = new_machine(
        "c",
        TELEMED_RECORDS_KEY_PROVIDER="env",
        TELEMED_RECORDS_ENV_KEYS=EnvKeys.generate("kek-env"),
    )
    assert on_env.run("keys", "status").code == 0  # the provider itself works
    out = exported.with_name("env.keys")
    for refused in (on_env.export(out), on_env.import_(exported)):
        assert refused.code == 2
        assert "environment variable TELEMED_RECORDS_ENV_KEYS already" in refused.err
    assert not out.exists()
    assert not on_env.key_path.exists()


def test_the_real_cost_is_scrypt_n_2_17(
    machines: tuple[Machine, Machine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PRODUCTION_COST == key_export.ScryptCost(n=2**17, r=8, p=1)
    monkeypatch.setattr(key_export, "SCRYPT_COST", PRODUCTION_COST)
    a, b = machines
    path = tmp_path / "clinic.keys"
    assert a.export(path).code == 0
    kdf = body_of(path)["kdf"]
    assert (kdf["n"], kdf["r"], kdf["p"]) == (2**17, 8, 1)
    assert b.import_(path).code == 0
