"""One frozen `Settings`, built once at start-up from config.toml and `TELEMED_*` overrides.

Every key is required: a missing or malformed value stops start-up with a `ConfigError`
whose message names the key and what was expected. No other module reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TELEMED_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int = field(metadata={"min": 0, "max": 65535})
    tls_cert: str  # path to a PEM certificate chain; "" for plain HTTP
    tls_key: str
    public_url: str  # how browsers reach the server; "" derives it from host and port


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str  # sqlite:///relative/or/absolute.db, or mongodb://...
    database: str  # MongoDB database name (ignored by SQLite)
    # MongoDB observations: "auto" (time-series when the server makes one), "timeseries"
    # (required) or "plain" (unique-index collection). Ignored by SQLite. Required in the
    # file like every key; the default serves code that builds settings by hand.
    observation_layout: str = field(
        default="auto", metadata={"choices": ("auto", "timeseries", "plain")}
    )


@dataclass(frozen=True, slots=True)
class MqttSettings:
    embedded: bool  # start and supervise a Mosquitto child process
    host: str
    port: int = field(metadata={"min": 0, "max": 65535})
    mosquitto: str  # the mosquitto binary, by name or path
    username: str
    password: Secret
    tls: bool


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    session_idle_minutes: int = field(metadata={"min": 1})
    session_absolute_hours: int = field(metadata={"min": 1})
    throttle_delay_after: int = field(metadata={"min": 1})
    lock_account_after: int = field(metadata={"min": 1})
    lock_address_after: int = field(metadata={"min": 1})
    lock_minutes: int = field(metadata={"min": 1})
    require_2fa_for_clinicians: bool


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    ingest: bool  # consume wearable vitals from the broker in this process
    node_id: str  # names this process's persistent MQTT session; "" derives it from the host
    max_age_hours: int = field(metadata={"min": 1})
    max_skew_seconds: int = field(metadata={"min": 0})
    max_payload_bytes: int = field(metadata={"min": 256, "max": 1024 * 1024})
    batch_max: int = field(metadata={"min": 1})
    batch_wait_ms: int = field(metadata={"min": 1})
    receive_maximum: int = field(metadata={"min": 1, "max": 65535})


@dataclass(frozen=True, slots=True)
class VisitSettings:
    link_valid_hours: int = field(metadata={"min": 1, "max": 24 * 30})  # after the visit's time
    low_bandwidth_kbps: int = field(metadata={"min": 30, "max": 5000})  # video cap, low profile
    low_bandwidth_height: int = field(metadata={"min": 90, "max": 1080})  # video rows, low profile
    audio_only_below_kbps: int = field(metadata={"min": 0, "max": 1000})  # pre-call: advise audio
    # in one call: the clinician, the patient and up to max_participants - 2 guests
    max_participants: int = field(default=4, metadata={"min": 2, "max": 8})


@dataclass(frozen=True, slots=True)
class WebRtcSettings:
    stun_urls: str  # comma-separated, e.g. "stun:turn.example.org:3478"; "" for none
    turn_urls: str  # comma-separated turn:/turns: URLs of a coturn with use-auth-secret
    turn_secret: Secret  # coturn's static-auth-secret; required when turn_urls is set
    turn_ttl_minutes: int = field(metadata={"min": 5, "max": 24 * 60})


@dataclass(frozen=True, slots=True)
class MediaSettings:
    # "p2p": browsers connect to each other; "relay": through the server's relay;
    # "auto": p2p until ICE fails, a third participant is admitted, or a recording starts
    mode: str = field(metadata={"choices": ("p2p", "relay", "auto")})
    recording_max_mib: int = field(metadata={"min": 1, "max": 64 * 1024})  # per participant


@dataclass(frozen=True, slots=True)
class SignalingSettings:
    redis_url: str  # "" keeps rooms in this process; redis://... shares them across processes
    events_per_second: int = field(metadata={"min": 1, "max": 1000})  # per connection, sustained
    event_burst: int = field(metadata={"min": 1, "max": 10000})  # per connection, at once
    max_event_bytes: int = field(metadata={"min": 1024, "max": 1024 * 1024})


@dataclass(frozen=True, slots=True)
class RecordSettings:
    key_provider: str = field(metadata={"choices": ("file", "env")})
    key_file: str  # the key-encryption keys (provider "file"); "" puts it in var_dir/keys
    env_keys: Secret  # provider "env": "id=base64key,..." (primary first), from the environment
    attachment_max_kib: int = field(metadata={"min": 1, "max": 15 * 1024})
    attachment_types: str  # comma-separated; each must be one the server can recognize
    break_glass_minutes: int = field(metadata={"min": 5, "max": 24 * 60})


ATTACHMENT_TYPES = ("application/pdf", "image/jpeg", "image/png")


@dataclass(frozen=True, slots=True)
class BackupSettings:
    key_file: str  # the backup key (telemed backup new-key); "" is var_dir/keys/backup.key
    folder: str  # where scheduled backups go; "" is var_dir/backups
    interval_hours: int = field(metadata={"min": 0, "max": 24 * 30})  # 0: none scheduled
    keep: int = field(metadata={"min": 1, "max": 1000})  # scheduled backups kept


@dataclass(frozen=True, slots=True)
class DemoSettings:
    seed: bool
    stream_devices: int = field(metadata={"min": 0, "max": 50})


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = field(metadata={"choices": ("DEBUG", "INFO", "WARNING", "ERROR")})
    json: bool


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    store: StoreSettings
    mqtt: MqttSettings
    security: SecuritySettings
    monitoring: MonitoringSettings
    visits: VisitSettings
    webrtc: WebRtcSettings
    media: MediaSettings
    signaling: SignalingSettings
    records: RecordSettings
    backup: BackupSettings
    demo: DemoSettings
    log: LogSettings
    var_dir: Path = field(default=Path("var"))  # resolved beside the config file
    base_dir: Path = field(default=Path("."))

    @property
    def base_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        scheme = "https" if self.server.tls_cert else "http"
        return f"{scheme}://{self.server.host}:{self.server.port}"

    @property
    def key_file(self) -> Path:
        """Where the records' key-encryption keys are kept (provider "file")."""
        if self.records.key_file:
            return self.resolve(self.records.key_file)
        return self.var_dir / "keys" / "record-keys.json"

    @property
    def backup_key_file(self) -> Path:
        if self.backup.key_file:
            return self.resolve(self.backup.key_file)
        return self.var_dir / "keys" / "backup.key"

    @property
    def backup_folder(self) -> Path:
        return self.resolve(self.backup.folder) if self.backup.folder else self.var_dir / "backups"

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "store": StoreSettings,
    "mqtt": MqttSettings,
    "security": SecuritySettings,
    "monitoring": MonitoringSettings,
    "visits": VisitSettings,
    "webrtc": WebRtcSettings,
    "media": MediaSettings,
    "signaling": SignalingSettings,
    "records": RecordSettings,
    "backup": BackupSettings,
    "demo": DemoSettings,
    "log": LogSettings,
}


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path`, apply `TELEMED_<SECTION>_<KEY>` overrides, and check every value."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.resolve()}: config file not found (pass --config PATH)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return settings_from_mapping(raw, environ, base_dir=path.resolve().parent)


def settings_from_mapping(
    raw: Mapping[str, Any], environ: Mapping[str, str], *, base_dir: Path
) -> Settings:
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name)
        if table is None:
            raise ConfigError(f"[{name}]: section missing")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}]: expected a table")
        sections[name] = _build_section(name, cls, table, environ)
    unknown = sorted(set(raw) - set(_SECTIONS) - {"var_dir"})
    if unknown:
        raise ConfigError(f"[{unknown[0]}]: unknown section")
    var_dir = environ.get(ENV_PREFIX + "VAR_DIR", raw.get("var_dir", "var"))
    if not isinstance(var_dir, str) or not var_dir:
        raise ConfigError("var_dir: expected a folder path")
    settings = Settings(**sections, var_dir=Path(var_dir), base_dir=base_dir)
    settings = dataclasses.replace(settings, var_dir=settings.resolve(var_dir))
    _check_cross_field(settings)
    return settings


def _build_section(
    section: str, cls: type[Any], table: Mapping[str, Any], environ: Mapping[str, str]
) -> Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key")
    for f in dataclasses.fields(cls):
        dotted = f"{section}.{f.name}"
        env_name = f"{ENV_PREFIX}{section}_{f.name}".upper()
        if env_name in environ:
            value: Any = _from_env(dotted, env_name, environ[env_name], hints[f.name])
        elif f.name in table:
            value = _check_type(dotted, table[f.name], hints[f.name])
        else:
            raise ConfigError(f"{dotted}: missing (expected {_describe(hints[f.name])})")
        _check_bounds(dotted, value, f.metadata)
        values[f.name] = value
    return cls(**values)


def _describe(tp: Any) -> str:
    return {
        bool: "true or false",
        int: "a whole number",
        str: "a string",
        Secret: "a string",
    }.get(tp, str(tp))


def _check_type(dotted: str, value: Any, tp: Any) -> Any:
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        Secret: lambda v: isinstance(v, str),
    }[tp](value)
    if not ok:
        raise ConfigError(f"{dotted}: expected {_describe(tp)}, got {value!r}")
    return Secret(value) if tp is Secret else value


def _from_env(dotted: str, env_name: str, text: str, tp: Any) -> Any:
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{dotted} (from {env_name}): expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(
                f"{dotted} (from {env_name}): expected a whole number, got {text!r}"
            ) from None
    if tp is Secret:
        return Secret(text)
    if tp is str:
        return text
    raise ConfigError(f"{dotted}: unsupported type {tp}")  # pragma: no cover


def _check_bounds(dotted: str, value: Any, meta: Mapping[str, Any]) -> None:
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{dotted}: expected at least {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{dotted}: expected at most {meta['max']}, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(meta["choices"])
        raise ConfigError(f"{dotted}: expected one of {choices}, got {value!r}")


def _check_cross_field(s: Settings) -> None:
    if bool(s.server.tls_cert) != bool(s.server.tls_key):
        raise ConfigError("server.tls_key: tls_cert and tls_key must be set together")
    for key in ("tls_cert", "tls_key"):
        value = getattr(s.server, key)
        if value and not s.resolve(value).is_file():
            raise ConfigError(f"server.{key}: file not found: {value}")
    url = s.store.url
    if not (url.startswith("sqlite:///") or url.startswith(("mongodb://", "mongodb+srv://"))):
        raise ConfigError(f"store.url: expected sqlite:///PATH or mongodb://..., got {url!r}")
    if url.startswith("sqlite:///") and len(url) == len("sqlite:///"):
        raise ConfigError("store.url: sqlite:/// needs a file path")
    if not s.store.database:
        raise ConfigError("store.database: expected a database name")
    if s.webrtc.turn_urls and not s.webrtc.turn_secret:
        raise ConfigError("webrtc.turn_secret: required when webrtc.turn_urls is set")
    for key in ("stun_urls", "turn_urls"):
        schemes = ("stun:", "stuns:") if key == "stun_urls" else ("turn:", "turns:")
        for url in split_urls(getattr(s.webrtc, key)):
            if not url.startswith(schemes):
                raise ConfigError(f"webrtc.{key}: {url!r} does not start with {schemes[0]}")
    redis_url = s.signaling.redis_url
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"signaling.redis_url: expected redis://..., got {redis_url!r}")
    if s.records.key_provider == "env" and not s.records.env_keys:
        raise ConfigError(
            "records.env_keys: required when records.key_provider is env (set "
            "TELEMED_RECORDS_ENV_KEYS to id=base64key)"
        )
    for kind in split_urls(s.records.attachment_types):
        if kind not in ATTACHMENT_TYPES:
            allowed = ", ".join(ATTACHMENT_TYPES)
            raise ConfigError(f"records.attachment_types: {kind!r} is not one of {allowed}")
    if s.security.session_absolute_hours * 60 < s.security.session_idle_minutes:
        raise ConfigError("security.session_idle_minutes: must not exceed session_absolute_hours")


def split_urls(value: str) -> list[str]:
    """A comma-separated list of URLs from the config, blanks dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]
