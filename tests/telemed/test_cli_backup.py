"""`telemed backup`, `backup verify`, `backup new-key` and `restore` on SQLite, as an
operator runs them: the archive, what is refused and why, and a restore that replaces
nothing unless told to."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.telemed.test_cli import Cli, CliRun, add_user, cli_env, run_main


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / "var")


@pytest.fixture
def cli(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    def run(*args: str, environ: dict[str, str] | None = None) -> CliRun:
        return run_main(monkeypatch, capsys, environ or env, *args)

    return run


def test_backup_then_restore_into_a_new_install(
    cli: Cli, env: dict[str, str], tmp_path: Path
) -> None:
    no_key = cli("backup")
    assert no_key.code == 2
    assert "telemed backup new-key" in no_key.err
    made = cli("backup", "new-key", "--json")
    assert made.code == 0, made.err
    key = Path(made.json()["path"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert cli("backup", "new-key").code == 2  # never replaces the key its backups need
    doctor = add_user(cli, "doctor", "doc@clinic.test")
    patient = add_user(cli, "patient", "pat@clinic.test")
    assert cli("care-team", "add", "--patient", patient, "--clinician", doctor).code == 0

    done = cli("backup", "--json")
    assert done.code == 0, done.err
    archive = Path(done.json()["path"])
    assert done.json()["counts"]["users"] == 2
    assert archive.parent == Path(env["TELEMED_VAR_DIR"]) / "backups"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert b"doc@clinic.test" not in archive.read_bytes()
    shown = cli("backup")  # the human form: a progress bar and the manifest
    assert "backing up [" in shown.err
    assert "audit chain head" in shown.out

    verified = cli("backup", "verify", str(archive), "--json")
    assert verified.code == 0, verified.err
    assert verified.json()["ok"] is True

    # a new machine: its own var folder, the archive and the backup key carried over
    other = cli_env(tmp_path / "other")
    restored = cli("restore", str(archive), "--key-file", str(key), "--json", environ=other)
    assert restored.code == 0, restored.err
    assert restored.json()["counts"] == done.json()["counts"]
    listed = cli("user", "list", "--json", environ=other)
    assert {u["email"] for u in listed.json()["users"]} == {"doc@clinic.test", "pat@clinic.test"}
    # the restored store is not empty now: a second restore is refused, then --replace
    again = cli("restore", str(archive), "--key-file", str(key), environ=other)
    assert again.code == 2
    assert "not empty" in again.err
    replaced = cli("restore", str(archive), "--key-file", str(key), "--replace", environ=other)
    assert replaced.code == 0, replaced.err
    assert "kept as" in replaced.err
    assert list((tmp_path / "other").glob("telemed.db.replaced-*"))


def test_bad_archives_and_keys_are_refused_and_nothing_changes(
    cli: Cli, env: dict[str, str], tmp_path: Path
) -> None:
    assert cli("backup", "new-key").code == 0
    add_user(cli, "doctor", "doc@clinic.test")
    archive = Path(cli("backup", "--json").json()["path"])
    data = archive.read_bytes()

    wrong_key = tmp_path / "wrong.key"
    other = cli_env(tmp_path / "other")
    assert cli("backup", "new-key", "--out", str(wrong_key), environ=other).code == 0
    refused = cli("backup", "verify", str(archive), "--key-file", str(wrong_key))
    assert refused.code == 2
    assert "not the backup key" in refused.err

    cut = tmp_path / "cut.tmbk"
    cut.write_bytes(data[: len(data) // 2])
    cut_answer = cli("backup", "verify", str(cut))
    assert cut_answer.code == 2
    assert "cut short" in cut_answer.err

    tampered = tmp_path / "tampered.tmbk"
    tampered.write_bytes(data[:-40] + bytes([data[-40] ^ 1]) + data[-39:])
    assert cli("backup", "verify", str(tampered)).code == 2

    newer = tmp_path / "newer.tmbk"
    newer.write_bytes(data.replace(b'"format":1', b'"format":2', 1))
    answer = cli("backup", "verify", str(newer))
    assert answer.code == 2
    assert "newer" in answer.err

    not_one = tmp_path / "notes.txt"
    not_one.write_text("hello")
    assert cli("restore", str(not_one)).code == 2

    # a restore of a cut archive leaves the target as it was: empty, no stray files
    target_env = cli_env(tmp_path / "target")
    failed = cli("restore", str(cut), "--key-file", str(env_key(env)), environ=target_env)
    assert failed.code == 2
    assert not list((tmp_path / "target").glob("*.restoring-*"))
    assert cli("user", "list", "--json", environ=target_env).json()["users"] == []


def env_key(env: dict[str, str]) -> Path:
    return Path(env["TELEMED_VAR_DIR"]) / "keys" / "backup.key"


def test_a_file_system_refusal_is_one_line_naming_the_file(
    cli: Cli, env: dict[str, str], tmp_path: Path
) -> None:
    assert cli("backup", "new-key").code == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    refused = cli("backup", "--out", str(blocker / "x.tmbk"))
    assert refused.code == 2
    assert refused.err.startswith("telemed: error: ")
    assert "Traceback" not in refused.err
    assert str(blocker) in refused.err
