# Every target installs what it needs through `setup` (a virtual environment in .venv), once.
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed

# export settings (make export MODEL=paper SIZE=512 OPSET=13 EXPORTER=dynamo)
MODEL       ?= mobilevit_xxs
TEACHER     ?= swin_t_upernet512
SIZE        ?= 256
OPSET       ?= 17
EXPORTER    ?= legacy
ARTIFACTS   ?= artifacts

.PHONY: setup test lint export clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q

export: setup
	mkdir -p $(ARTIFACTS)
	$(PY) -m exporters.export --model $(MODEL) --input-size $(SIZE) --opset $(OPSET) --exporter $(EXPORTER) \
		-o $(ARTIFACTS)/$(MODEL)_$(SIZE)_op$(OPSET).onnx
	$(PY) -m exporters.export --model $(TEACHER) --input-size $(SIZE) --opset $(OPSET) --exporter $(EXPORTER) \
		-o $(ARTIFACTS)/$(TEACHER)_$(SIZE)_op$(OPSET).onnx

clean:
	rm -rf $(ARTIFACTS) .pytest_cache .ruff_cache
