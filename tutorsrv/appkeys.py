"""Typed application keys (``web.AppKey``) for what the roles share through the app."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .backplane import Backplane
from .config import Config
from .engine.llm.base import LLMBackend
from .engine.speech.asr import Transcriber
from .engine.speech.decode_pool import RecordingDecoder
from .engine.speech.tts import Synthesizer
from .engine.speech.vad import SileroVAD
from .knowledge import KnowledgeSearch
from .registry import SessionRegistry
from .web.embedded_pg import EmbeddedPostgres
from .web.engine_client import EngineClient
from .web.rag import Ingestor

CONFIG = web.AppKey("config", Config)
ROLE = web.AppKey("role", str)
REGISTRY = web.AppKey("registry", SessionRegistry)
# The default model's backend, and every served model's by the name tutors use (the default
# first; engine/llm/__init__.py, model_entries).
LLM = web.AppKey("llm", LLMBackend)
MODELS = web.AppKey("models", dict[str, LLMBackend])
# The start-up warm-up generation's time to first token (cold), in ms.
LLM_WARMUP_MS = web.AppKey("llm_warmup_ms", float)
# The service key in force: from config, or generated per start by the `all` role.
ENGINE_API_KEY = web.AppKey("engine_api_key", str)
# Web role (present in `web` and `all`).
DB = web.AppKey("db", asyncpg.Pool)
# The embedded PostgreSQL, when no database.url is set (supervised: app._database_ctx).
EMBEDDED_DB = web.AppKey("embedded_db", EmbeddedPostgres)
ENGINE_CLIENT = web.AppKey("engine_client", EngineClient)
# Engine side: where finished turns go (absent when nothing persists them).
BACKPLANE = web.AppKey("backplane", Backplane)
# Knowledge bases: background ingestion (web side) and passage search (engine side).
INGESTOR = web.AppKey("ingestor", Ingestor)
KNOWLEDGE = web.AppKey("knowledge", KnowledgeSearch)
# Speech models, loaded at start-up; each absent when switched off (asr/tts.enabled).
TRANSCRIBER = web.AppKey("transcriber", Transcriber)
RECORDINGS = web.AppKey("recordings", RecordingDecoder)
VAD = web.AppKey("vad", SileroVAD)
SYNTHESIZER = web.AppKey("synthesizer", Synthesizer)
