# The two commands of the README: `make demo` and `make test`. Everything else is their set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt

.PHONY: demo test install models clean

demo: models
	$(BIN)/edge-stream voice-demo

# lint-imports: the import contracts of pyproject.toml (layers, no torch/export in the run-time layers).
test: models
	$(BIN)/lint-imports
	$(BIN)/pytest -q -rs

install: $(VENV)/.installed

# torch comes pinned to the CPU build through constraints.txt; silero-vad is installed
# without its dependencies (it declares torch, which only its Python wrapper uses).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[export,test,peers,plot]"
	$(PIP) --no-deps "silero-vad==6.2.3"
	touch $@

# Default model directories, built locally: nothing is downloaded from a model hub.
models: install models/silero-vad/manifest.json models/tiny-llama/manifest.json

models/silero-vad/manifest.json:
	$(BIN)/python -m export.silero_vad -o models/silero-vad

models/tiny-llama/manifest.json:
	$(BIN)/python -m export.tiny_models llama .cache/tiny-llama-hf
	$(BIN)/python -m export.hf .cache/tiny-llama-hf -o models/tiny-llama

clean:
	rm -rf $(VENV) .cache models/silero-vad models/tiny-llama
