"""LLM backends behind one streaming interface (see ``base.py``)."""

from __future__ import annotations

from pathlib import Path

from ...config import LLMConfig
from .base import ChatMessage, GenerationStats, LLMBackend, LLMLoadError, LLMUnavailable

__all__ = [
    "ChatMessage",
    "GenerationStats",
    "LLMBackend",
    "LLMLoadError",
    "LLMUnavailable",
    "create_backend",
]


def create_backend(config: LLMConfig) -> LLMBackend:
    """The backend ``llm.backend`` names. Heavy imports happen only for the one chosen."""
    if config.backend == "scripted":
        from .scripted import ScriptedBackend

        return ScriptedBackend(
            config.scripted_text, config.scripted_token_count, config.scripted_token_delay_ms
        )
    if config.backend == "llamacpp":
        from .llamacpp import PACKAGED_MODEL, LlamaCppBackend

        options = {
            "model_path": config.model_path,
            "n_ctx": config.n_ctx,
            "n_threads": config.n_threads,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed,
            "prompt_cache_bytes": config.prompt_cache_bytes,
        }
        if config.out_of_process:
            from .model_process import LlamaCppProcessBackend

            name = Path(config.model_path).name if config.model_path else PACKAGED_MODEL[1]
            return LlamaCppProcessBackend(
                options, model=name, probe_timeout=config.warmup_timeout_seconds
            )
        return LlamaCppBackend(**options)
    if config.backend == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(
            config.base_url,
            config.model,
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
            config.model,
            dtype=config.vllm_dtype,
            max_model_len=config.vllm_max_model_len,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            tensor_parallel_size=config.vllm_tensor_parallel_size,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
        )
    raise LLMLoadError(f"llm.backend: unknown backend {config.backend!r}")
