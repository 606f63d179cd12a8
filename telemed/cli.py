"""The `telemed` command line.

Commands that change data open the store directly, so they work while the server runs
(SQLite in WAL mode with a busy timeout; MongoDB as usual). `--json` prints one JSON
object on standard output, for scripts. Errors go to standard error with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import getpass
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from devices.broker import BrokerError
from devices.dynsec import DynsecError
from devices.enrollment import Enrollment, device_json
from telemed import demo, key_export, tls
from telemed.accounts import Role
from telemed.api_json import user_json, visit_json
from telemed.archive import encode_key, load_key_file, new_backup_key, read_header
from telemed.audit import averify
from telemed.backup import Manifest, copy_store, restore, verify_archive
from telemed.backup_schedule import archive_name, backup_to_file, record_success
from telemed.clinic import OPERATOR, Clinic
from telemed.clock import iso, truncate, utcnow
from telemed.errors import TelemedError
from telemed.key_custody import KeyCustody, open_key_provider
from telemed.keyring import EnvKeys, KeyFile, KeyProvider, new_key_id
from telemed.logs import configure
from telemed.private_file import write_private
from telemed.reception import Reception, booking_json, invitation_json, visit_policy
from telemed.sealing import Sealer
from telemed.settings import ConfigError, Settings, load_settings
from telemed.store import Store, open_store

log = logging.getLogger(__name__)


class CliError(Exception):
    pass


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    out(json.dumps(data, ensure_ascii=False) if args.json else human)


async def _with_clinic(settings: Settings, work: Callable[[Clinic], Awaitable[int]]) -> int:
    store: Store = await open_store(settings.store, base_dir=str(settings.base_dir))
    try:
        return await work(Clinic(store, utcnow))
    finally:
        await store.close()


# commands ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from telemed.app import create_app
    from telemed.web.access_log import RouteAccessLogger

    if args.host:
        settings = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, host=args.host)
        )
    if args.port is not None:
        settings = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, port=args.port)
        )
    if args.self_signed:
        cert, key = tls.self_signed(settings.var_dir / "tls", settings.server.host)
        settings = dataclasses.replace(
            settings,
            server=dataclasses.replace(settings.server, tls_cert=str(cert), tls_key=str(key)),
        )
        out(f"Self-signed certificate (30 days): {cert}. Browsers will warn once; accept it.")
    ssl_context = None
    if settings.server.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(
                settings.resolve(settings.server.tls_cert),
                settings.resolve(settings.server.tls_key),
            )
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"server.tls_cert/tls_key: cannot be loaded: {exc}") from exc
    with single_server(settings.var_dir):
        _check_port_free(settings.server.host, settings.server.port)
        if settings.demo.seed:
            asyncio.run(_seed_demo_if_empty(settings))
        try:
            asyncio.run(_serve(create_app(settings), settings, ssl_context, RouteAccessLogger))
        except BrokerError as exc:
            raise CliError(str(exc)) from exc
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Fail before anything starts, with a message that says what to change."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"server.port: cannot listen on {host}:{port} ({exc.strerror}); "
                "choose another with --port or TELEMED_SERVER_PORT"
            ) from None


async def _serve(
    app: web.Application,
    settings: Settings,
    ssl_context: ssl.SSLContext | None,
    access_log_class: type[AbstractAccessLogger],
) -> None:
    """Start the app's resources, listen, and run until SIGINT or SIGTERM."""
    runner = web.AppRunner(app, access_log_class=access_log_class)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, settings.server.host, settings.server.port, ssl_context=ssl_context
        )
        try:
            await site.start()
        except OSError as exc:
            raise CliError(
                f"server.port: cannot listen on {settings.server.host}:{settings.server.port} "
                f"({exc.strerror}); choose another with --port or TELEMED_SERVER_PORT"
            ) from None
        out(f"Telemed serving on {settings.base_url}  (sign in at {settings.base_url}/login)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def single_server(var_dir: Path) -> Iterator[None]:
    """One server per var folder: two would share (and fight over) the broker's files."""
    # 0711: others may pass through (Mosquitto's own user reaches var/mosquitto) but not
    # list it; what is inside is the owner's alone (0600 files)
    var_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    path = var_dir / "server.lock"
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise CliError(
                f"another telemed server (pid {pid}) is already running with {var_dir}; "
                "stop it, or give this one its own var_dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def _seed_demo_if_empty(settings: Settings) -> None:
    async def work(clinic: Clinic) -> int:
        logins_file = settings.var_dir / demo.LOGINS_FILE
        if not await clinic.store.is_empty():
            if logins_file.exists():
                out(f"Demo sign-ins are in {logins_file}")
            return 0
        if clinic.store.kind != "sqlite":
            log.warning("demo seeding refused on a MongoDB store; create users with the CLI")
            out(
                "Demo seeding is refused on a MongoDB store: add an admin with "
                "`telemed user add --role admin ...`."
            )
            return 0
        logins = await demo.seed(clinic, settings.var_dir)
        out(demo.format_logins(logins).rstrip() + f"\n  (also saved in {logins_file})")
        return 0

    await _with_clinic(settings, work)


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("password: nothing was read from standard input")
        return password
    if sys.stdin.isatty():
        first = getpass.getpass("Password (12+ characters): ")
        if first != getpass.getpass("Again: "):
            raise CliError("password: the two entries differ")
        return first
    return None


def cmd_user_add(args: argparse.Namespace, settings: Settings) -> int:
    password = _read_password(args)

    async def work(clinic: Clinic) -> int:
        user = await clinic.add_user(
            OPERATOR,
            role=args.role,
            email=args.email,
            name=args.name,
            password=password,
            language=args.language,
            birth_date=args.birth_date,
        )
        note = "" if password else " (no password: cannot sign in until one is set)"
        emit(args, user_json(user), f"{user.id}{note}")
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_user_change(args: argparse.Namespace, settings: Settings) -> int:
    command = args.user_command
    password = _read_password(args) if command == "set-password" else None
    if command == "set-password" and password is None:
        raise CliError("password: give it with --password-stdin, or run in a terminal")

    async def work(clinic: Clinic) -> int:
        if command in ("disable", "enable"):
            await clinic.set_user_active(OPERATOR, args.id, command == "enable")
        elif command == "reset-2fa":
            await clinic.reset_two_factor(OPERATOR, args.id)
        elif command == "unlock":
            await clinic.unlock(OPERATOR, args.id)
        else:
            await clinic.set_password(OPERATOR, args.id, password or "")
        user = await clinic.user(args.id)
        emit(args, user_json(user), f"{command}: done for {user.id}")
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_user_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        role = Role(args.role) if args.role else None
        users = await clinic.list_users(OPERATOR, role)
        if args.json:
            out(json.dumps({"users": [user_json(u) for u in users]}, ensure_ascii=False))
        else:
            for u in users:
                out(f"{u.id}  {u.role.value:8} {u.email:30} {u.name}")
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_care_team(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        if args.care_team_command == "add":
            changed = await clinic.add_care_team_member(OPERATOR, args.patient, args.clinician)
            human = "added" if changed else "already on the care team"
        else:
            changed = await clinic.remove_care_team_member(OPERATOR, args.patient, args.clinician)
            human = "removed" if changed else "was not on the care team"
        team = sorted(await clinic.store.care_team(args.patient))
        emit(
            args,
            {
                "patient": args.patient,
                "clinician": args.clinician,
                "changed": changed,
                "care_team": team,
            },
            human,
        )
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        token, secret = await clinic.create_token(OPERATOR, args.email, args.name)
        emit(
            args,
            {"id": token.id, "token": secret, "user_id": token.user_id, "name": token.name},
            f"Token {token.id} (shown once, keep it secret):\n{secret}",
        )
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        await clinic.revoke_token(OPERATOR, args.id)
        emit(args, {"id": args.id, "revoked": True}, f"revoked {args.id}")
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        tokens = await clinic.store.list_tokens()
        rows = [
            {"id": t.id, "user_id": t.user_id, "name": t.name, "active": t.active} for t in tokens
        ]
        if args.json:
            out(json.dumps({"tokens": rows}))
        else:
            for r in rows:
                state = "active " if r["active"] else "revoked"
                out(f"{r['id']}  {state}  {r['user_id']}  {r['name']}")
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        verdict = await averify(clinic.store.audit_records())
        data = dataclasses.asdict(verdict)
        if verdict.ok:
            emit(
                args,
                data,
                f"audit log intact: {verdict.count} entries, head "
                f"{verdict.head_seq} {verdict.head_hash}",
            )
            return 0
        emit(args, data, f"audit log BROKEN at entry {verdict.first_bad_seq}: {verdict.reason}")
        return 1

    return asyncio.run(_with_clinic(settings, work))


class ProgressBar:
    """A one-line progress bar on standard error: what is done, what is left, the rate."""

    WIDTH = 30

    def __init__(self, label: str, *, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH if total == 0 else self.WIDTH * done // max(total, 1)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{done:,}/{total:,}, {total - done:,} left, {done / elapsed:,.0f}/s "
        )
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


async def _with_keys(
    settings: Settings, work: Callable[[Clinic, KeyCustody, KeyProvider], Awaitable[int]]
) -> int:
    async def keyed(clinic: Clinic) -> int:
        provider = await open_key_provider(settings, clinic.store, utcnow)
        return await work(clinic, KeyCustody(clinic.store, Sealer(provider)), provider)

    return await _with_clinic(settings, keyed)


def cmd_keys_status(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic, custody: KeyCustody, provider: KeyProvider) -> int:
        rows = await custody.status()
        data = {
            "provider": provider.description,
            "keys": [dataclasses.asdict(r) for r in rows],
        }
        lines = [f"Key-encryption keys ({provider.description}):"]
        for r in rows:
            marks = ("primary" if r.primary else "") + ("" if r.held else " NOT HELD")
            lines.append(f"  {r.kek_id}  wraps {r.data_keys:,} data keys  {marks}".rstrip())
        emit(args, data, "\n".join(lines))
        return 0

    return asyncio.run(_with_keys(settings, work))


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    bar = ProgressBar("re-wrapping data keys")
    state = {"done": 0}

    def progress(done: int, total: int) -> None:
        state["done"] = done
        if not args.json:
            bar(done, total)

    async def work(clinic: Clinic, custody: KeyCustody, provider: KeyProvider) -> int:
        now_key = None
        if isinstance(provider, KeyFile):
            key_file = provider
            now_key = lambda: key_file.add_primary(utcnow())  # noqa: E731
        rotation = await custody.rotate(add=not args.resume, now_key=now_key, progress=progress)
        bar.close()
        await clinic.audit(
            OPERATOR,
            "keys.rotate",
            entity=f"Key/{rotation.primary}",
            detail=f"added={rotation.added} rewrapped={rotation.rewrapped}",
        )
        emit(
            args,
            dataclasses.asdict(rotation),
            f"primary key {rotation.primary}"
            + (" (new)" if rotation.added else "")
            + f"; {rotation.rewrapped:,} data keys re-wrapped; older keys now wrap nothing",
        )
        return 0

    try:
        return asyncio.run(_with_keys(settings, work))
    except KeyboardInterrupt:
        bar.close()
        sys.stderr.write(
            f"telemed: rotation interrupted after {state['done']:,} data keys; what was "
            "re-wrapped stays so. Finish with: telemed keys rotate --resume\n"
        )
        return 130


def cmd_keys_remove(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic, custody: KeyCustody, provider: KeyProvider) -> int:
        forget = provider.remove if isinstance(provider, KeyFile) else None
        await custody.remove(args.id, forget=forget)
        await clinic.audit(OPERATOR, "keys.remove", entity=f"Key/{args.id}")
        emit(args, {"removed": args.id}, f"key {args.id} removed (it wrapped nothing)")
        return 0

    return asyncio.run(_with_keys(settings, work))


def cmd_keys_new_env(args: argparse.Namespace, settings: Settings) -> int:
    """A fresh key for the environment provider (printed once; nothing is stored)."""
    pair = EnvKeys.generate(new_key_id(utcnow()))
    emit(args, {"key": pair}, pair)
    return 0


# backups ------------------------------------------------------------------------------
def _backup_key(args: argparse.Namespace, settings: Settings, *, reading: bool = False) -> bytes:
    path = args.key_file or settings.backup_key_file
    if not Path(path).exists():
        if reading:  # a new key never opens an existing archive
            raise CliError(
                f"backup key {path} not found: pass --key-file PATH, the backup key this "
                "archive was made with (the copy you keep apart from the backups)"
            )
        raise CliError(
            f"backup key {path} not found: make one with `telemed backup new-key`, or pass "
            "--key-file PATH (the key you keep apart from the backups)"
        )
    return load_key_file(path)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    key = _backup_key(args, settings)
    now = utcnow()
    out: Path = args.out or settings.backup_folder / archive_name(now)
    if out.exists():
        raise CliError(f"--out: {out} exists already; choose another name")
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    bar = ProgressBar("backing up")

    async def work(clinic: Clinic) -> int:
        manifest = await backup_to_file(
            clinic.store, out, key, now=now, progress=None if args.json else bar
        )
        bar.close()
        await record_success(clinic.store, now, out)
        await clinic.audit(
            OPERATOR,
            "backup.write",
            entity=f"Backup/{out.name}",
            detail=f"documents={manifest.total()}",
        )
        data = {"path": str(out), **manifest_json(manifest)}
        emit(args, data, f"backup written: {out}\n{_manifest_lines(manifest)}")
        return 0

    try:
        return asyncio.run(_with_clinic(settings, work))
    except KeyboardInterrupt:
        bar.close()
        sys.stderr.write("telemed: backup interrupted; nothing was written under its name\n")
        return 130


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    return dataclasses.asdict(manifest) | {"documents": manifest.total()}


def _manifest_lines(m: Manifest) -> str:
    counts = ", ".join(f"{name} {n:,}" for name, n in m.counts.items() if n)
    snapshot = "one point in time" if m.point_in_time else "collection by collection"
    return (
        f"  made {m.created_at} by telemed {m.server_version} from {m.store_kind} "
        f"({snapshot})\n  {m.total():,} documents: {counts}\n"
        f"  audit chain head: entry {m.audit_head_seq} {m.audit_head_hash}"
    )


def cmd_backup_verify(args: argparse.Namespace, settings: Settings) -> int:
    key = _backup_key(args, settings, reading=True)
    try:
        with args.path.open("rb") as file:
            manifest = verify_archive(file, key)
    except OSError as exc:
        raise CliError(f"{args.path}: cannot read it: {exc.strerror}") from None
    emit(
        args,
        {"path": str(args.path), "ok": True, **manifest_json(manifest)},
        f"{args.path}: whole, decryptable, and true to its manifest\n{_manifest_lines(manifest)}",
    )
    return 0


def cmd_backup_new_key(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.out or settings.backup_key_file
    if path.exists():
        raise CliError(f"{path} exists already: a new key would not open the backups made with it")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:  # whole or absent, and never over another key
        write_private(path, (encode_key(new_backup_key()) + "\n").encode())
    except FileExistsError:
        raise CliError(f"{path} exists already") from None
    emit(
        args,
        {"path": str(path)},
        f"backup key written to {path} (mode 0600). Keep a copy apart from the backups: "
        "without it no backup opens, and with it anyone holding a backup reads it.",
    )
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    key = _backup_key(args, settings, reading=True)
    if not args.path.is_file():
        raise CliError(f"{args.path}: no such file")
    with args.path.open("rb") as probe:
        read_header(probe)  # not an archive, or a newer format: said before anything changes
    bar = ProgressBar("restoring")
    if settings.store.url.startswith("sqlite:///"):
        with single_server(settings.var_dir):  # never under a running server
            manifest = asyncio.run(_restore_sqlite(args, settings, key, bar))
    else:
        manifest = asyncio.run(_restore_mongo(args, settings, key, bar))
    bar.close()
    emit(
        args,
        {"path": str(args.path), **manifest_json(manifest)},
        f"restored from {args.path}; every count, digest and the audit chain check\n"
        f"{_manifest_lines(manifest)}\nThe records open once the key-encryption keys are in "
        "place (telemed keys import).",
    )
    return 0


async def _restore_sqlite(
    args: argparse.Namespace, settings: Settings, key: bytes, bar: ProgressBar
) -> Manifest:
    """Into a new file beside the database, checked, then put in its place: a failed
    restore leaves the database as it was."""
    target = Path(settings.store.url.removeprefix("sqlite:///"))
    target = target if target.is_absolute() else settings.base_dir / target
    if await asyncio.to_thread(target.exists):
        current = await open_store(settings.store, base_dir=str(settings.base_dir))
        try:
            occupied = any((await current.backup_counts()).values())
        finally:
            await current.close()
        if occupied and not args.replace:
            raise CliError(
                f"the store {target} is not empty: restore into an empty one, or pass --replace "
                "(the current file is kept beside it as .replaced-<time>). On a new machine, "
                "restore first: `telemed keys import` and a server start write to the store"
            )
    fresh = target.with_name(f"{target.name}.restoring-{secrets.token_hex(4)}")
    store = await open_store(
        dataclasses.replace(settings.store, url=f"sqlite:///{fresh}"), base_dir="/"
    )
    try:
        with args.path.open("rb") as file:  # noqa: ASYNC230 - read in chunks off the loop by restore
            manifest = await restore(file, key, store, progress=bar)
    except BaseException:
        await store.close()
        await asyncio.to_thread(_remove_database, fresh)
        raise
    await store.close()
    await asyncio.to_thread(_swap_in, fresh, target)
    return manifest


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _swap_in(fresh: Path, target: Path) -> None:
    """Put the restored file in the database's place, keeping the one that was there."""
    if target.exists():
        kept = target.with_name(f"{target.name}.replaced-{utcnow():%Y%m%dT%H%M%SZ}")
        target.replace(kept)
        sys.stderr.write(f"telemed: the store that was there is kept as {kept}\n")
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    fresh.replace(target)


async def _restore_mongo(
    args: argparse.Namespace, settings: Settings, key: bytes, bar: ProgressBar
) -> Manifest:
    if args.replace:
        raise CliError(
            "--replace works for SQLite only: on MongoDB, restore into a new database "
            "(set store.database) or drop the old one yourself"
        )
    store = await open_store(settings.store, base_dir=str(settings.base_dir))
    try:
        if any((await store.backup_counts()).values()):
            raise CliError(
                f"the database {settings.store.database} is not empty: restore into an empty "
                "database (set store.database or TELEMED_STORE_DATABASE to a new name)"
            )
        with args.path.open("rb") as file:
            try:
                return await restore(file, key, store, progress=bar)
            except BaseException:
                sys.stderr.write(
                    f"telemed: the restore stopped: the database {settings.store.database} holds "
                    "part of the backup. Drop it before you restore again.\n"
                )
                raise
    finally:
        await store.close()


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.store.url.startswith("sqlite:///"):
        raise CliError("migrate copies a SQLite store: store.url is not sqlite:///…")
    if not args.to.startswith(("mongodb://", "mongodb+srv://")):
        raise CliError(f"--to: expected mongodb://…, got {args.to!r}")
    bar = ProgressBar("copying")

    async def work() -> Manifest:
        source = await open_store(settings.store, base_dir=str(settings.base_dir))
        try:
            target = await open_store(
                dataclasses.replace(settings.store, url=args.to, database=args.database)
            )
            try:
                return await copy_store(
                    source, target, now=utcnow(), progress=None if args.json else bar
                )
            finally:
                await target.close()
        finally:
            await source.close()

    manifest = asyncio.run(work())
    bar.close()
    emit(
        args,
        {"to": _redacted(args.to), "database": args.database, **manifest_json(manifest)},
        f"copied into MongoDB database {args.database}; every count, digest and the audit "
        f"chain check\n{_manifest_lines(manifest)}\nNow set store.url (or TELEMED_STORE_URL) to "
        f"the MongoDB URL and store.database to {args.database}, then restart the server.",
    )
    return 0


def _redacted(url: str) -> str:
    """A MongoDB URL without its password, for what is printed."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"


def _file_provider_only(settings: Settings, doing: str) -> None:
    if settings.records.key_provider != "file":
        raise CliError(
            f"records.key_provider is {settings.records.key_provider}: the keys are in the "
            f"environment variable TELEMED_RECORDS_ENV_KEYS already; {doing} works only with "
            "the key file"
        )


def _read_passphrase(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.passphrase_stdin:
        passphrase = sys.stdin.readline().rstrip("\r\n")
        if not passphrase:
            raise CliError("passphrase: nothing was read from standard input")
        return passphrase
    if not sys.stdin.isatty():
        raise CliError("passphrase: give it with --passphrase-stdin, or run in a terminal")
    if not confirm:
        return getpass.getpass("Passphrase of the export: ")
    least = key_export.MIN_PASSPHRASE
    first = getpass.getpass(f"Passphrase for the export ({least}+ characters): ")
    key_export.check_passphrase(first)  # refuse before the second entry
    if first != getpass.getpass("Again: "):
        raise CliError("passphrase: the two entries differ")
    return first


def cmd_keys_export(args: argparse.Namespace, settings: Settings) -> int:
    _file_provider_only(settings, "keys export")
    path: Path = args.out.absolute()
    if path.exists() and not args.force:  # before asking for the passphrase; checked again
        raise CliError(f"--out: {path} already exists (add --force to replace it)")
    passphrase = key_export.check_passphrase(_read_passphrase(args, confirm=True))

    async def work(clinic: Clinic, custody: KeyCustody, provider: KeyProvider) -> int:
        if not isinstance(provider, KeyFile):
            raise CliError(f"{provider.description}: only the key file can be exported")
        keys, primary = provider.keys(), provider.primary_id()
        data = await asyncio.to_thread(key_export.seal_export, keys, primary, passphrase)
        await asyncio.to_thread(key_export.write_export, path, data, force=args.force)
        ids = [k.id for k in keys]
        await clinic.audit(
            OPERATOR, "keys.export", entity=f"Key/{primary}", detail=f"keys={','.join(ids)}"
        )
        emit(
            args,
            {"out": str(path), "keys": ids, "primary": primary},
            f"{len(ids)} keys (primary {primary}) exported to {path}. Keep it, and its "
            "passphrase, apart from the database's backups.",
        )
        return 0

    return asyncio.run(_with_keys(settings, work))


def cmd_keys_import(args: argparse.Namespace, settings: Settings) -> int:
    _file_provider_only(settings, "keys import")
    path: Path = args.path.absolute()
    data = key_export.read_export(path)
    passphrase = _read_passphrase(args, confirm=False)
    exported = key_export.open_export(data, passphrase, str(path))
    key_file = KeyFile(settings.key_file)

    async def work(clinic: Clinic) -> int:
        done = await asyncio.to_thread(
            key_file.import_keys, exported.keys, exported.primary, make_primary=args.primary
        )
        await clinic.audit(
            OPERATOR,
            "keys.import",
            entity=f"Key/{done.primary}",
            detail=f"added={','.join(done.added)} present={','.join(done.present)}",
        )
        emit(
            args,
            {
                "added": list(done.added),
                "present": list(done.present),
                "primary": done.primary,
                "created": done.created,
            },
            f"{len(done.added)} keys added, {len(done.present)} already present; primary key "
            f"{done.primary}" + (f" (new key file {key_file.path})" if done.created else ""),
        )
        return 0

    return asyncio.run(_with_clinic(settings, work))


def _enrollment(clinic: Clinic, settings: Settings) -> Enrollment:
    from devices.broker import broker_access

    try:
        return Enrollment(clinic, broker_access(settings.mqtt, settings.var_dir))
    except BrokerError as exc:
        raise CliError(str(exc)) from exc


def cmd_device(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        enrollment = _enrollment(clinic, settings)
        try:
            if args.device_command == "enroll":
                enrolled = await enrollment.enroll(OPERATOR, args.patient, args.kind)
                data = enrolled.as_json()
                emit(
                    args,
                    data,
                    "\n".join(
                        ["Device enrolled. The password is shown once: copy it to the device now."]
                        + [f"  {k:13} {v}" for k, v in data.items()]
                    ),
                )
            elif args.device_command == "list":
                devices = await enrollment.list(OPERATOR, args.patient)
                if args.json:
                    out(json.dumps({"devices": [device_json(d) for d in devices]}))
                for d in devices if not args.json else []:
                    state = "active " if d.active else "revoked"
                    out(f"{d.id}  {state}  patient {d.patient_id}  {d.kind}")
            else:
                device = await enrollment.revoke(OPERATOR, args.id)
                emit(args, device_json(device), f"revoked {device.id}: the broker refuses it now")
        except DynsecError as exc:
            raise CliError(f"broker: {exc}") from exc
        return 0

    return asyncio.run(_with_clinic(settings, work))


def _reception(clinic: Clinic, settings: Settings) -> Reception:
    return Reception(clinic, visit_policy(settings.visits))


def _visit_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--at: not a time: {text!r} (e.g. 2026-12-01T09:30+01:00)") from None
    if moment.tzinfo is None:
        raise CliError(f"--at: give the time zone too, e.g. {text}+01:00 or {text}Z")
    return truncate(moment)


def cmd_visit(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        reception = _reception(clinic, settings)
        if args.visit_command == "create":
            booking = await reception.book(
                OPERATOR, patient_id=args.patient, clinician_id=args.doctor, at=_visit_at(args.at)
            )
            data = booking_json(booking, settings.base_url)
            emit(
                args,
                data,
                "\n".join(
                    ["Visit created. Send the join link to the patient (it is shown once):"]
                    + [f"  {k:16} {v}" for k, v in data.items()]
                ),
            )
        elif args.visit_command == "link":
            booking = await reception.reissue_link(OPERATOR, args.id)
            data = booking_json(booking, settings.base_url)
            emit(args, data, f"New join link (the old one no longer works):\n  {data['join_url']}")
        elif args.visit_command == "invite":
            invitation = await reception.invite(
                OPERATOR, args.visit, role=args.role, name=args.name
            )
            data = invitation_json(invitation, settings.base_url)
            shown = ("guest_id", "name", "join_url", "expires_at")
            emit(
                args,
                data,
                "\n".join(
                    [f"Guest invited. Send the {data['role']} this join link (shown once):"]
                    + [f"  {k:16} {data[k]}" for k in shown]
                ),
            )
        elif args.visit_command == "list":
            visits = await clinic.store.list_visits(
                clinician_id=args.doctor, patient_id=args.patient
            )
            if args.json:
                out(json.dumps({"visits": [visit_json(v) for v in visits]}))
            for v in visits if not args.json else []:
                out(f"{v.id}  {v.state.value:9}  {iso(v.scheduled_at)}  patient {v.patient_id}")
        else:
            visit = await reception.cancel(OPERATOR, args.id)
            emit(args, visit_json(visit), f"cancelled {visit.id}: its link no longer works")
        return 0

    return asyncio.run(_with_clinic(settings, work))


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from devices.simulator import (
        DeviceCredentials,
        ProgressLine,
        credentials_path,
        enroll_or_reuse,
        simulate,
    )

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    path = credentials_path(settings.var_dir)

    devices: list[DeviceCredentials] = []

    async def enrolled(clinic: Clinic) -> int:
        try:
            found = await enroll_or_reuse(_enrollment(clinic, settings), clinic, args.devices, path)
        except DynsecError as exc:
            raise CliError(f"broker: {exc}") from exc
        devices.extend(found)
        return 0

    asyncio.run(_with_clinic(settings, enrolled))  # the store closes before the long run
    out(f"{len(devices)} devices (credentials in {path}), seed {seed}; Ctrl-C stops")
    line = ProgressLine(sys.stdout)
    try:
        stats = asyncio.run(
            simulate(
                devices,
                rate_hz=args.rate,
                duration=args.duration,
                deteriorate=args.deteriorate,
                seed=seed,
                progress=line,
            )
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        return 0
    finally:
        line.close()
    refused = f"; {stats.errors} refused (last: {stats.last_error})" if stats.errors else ""
    done = f"{stats.messages:,} messages, {stats.readings:,} readings"
    out(f"{done} in {stats.elapsed:.0f} s{refused}")
    return 1 if stats.failed else 0


def cmd_demo_seed(args: argparse.Namespace, settings: Settings) -> int:
    async def work(clinic: Clinic) -> int:
        logins = await demo.seed(clinic, settings.var_dir)
        emit(
            args,
            {"logins": [dataclasses.asdict(x) for x in logins]},
            demo.format_logins(logins).rstrip(),
        )
        return 0

    return asyncio.run(_with_clinic(settings, work))


# parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemed", description="Telemedicine server")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("config.toml"),
        help="configuration file (default: ./config.toml); may also follow the command",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument(
        "--self-signed",
        action="store_true",
        help="serve HTTPS with a throwaway self-signed certificate",
    )
    serve.add_argument("--host", default="")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", required=True
    )
    add = user.add_parser("add", help="add a user; prints the new id")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--email", required=True)
    add.add_argument("--name", required=True)
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    add.add_argument("--language", default="en", help="patients: language tag (en, es, ...)")
    add.add_argument("--birth-date", default="", help="patients: YYYY-MM-DD")
    json_flag(add)
    add.set_defaults(func=cmd_user_add)
    ls = user.add_parser("list", help="list users")
    ls.add_argument("--role", choices=[r.value for r in Role])
    json_flag(ls)
    ls.set_defaults(func=cmd_user_list)
    for name, text in (
        ("disable", "deactivate a user: sign-in, sessions and tokens stop at once"),
        ("enable", "reactivate a user"),
        ("reset-2fa", "clear a clinician's two-factor enrolment (lost phone)"),
        ("unlock", "forget a user's failed sign-ins (lift a lockout)"),
        ("set-password", "set a user's password (ends their sessions)"),
    ):
        p = user.add_parser(name, help=text)
        p.add_argument("id", help="user id")
        if name == "set-password":
            p.add_argument(
                "--password-stdin",
                action="store_true",
                help="read the password from the first line of standard input",
            )
        json_flag(p)
        p.set_defaults(func=cmd_user_change)

    team = sub.add_parser("care-team", help="manage care teams").add_subparsers(
        dest="care_team_command", required=True
    )
    for name in ("add", "remove"):
        p = team.add_parser(name, help=f"{name} a clinician on a patient's care team")
        p.add_argument("--patient", required=True, help="patient id")
        p.add_argument("--clinician", required=True, help="doctor's or nurse's user id")
        json_flag(p)
        p.set_defaults(func=cmd_care_team)

    token = sub.add_parser("token", help="API bearer tokens").add_subparsers(
        dest="token_command", required=True
    )
    create = token.add_parser("create", help="create a token for a user (shown once)")
    create.add_argument("--email", required=True)
    create.add_argument("--name", default="", help="what the token is for")
    json_flag(create)
    create.set_defaults(func=cmd_token_create)
    revoke = token.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("id")
    json_flag(revoke)
    revoke.set_defaults(func=cmd_token_revoke)
    tl = token.add_parser("list", help="list tokens (never their secrets)")
    json_flag(tl)
    tl.set_defaults(func=cmd_token_list)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    verify = audit.add_parser("verify", help="check the hash chain; exit 1 when broken")
    json_flag(verify)
    verify.set_defaults(func=cmd_audit_verify)

    device = sub.add_parser("device", help="wearables").add_subparsers(
        dest="device_command", required=True
    )
    enroll = device.add_parser(
        "enroll", help="enroll a device for a patient (shows its secret once)"
    )
    enroll.add_argument("--patient", required=True, help="patient id")
    enroll.add_argument("--kind", required=True, help="e.g. pulse-oximeter, bp-cuff, watch")
    json_flag(enroll)
    enroll.set_defaults(func=cmd_device)
    dlist = device.add_parser("list", help="list devices")
    dlist.add_argument("--patient", help="only this patient's")
    json_flag(dlist)
    dlist.set_defaults(func=cmd_device)
    drevoke = device.add_parser("revoke", help="revoke a device: the broker drops and refuses it")
    drevoke.add_argument("id")
    json_flag(drevoke)
    drevoke.set_defaults(func=cmd_device)

    visit = sub.add_parser("visit", help="video visits").add_subparsers(
        dest="visit_command", required=True
    )
    vcreate = visit.add_parser("create", help="book a visit; prints the patient's join link once")
    vcreate.add_argument("--patient", required=True, help="patient id")
    vcreate.add_argument("--doctor", required=True, help="clinician id (on the care team)")
    vcreate.add_argument("--at", help="when, with a time zone (e.g. 2026-12-01T09:30+01:00); now")
    json_flag(vcreate)
    vcreate.set_defaults(func=cmd_visit)
    vlink = visit.add_parser("link", help="issue a new join link; the old one dies")
    vlink.add_argument("id")
    json_flag(vlink)
    vlink.set_defaults(func=cmd_visit)
    vinvite = visit.add_parser(
        "invite", help="invite a guest into a visit; prints the guest's join link once"
    )
    vinvite.add_argument("--visit", required=True, help="visit id")
    vinvite.add_argument(
        "--role", required=True, help="interpreter, family or colleague", metavar="ROLE"
    )
    vinvite.add_argument("--name", required=True, help="the guest's name, as the call shows it")
    json_flag(vinvite)
    vinvite.set_defaults(func=cmd_visit)
    vlist = visit.add_parser("list", help="list visits")
    vlist.add_argument("--patient", help="only this patient's")
    vlist.add_argument("--doctor", help="only this clinician's")
    json_flag(vlist)
    vlist.set_defaults(func=cmd_visit)
    vcancel = visit.add_parser("cancel", help="cancel a visit; its link dies")
    vcancel.add_argument("id")
    json_flag(vcancel)
    vcancel.set_defaults(func=cmd_visit)

    sim = sub.add_parser(
        "simulate", help="publish realistic vitals from demo devices, as real devices would"
    )
    sim.add_argument("--devices", type=int, default=4, help="how many devices (default 4)")
    sim.add_argument("--rate", type=float, default=1.0, help="messages per second per device")
    sim.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    sim.add_argument(
        "--deteriorate",
        type=float,
        default=0.2,
        help="fraction of devices that go through a deterioration episode",
    )
    sim.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    sim.set_defaults(func=cmd_simulate)

    keys = sub.add_parser(
        "keys", help="the key-encryption keys of the records (see README, Keys)"
    ).add_subparsers(dest="keys_command", required=True)
    kstatus = keys.add_parser("status", help="how many data keys each key id wraps")
    json_flag(kstatus)
    kstatus.set_defaults(func=cmd_keys_status)
    krotate = keys.add_parser(
        "rotate",
        help="add a key, make it primary, re-wrap every data key (safe while the server runs)",
    )
    krotate.add_argument(
        "--resume",
        action="store_true",
        help="add no key: finish an interrupted rotation (or one to a primary set by hand)",
    )
    json_flag(krotate)
    krotate.set_defaults(func=cmd_keys_rotate)
    kremove = keys.add_parser("remove", help="remove a retired key; only when it wraps nothing")
    kremove.add_argument("id")
    json_flag(kremove)
    kremove.set_defaults(func=cmd_keys_remove)
    knew = keys.add_parser(
        "new-env-key", help="print a fresh id=key pair for TELEMED_RECORDS_ENV_KEYS"
    )
    json_flag(knew)
    knew.set_defaults(func=cmd_keys_new_env)
    kexport = keys.add_parser(
        "export", help="write the key file's keys to a passphrase-protected file"
    )
    kexport.add_argument("--out", type=Path, required=True, help="the file to write (mode 0600)")
    kexport.add_argument("--force", action="store_true", help="replace an existing file")
    kimport = keys.add_parser(
        "import", help="merge the keys of an export into the key file (creating it if need be)"
    )
    kimport.add_argument("path", type=Path, help="a file made by telemed keys export")
    kimport.add_argument(
        "--primary", action="store_true", help="make the export's primary key the primary here"
    )
    for p, func in ((kexport, cmd_keys_export), (kimport, cmd_keys_import)):
        p.add_argument(
            "--passphrase-stdin",
            action="store_true",
            help="read the passphrase from the first line of standard input",
        )
        json_flag(p)
        p.set_defaults(func=func)

    backup = sub.add_parser(
        "backup", help="write an encrypted backup of the whole store (see README, Backups)"
    )
    backup.add_argument("--out", type=Path, help="the archive to write (default: backup.folder)")
    backup.add_argument("--key-file", type=Path, help="the backup key (default: backup.key_file)")
    json_flag(backup)
    backup.set_defaults(func=cmd_backup)
    bsub = backup.add_subparsers(dest="backup_command")
    bverify = bsub.add_parser("verify", help="prove an archive whole and decryptable")
    bverify.add_argument("path", type=Path)
    bverify.add_argument("--key-file", type=Path, help="the backup key")
    json_flag(bverify)
    bverify.set_defaults(func=cmd_backup_verify)
    bnew = bsub.add_parser("new-key", help="make a backup key (keep a copy apart)")
    bnew.add_argument("--out", type=Path, help="where (default: backup.key_file)")
    json_flag(bnew)
    bnew.set_defaults(func=cmd_backup_new_key)
    rest = sub.add_parser("restore", help="restore a backup into an empty store")
    rest.add_argument("path", type=Path)
    rest.add_argument("--key-file", type=Path, help="the backup key")
    rest.add_argument(
        "--replace",
        action="store_true",
        help="SQLite: replace a store that is not empty (the old file is kept beside it)",
    )
    json_flag(rest)
    rest.set_defaults(func=cmd_restore)
    mig = sub.add_parser("migrate", help="copy this SQLite store into MongoDB, checked")
    mig.add_argument("--to", required=True, help="mongodb://… of the target")
    mig.add_argument("--database", default="telemed", help="the target database (default telemed)")
    json_flag(mig)
    mig.set_defaults(func=cmd_migrate)

    dm = sub.add_parser("demo", help="demo data").add_subparsers(dest="demo_command", required=True)
    seed = dm.add_parser("seed", help="seed a demo clinic into an empty SQLite store")
    json_flag(seed)
    seed.set_defaults(func=cmd_demo_seed)
    return parser


def _os_message(exc: OSError) -> str:
    """A file system refusal in one line: the file and the reason (a full disk, a folder
    that is a file, no permission), never a traceback."""
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def _hoist_config(argv: list[str]) -> list[str]:
    """Move `--config PATH` from after the command to the front, where argparse reads it,
    so that `telemed serve --config PATH` and `telemed --config PATH serve` both work."""
    rest: list[str] = []
    config: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--config" and i + 1 < len(argv):
            config = [arg, argv[i + 1]]
            i += 2
            continue
        if arg.startswith("--config="):
            config = [arg]
        else:
            rest.append(arg)
        i += 1
    return config + rest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_hoist_config(sys.argv[1:] if argv is None else argv))
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"telemed: configuration error: {exc}\n")
        return 2
    configure(settings.log.level, settings.log.json)
    try:
        code: int = args.func(args, settings)
    except (TelemedError, CliError, OSError) as exc:
        message = _os_message(exc) if isinstance(exc, OSError) else str(exc)
        if getattr(args, "json", False):
            out(json.dumps({"error": message}))
        sys.stderr.write(f"telemed: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
