# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	if [ -f scripts/install_audiocraft.sh ]; then bash scripts/install_audiocraft.sh $(PY); fi
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline: real models when cached/reachable, else offline.
demo: $(STAMP)
	$(PY) scripts/pipeline.py --config=configs/pipeline.py --workdir=runs/demo

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) runs
