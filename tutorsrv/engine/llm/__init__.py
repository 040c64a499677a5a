"""LLM backends behind one streaming interface (see ``base.py``)."""

from __future__ import annotations

from ...config import LLMConfig
from .base import ChatMessage, GenerationStats, LLMBackend, LLMLoadError, LLMUnavailable
from .packaged import DEFAULT_MODEL, model_name

__all__ = [
    "ChatMessage",
    "GenerationStats",
    "LLMBackend",
    "LLMLoadError",
    "LLMUnavailable",
    "create_backend",
    "create_backends",
    "model_entries",
]


def model_entries(config: LLMConfig) -> dict[str, str]:
    """The models this configuration serves, as {name tutors use: what to load}; the first
    is the default. llamacpp names are packaged names or GGUF file names without .gguf."""
    if config.backend == "scripted":
        return {"scripted": "scripted"}
    if config.backend == "llamacpp":
        first = config.model_path or config.model or DEFAULT_MODEL
        entries = [first, *config.extra_models]
        return {model_name(entry): entry for entry in entries}
    return {name: name for name in [config.model, *config.extra_models]}


def create_backends(config: LLMConfig) -> dict[str, LLMBackend]:
    """One backend per served model (``model_entries``), the default first."""
    return {name: create_backend(config, entry) for name, entry in model_entries(config).items()}


def create_backend(config: LLMConfig, model: str | None = None) -> LLMBackend:
    """A backend of the kind ``llm.backend`` names, for ``model`` (default: llm.model).
    Heavy imports happen only for the one chosen."""
    if config.backend == "scripted":
        from .scripted import ScriptedBackend

        return ScriptedBackend(
            config.scripted_text, config.scripted_token_count, config.scripted_token_delay_ms
        )
    if config.backend == "llamacpp":
        from .llamacpp import LlamaCppBackend

        entry = model or config.model_path or config.model or DEFAULT_MODEL
        options = {
            "model": entry,
            "n_ctx": config.n_ctx,
            "n_threads": config.n_threads,
            "n_threads_decode": config.n_threads_decode,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed,
            "session_state_bytes": config.session_state_bytes,
        }
        if config.out_of_process:
            from .model_process import LlamaCppProcessBackend

            return LlamaCppProcessBackend(
                options, model=model_name(entry), probe_timeout=config.warmup_timeout_seconds
            )
        return LlamaCppBackend(**options)
    if config.backend == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(
            config.base_url,
            model or config.model,
            api_key=config.api_key,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            timeout=config.request_timeout_seconds,
            retries=config.retries,
        )
    if config.backend == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(
            model or config.model,
            dtype=config.vllm_dtype,
            max_model_len=config.vllm_max_model_len,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            kv_cache_bytes=config.vllm_kv_cache_bytes,
            enforce_eager=config.vllm_enforce_eager,
            tensor_parallel_size=config.vllm_tensor_parallel_size,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
        )
    raise LLMLoadError(f"llm.backend: unknown backend {config.backend!r}")
