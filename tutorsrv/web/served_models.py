"""Which models a tutor may name, as the web role knows them."""

from __future__ import annotations

import logging

from aiohttp import web

from ..appkeys import CONFIG
from ..engine.llm import model_entries

log = logging.getLogger(__name__)


def model_names(app: web.Application) -> list[str]:
    """The models a tutor may name: llm.model (the default) and llm.extra_models. In a split
    deployment the web role reads them from its own configuration, which must list what the
    engines serve (docs/configuration.md)."""
    return list(model_entries(app[CONFIG].llm))


def served_model(request: web.Request, stored: str | None) -> str:
    """The model to ask the engine for: the tutor's, if it is still served; otherwise the
    default (a model removed from the configuration must not lock students out)."""
    if not stored:
        return ""
    if stored in model_names(request.app):
        return stored
    log.warning("a tutor names the model %r, which is no longer served: using the default", stored)
    return ""
