"""Make a Hugging Face model folder for vLLM from a packaged GGUF (run in .venv-vllm).

vLLM's CPU build loads Hugging Face folders (config.json, safetensors weights, tokenizer, chat
template), not GGUF files, and nothing may be downloaded here. transformers reads the GGUF,
dequantises its weights and writes such a folder: the same network and tokenizer, with the
4-bit rounding of the GGUF baked into bfloat16 weights.

    python tests/vllm/hf_model.py smollm2-135m .venv-vllm/models/smollm2-135m
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # transformers marks a model read from GGUF as quantised and will not save it; its
    # weights are plain tensors by now, so move them into an unmarked model of the same shape.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict(), strict=True)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    # Written in full or not at all: make's target is the folder's config.json.
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a packaged model's name (tutorsrv models list)")
    parser.add_argument("out", type=Path, help="the folder to write")
    args = parser.parse_args()
    from tutorsrv.engine.llm.packaged import resolve

    started = time.monotonic()
    convert(resolve(args.model), args.out)
    print(f"{args.model} -> {args.out} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
