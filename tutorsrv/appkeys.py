"""Typed application keys (``web.AppKey``) for what the roles share through the app."""

from __future__ import annotations

from aiohttp import web

from .config import Config
from .engine.llm.base import LLMBackend
from .registry import SessionRegistry

CONFIG = web.AppKey("config", Config)
ROLE = web.AppKey("role", str)
REGISTRY = web.AppKey("registry", SessionRegistry)
LLM = web.AppKey("llm", LLMBackend)
# The service key in force: from config, or generated per start by the `all` role.
ENGINE_API_KEY = web.AppKey("engine_api_key", str)
