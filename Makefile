# The two commands: `make run` and `make test`. Both create .venv and install on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/appliance run $(ARGS)

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The bench extra: the reference clients the bus benchmark compares with (paho-mqtt, nats-py).
$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check appliance ota firmware tests bench
	$(BIN)/ruff format --check appliance ota firmware tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
