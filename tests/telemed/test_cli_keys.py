"""`telemed keys`: status, rotate (with its progress bar), remove, and the refusals that
protect the records: a wrong key file, removing a key still in use or the primary."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from telemed.clock import utcnow
from telemed.keyring import KeyFile
from telemed.sealing import Sealer
from telemed.settings import StoreSettings
from telemed.store import open_store
from tests.telemed.test_cli import Cli, CliRun, cli_env, run_main


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / "var")


@pytest.fixture
def cli(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    def run(*args: str) -> CliRun:
        return run_main(monkeypatch, capsys, env, *args)

    return run


def key_path(env: dict[str, str]) -> Path:
    return Path(env["TELEMED_VAR_DIR"]) / "keys" / "record-keys.json"


def add_data_keys(env: dict[str, str], count: int) -> None:
    """Data keys wrapped by the key file's primary, as sealing records would leave."""

    async def work() -> None:
        store = await open_store(StoreSettings(url=env["TELEMED_STORE_URL"], database=""))
        keys = KeyFile(key_path(env))
        keys.load()
        sealer = Sealer(keys)
        try:
            for _ in range(count):
                await store.add_data_key(sealer.new_key("patient-1", utcnow())[1])
        finally:
            await store.close()

    asyncio.run(work())


def test_status_on_a_first_start_creates_a_private_key_file(cli: Cli, env: dict[str, str]) -> None:
    done = cli("keys", "status", "--json")
    assert done.code == 0, done.err
    [key] = done.json()["keys"]
    assert key["primary"]
    assert key["data_keys"] == 0
    path = key_path(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_rotate_rewraps_everything_then_the_old_key_can_go(cli: Cli, env: dict[str, str]) -> None:
    first = cli("keys", "status", "--json").json()["keys"][0]["kek_id"]
    add_data_keys(env, 1500)
    shown = cli("keys", "rotate")
    assert shown.code == 0, shown.err
    assert "re-wrapping data keys [" in shown.err  # the progress bar
    assert "1,500/1,500, 0 left" in shown.err
    assert "1,500 data keys re-wrapped" in shown.out
    keys = {k["kek_id"]: k for k in cli("keys", "status", "--json").json()["keys"]}
    assert keys[first]["data_keys"] == 0
    assert not keys[first]["primary"]
    [new] = [kid for kid, k in keys.items() if k["primary"]]
    assert keys[new]["data_keys"] == 1500
    refused = cli("keys", "remove", new)
    assert refused.code == 2
    assert "primary" in refused.err
    removed = cli("keys", "remove", first, "--json")
    assert removed.code == 0, removed.err
    assert [k["kek_id"] for k in cli("keys", "status", "--json").json()["keys"]] == [new]
    again = cli("keys", "rotate", "--resume", "--json").json()
    assert again == {"primary": new, "added": False, "rewrapped": 0}


def test_a_key_still_in_use_cannot_be_removed(cli: Cli, env: dict[str, str]) -> None:
    first = cli("keys", "status", "--json").json()["keys"][0]["kek_id"]
    add_data_keys(env, 3)
    keys = KeyFile(key_path(env))
    keys.add_primary(utcnow())  # a rotation that stopped before re-wrapping anything
    refused = cli("keys", "remove", first)
    assert refused.code == 2
    assert "still wraps 3 data keys" in refused.err
    assert "rotate --resume" in refused.err
    assert cli("keys", "rotate", "--resume", "--json").json()["rewrapped"] == 3
    assert cli("keys", "remove", first).code == 0


def test_a_replaced_key_file_stops_every_command(cli: Cli, env: dict[str, str]) -> None:
    assert cli("keys", "status").code == 0
    add_data_keys(env, 1)
    path = key_path(env)
    path.unlink()
    missing = cli("keys", "status")
    assert missing.code == 2
    assert "not found" in missing.err
    assert "restore the key file" in missing.err
    KeyFile(path).create(utcnow())  # a fresh key where the old one was
    wrong = cli("keys", "status")
    assert wrong.code == 2
    assert "does not hold key" in wrong.err
