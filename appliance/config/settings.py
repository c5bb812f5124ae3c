"""The settings tree. Every field is described; unknown keys are errors; no I/O happens here."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from appliance.config.upstream import UpstreamSettings, fold_bot_llm


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HardwareSettings(_Section):
    root: Path = Field(Path("/"), description="Filesystem root the hardware probe reads (for HIL and tests).")
    profile: str | None = Field(
        None, description="Force this hardware profile by name instead of matching the probe's report."
    )
    profiles_dir: Path | None = Field(
        None, description="Directory of profile YAML files; default: the hw/ directory shipped with the code."
    )


class ModelsSettings(_Section):
    store: Path | None = Field(
        None,
        description="Content-addressed model store; default DATA/models ($STATE_DIRECTORY, else "
        "/var/lib/appliance as root, else $XDG_DATA_HOME/appliance).",
    )
    catalog: Path | None = Field(
        None, description="Model catalog YAML; default: models/catalog.yaml shipped with the code."
    )
    converter_python: Path | None = Field(
        None,
        description="Python with the conversion tools (requirements/convert.txt; `make` builds .venv-convert). "
        "When set, `models pull` also builds derived variants such as TFLite; otherwise it skips them.",
    )


class RuntimeSettings(_Section):
    compare_candidates: bool = Field(
        False,
        description="Try every candidate runtime that passes its smoke test, time a short warm-up "
        "and keep the fastest (slower start-up); otherwise the first passing candidate wins.",
    )
    memory_budget_mb: int | None = Field(
        None, gt=0, description="Override the profile's memory budget for resident models (MiB)."
    )
    threads: int | None = Field(
        None, gt=0, le=256, description="Override the profile's inference thread count."
    )


class VoiceSettings(_Section):
    vad: Literal["silero", "webrtc"] = Field(
        "silero", description="Voice activity detector: Silero (a model, through the runtime layer) or WebRTC VAD."
    )
    hangover_ms: int = Field(
        200, ge=60, le=3000, description="Silence that ends a turn; the final ASR pass overlaps it."
    )
    rejoin_ms: int = Field(
        300, ge=0, le=2000, description="Speech that starts again this soon after a turn ended continues that turn "
        "(its final is redone over both parts); 0: never."
    )
    partial_interval_s: float = Field(0.6, ge=0.1, le=10, description="How often partial transcripts are made.")
    tts_first_words: int = Field(3, ge=1, le=50, description="Words in the first synthesised phrase.")


class ApiSettings(_Section):
    host: str = Field("0.0.0.0", description="Address the HTTP API listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP API (0: any free port).")
    max_upload_mb: float = Field(25.0, gt=0, le=1024, description="Largest request body; bigger ones get 413.")
    max_audio_s: float = Field(3600.0, gt=0, description="Longest audio accepted by the transcription API.")
    rate_per_minute: int = Field(120, gt=0, description="Requests per minute per API key (bursts as large).")
    max_sessions: int = Field(16, ge=1, le=1000, description="Live WebRTC sessions at once; more get 503.")
    keys_file: Path | None = Field(
        None, description="Hashed API keys; default DATA/api-keys.json (see models.store)."
    )


class WyomingSettings(_Section):
    enabled: bool = Field(False, description="Run the Wyoming STT/TTS servers under `appliance run` (shared models).")
    stt_uri: str = Field("tcp://127.0.0.1:10300", description="Wyoming speech-to-text server address.")
    tts_uri: str = Field("tcp://127.0.0.1:10200", description="Wyoming text-to-speech server address.")
    allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Client addresses allowed (the Wyoming protocol has no authentication); empty: any.",
    )


# loopback, RFC 1918, link-local, unique-local and carrier-grade NAT: the networks of a LAN
PRIVATE_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                    "fe80::/10", "fc00::/7", "100.64.0.0/10")
CallCodec = Literal["G722", "PCMU", "PCMA"]
CALL_CODECS: tuple[CallCodec, ...] = ("G722", "PCMU", "PCMA")


class SipAccount(_Section):
    name: str = Field(..., min_length=1, description="A name for the account (used in `appliance sip status`).")
    registrar: str = Field(..., description="Registrar URI, e.g. sip:pbx.example.com:5060 (may name a proxy).")
    user: str = Field(..., min_length=1, description="User part of the address of record.")
    password: SecretStr = Field(..., description="Digest password (never logged).")
    auth_user: str | None = Field(None, description="Digest user name when it differs from `user`.")
    transport: Literal["udp", "tcp"] = Field("udp", description="Transport to the registrar.")
    expires_s: int = Field(600, ge=60, le=86400, description="Registration lifetime asked for; refreshed early.")


class SipSettings(_Section):
    enabled: bool = Field(True, description="Answer SIP calls (UDP and TCP).")
    host: str = Field("0.0.0.0", description="Address the SIP transports listen on.")
    port: int = Field(5060, ge=0, le=65535, description="SIP port, UDP and TCP (0: any free port).")
    advertise: str | None = Field(
        None, description="Address put in Contact and SDP (behind NAT); default: the interface facing the peer."
    )
    rtp_port_min: int = Field(10000, ge=1024, le=65534, description="Lowest RTP port (even; RTCP is RTP + 1).")
    rtp_port_max: int = Field(20000, ge=1025, le=65535, description="Highest RTP port.")
    max_calls: int = Field(8, ge=1, le=1000, description="Calls at once; more get 503 with Retry-After.")
    retry_after_s: int = Field(10, ge=1, le=3600, description="Retry-After of a 503 beyond capacity.")
    ring_s: float = Field(0.0, ge=0, le=60, description="Ring this long before answering.")
    codecs: list[CallCodec] = Field(
        default_factory=lambda: list(CALL_CODECS), min_length=1, description="Codecs, preferred first."
    )
    accounts: list[SipAccount] = Field(default_factory=list, description="Registrations to keep up.")
    allow: list[str] = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS),
        description="Networks whose calls are answered (others get 403); empty: any address.",
    )
    users: dict[str, SecretStr] = Field(
        default_factory=dict, description="Callers must authenticate as one of these users (digest SHA-256/MD5) "
        "when set; empty: no caller authentication (rely on `allow`, a proxy or a firewall).",
    )

    @model_validator(mode="after")
    def _ports(self) -> SipSettings:
        if self.rtp_port_max - self.rtp_port_min < 1:
            raise ValueError(f"rtp_port_min {self.rtp_port_min} must be below rtp_port_max {self.rtp_port_max}")
        for network in self.allow:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"sip.allow: {network!r} is not an address or network") from None
        names = [a.name for a in self.accounts]
        if len(set(names)) != len(names):
            raise ValueError("account names must differ")
        return self


class BotSettings(_Section):
    flow: Path | None = Field(
        None, description="Call flow YAML for every call; default: the example flow shipped with the code."
    )
    routes: dict[str, Path] = Field(
        default_factory=dict, description="Dialled number (user part) -> flow YAML, for numbers with their own flow."
    )
    variables: dict[str, str] = Field(
        default_factory=dict,
        description="Values that replace the flows' own variables, e.g. agent = \"sip:200@pbx.example.com\".",
    )
    records_dir: Path | None = Field(
        None,
        description="Call records (JSON and WAV, one directory per call); default DATA/calls (see "
        "models.store).",
    )
    record_audio: bool = Field(
        False, description="Record both sides of every call as a stereo WAV (tell callers in the greeting)."
    )
    retention_days: float | None = Field(
        30, gt=0, description="Delete call records older than this many days; unset: keep them."
    )
    max_records: int | None = Field(
        10_000, ge=1, validation_alias=AliasChoices("max_records", "max_calls"),
        description="Keep at most this many call records; unset: no limit (formerly bot.max_calls, still read).")


class SupervisorSettings(_Section):
    grace_s: float = Field(
        20.0, ge=0, le=600, description="On SIGTERM, how long live calls and sessions may take to end before "
        "services stop (keep the unit's TimeoutStopSec above it)."
    )
    memory_guard: bool = Field(
        True, description="Under memory pressure, answer new calls and sessions with 503 instead of being killed."
    )


class FleetSettings(_Section):
    repository: str | None = Field(
        None, description="Base URL of the signed update repository (its metadata/ and targets/ below it); "
        "the update agent runs under `appliance run` when set."
    )
    root: Path | None = Field(
        None, description="The repository's trusted root.json shipped with the device (its trust anchor); "
        "needed with `repository`."
    )
    state_dir: Path | None = Field(
        None, description="The agent's journal, status, events and the fleet's configuration layer; "
        "default DATA/fleet."
    )
    interval_s: float = Field(300.0, ge=1, le=86400, description="Seconds between polls.")
    jitter: float = Field(
        0.2, ge=0, le=0.5, description="Each wait is interval_s * (1 +/- jitter): a fleet does not poll in step."
    )
    backoff_max_s: float = Field(
        3600.0, ge=1, description="Longest wait after repeated failures (the wait doubles per failure)."
    )
    timeout_s: float = Field(30.0, gt=0, le=600, description="Network timeout of one request.")
    tags: list[str] = Field(
        default_factory=list, description="Device tags that targets may name (the profile's name is always one)."
    )
    group: str | None = Field(None, description="The device's group in the console (reported with events).")
    pins: dict[str, int] = Field(
        default_factory=dict, description="Versions the group holds a model id or config bundle at."
    )
    config: str | None = Field(
        None, description="Name of the configuration bundle this device follows; none when unset."
    )
    board: str | None = Field(None, description="Firmware board name this device takes images for.")
    console: str | None = Field(
        None, description="Base URL of the fleet console this device enrols at (`appliance agent enrol`)."
    )
    share_transcripts: bool = Field(
        False, description="Let telemetry carry what callers said (transcripts); off: those fields never leave."
    )
    telemetry_max_bytes: int = Field(
        4 << 20, ge=1 << 16, description="Telemetry kept on disk while the console is away; the oldest is dropped."
    )

    @model_validator(mode="after")
    def _root_with_repository(self) -> FleetSettings:
        if self.repository and self.root is None:
            raise ValueError("fleet.repository needs fleet.root (the repository's trusted root.json)")
        return self


class ConsoleSettings(_Section):
    database: str | None = Field(
        None, description="SQLAlchemy URL of the console's database, e.g. postgresql+psycopg://console@db/fleet; "
        "default: SQLite (WAL) at state_dir/console.db."
    )
    state_dir: Path | None = Field(None, description="The console's CA and SQLite database; default DATA/console.")
    host: str = Field("127.0.0.1", description="Address `appliance console serve` listens on.")
    port: int = Field(8090, ge=1, le=65535, description="Port of the console's web UI and API.")
    repository: Path | None = Field(
        None, description="The signed update repository's directory: releases must name targets published there."
    )
    keys: list[Path] = Field(
        default_factory=list, description="Directories of the online snapshot and timestamp keys, with which the "
        "console keeps the repository's timestamp fresh (passphrases: APPLIANCE_KEY_PASSPHRASE[_<NAME>])."
    )


class UpstreamTierSettings(_Section):
    """`appliance upstream serve`: the datacenter tier a site runs on its own server (never on a device)."""

    host: str = Field("127.0.0.1", description="Address `appliance upstream serve` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the upstream tier's OpenAI-compatible API.")
    models: list[str] = Field(
        default_factory=lambda: ["smollm2-135m-instruct"],
        description="Chat models served (catalog ids of task llm, provisioned in the model store); the first "
        "answers requests for 'default' or an unknown name.")
    state_dir: Path | None = Field(None, description="The tier's API keys and server logs; default DATA/upstream.")
    threads: int = Field(2, ge=1, le=256, description="CPU threads of each llama.cpp server.")
    context: int = Field(2048, ge=256, le=131072, description="Context window (tokens) of each chat model.")
    parallel: int = Field(2, ge=1, le=64, description="Requests each chat model decodes at once (its slots).")
    rate_per_minute: int = Field(60, ge=1, description="Requests per minute per API key (bursts as large).")
    tokens_per_day: int = Field(200_000, ge=1, description="Prompt and completion tokens per API key per day.")
    audio: bool = Field(True, description="Also serve /v1/audio/transcriptions, /translations and /speech with "
                        "the models of this machine's store (as a device does); 503 while they warm.")


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")


class Settings(BaseSettings):
    """Effective configuration: defaults < TOML file < APPLIANCE_* environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    hw: HardwareSettings = Field(default_factory=HardwareSettings, description="Hardware probe.")
    models: ModelsSettings = Field(default_factory=ModelsSettings, description="Model store and catalog.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Runtime selection.")
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings, description="Upstream tier.")
    voice: VoiceSettings = Field(default_factory=VoiceSettings, description="Voice core.")
    api: ApiSettings = Field(default_factory=ApiSettings, description="HTTP API.")
    wyoming: WyomingSettings = Field(default_factory=WyomingSettings, description="Wyoming servers.")
    sip: SipSettings = Field(default_factory=SipSettings, description="SIP telephony.")
    bot: BotSettings = Field(default_factory=BotSettings, description="The call-center bot answering calls.")
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings, description="`appliance run`.")
    fleet: FleetSettings = Field(default_factory=FleetSettings, description="Signed updates (the update agent).")
    console: ConsoleSettings = Field(default_factory=ConsoleSettings, description="The fleet console's server.")
    upstream_tier: UpstreamTierSettings = Field(default_factory=UpstreamTierSettings,
                                                description="`appliance upstream serve` (the datacenter tier).")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")

    _fold_bot_llm = model_validator(mode="before")(fold_bot_llm)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The loader passes the TOML file's contents as init arguments; the environment wins over them.
        return (env_settings, init_settings)
