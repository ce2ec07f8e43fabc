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

# demo settings (make demo FULL=1 DATA=/path/to/lpcv for 512 input, the paper's student and a Swin-T teacher;
# make demo-quick: every stage in a few minutes on 2 busy cores, into runs/demo-quick)
RUN         ?= runs/demo
QUICK_RUN   ?= runs/demo-quick
FULL        ?= 0
DATA        ?=
DEMO_ARGS   ?=
PIPELINE_ARGS = --run $(RUN) $(if $(filter 1,$(FULL)),--full) $(if $(DATA),--data $(DATA)) $(DEMO_ARGS)

# distillation (make distill STUDENT=runs/demo/onnx/pruned.onnx TEACHER_CKPT=runs/demo/train/teacher/checkpoint.pt);
# it writes to its own folder, never into the demo's run (whose stages would then be stale)
STUDENT      ?= $(RUN)/onnx/pruned.onnx
TEACHER_CKPT ?= $(RUN)/train/teacher/checkpoint.pt
DISTILL_DATA ?= $(RUN)/data
STEPS        ?= 200
DISTILL_OUT  ?= runs/distill
# an earlier run in DISTILL_OUT is refused: DISTILL_ARGS="--resume" continues it, "--force" starts afresh
DISTILL_ARGS ?=

# the accuracy-latency frontier (python -m runtime.frontier): under an hour on 2 CPU cores at the defaults;
# make frontier FRONTIER_ARGS="--device cuda" on a GPU machine (512 input, Swin-T teacher, stages side by side)
FRONTIER_RUN  ?= runs/frontier
FRONTIER_ARGS ?=

.PHONY: setup test test-zoo test-full lint export demo demo-quick distill frontier clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers for most tests; the ones that assert on measured latency then run alone (a busy neighbour skews timing).
test: lint
	$(VENV)/bin/pytest -q -n 2 --dist loadscope -m 'not zoo and not sweep and not timing'
	$(VENV)/bin/pytest -q -m 'timing and not zoo and not sweep'

# The external-model zoo at every export and weight variant and with a dynamic batch and size, and the exports of the
# built-in width variants (about 11 minutes on 2 quiet cores). transformers and its tokenizers install beside the
# pinned torch without their dependencies: a plain install would pull a second torch.
test-zoo: setup
	$(PY) -m pip install --quiet --no-deps transformers tokenizers regex
	$(VENV)/bin/pytest -q -n 2 -m zoo tests/passes/test_zoo.py tests/passes/test_zoo_dynamic.py tests/exporters/test_export.py

# Everything: make test, the zoo, and the sweeps (the tiny frontier run end to end, timed alone).
test-full: test test-zoo
	$(VENV)/bin/pytest -q -m sweep

export: setup
	mkdir -p $(ARTIFACTS)
	$(PY) -m exporters.export --model $(MODEL) --input-size $(SIZE) --opset $(OPSET) --exporter $(EXPORTER) \
		-o $(ARTIFACTS)/$(MODEL)_$(SIZE)_op$(OPSET).onnx
	$(PY) -m exporters.export --model $(TEACHER) --input-size $(SIZE) --opset $(OPSET) --exporter $(EXPORTER) \
		-o $(ARTIFACTS)/$(TEACHER)_$(SIZE)_op$(OPSET).onnx

demo: setup
	$(PY) -m runtime.pipeline $(PIPELINE_ARGS)

# 64 px, 48 training images, a tenth of the steps: shows every stage working, not what compression buys
demo-quick: setup
	$(PY) -m runtime.pipeline --run $(QUICK_RUN) --quick $(if $(DATA),--data $(DATA)) $(DEMO_ARGS)

distill: setup
	$(PY) -m models.distill --student $(STUDENT) --teacher $(TEACHER_CKPT) --data $(DISTILL_DATA) \
		--steps $(STEPS) --out $(DISTILL_OUT) $(DISTILL_ARGS)

frontier: setup
	$(PY) -m runtime.frontier --run $(FRONTIER_RUN) $(FRONTIER_ARGS)

clean:
	rm -rf $(ARTIFACTS) .pytest_cache .ruff_cache
