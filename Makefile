# Two commands do everything on a fresh machine: `make demo` and `make test`; `make check` is the
# fast loop beside `make test`. Each installs what it needs first (Debian packages when missing, virtual environment, Python
# packages, npm packages); later runs skip the installs until pyproject.toml or package*.json change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PCSC_STAMP := $(VENV)/.pcsc-installed
# PC/SC tests: the real pcscd, Debian's vpcd driver (the virtual card plugs into it), and what pyscard
# compiles against (it builds from source with swig and the pcsc-lite headers).
PCSC_DEBS := pcscd vsmartcard-vpcd libpcsclite-dev swig
CHROMIUM_STAMP := $(VENV)/.chromium-installed
# Web page tests drive Debian's headless Chromium through its chromedriver (selenium, `test` extra);
# a small CJK font makes the pages' screenshots readable.
CHROMIUM_DEBS := chromium chromium-driver fonts-wqy-microhei
PG_STAMP := $(VENV)/.postgresql-installed
# PostgreSQL store tests (--store=postgresql|both): the server binaries (initdb, pg_ctl, pg_basebackup) for
# private clusters in temp dirs, and psycopg (the `postgresql` extra). Debian's own cluster is not used.
PG_DEBS := postgresql
# strace: the durability test watches the terminal's fsync-before-display order at the system-call level.
TRACE_DEBS := strace
# The bleak phone's tests: simulators/bluez_air.py serves BlueZ's D-Bus API on a private dbus-daemon, and
# bleak runs `bluetoothctl --version` (Debian's bluez) to check which BlueZ it talks to.
BLUEZ_DEBS := bluez dbus-daemon
# The terminals' voice prompts (firmware/apps/voice.py): espeak-ng synthesizes the Mandarin WAVs,
# alsa-utils' aplay plays them on a device; the tests play them into a sound sink.
VOICE_DEBS := espeak-ng alsa-utils
# The flashing tool's ssh target (tests/test_flash.py): a real sshd on a loopback port stands in for a Pi.
SSH_DEBS := openssh-server
# Python packages built from source on install (python-evdev for the keyboard-wedge scanners, pyscard):
# a C compiler, Python's headers and the kernel's input headers.
BUILD_DEBS := gcc python3-dev linux-libc-dev
PYTEST_ARGS ?=
# The suite runs on three workers (pytest-xdist), one more than the two cores it is sized for: much
# of its time is spent waiting on the servers, terminals and browsers it starts (on two workers the
# cores sat a quarter idle and the run took 14 minutes; on three, 11). Each test file runs on one
# worker (its module-scoped servers and rigs start once); the pcsc rigs of two files take turns
# (tests/pcscd_service.py). TEST_WORKERS=0 runs it all in one process.
TEST_WORKERS ?= 3
# `make check`, seconds rather than minutes: the linter, the core's unit tests under CPython and under
# MicroPython, the core's static checks and the import layers, the sim: reader's tests and the POS on it.
CHECK_TESTS := tests/core tests/test_core_imports.py tests/test_import_layers.py tests/test_layout.py tests/test_sim.py \
	tests/test_card_io.py tests/test_card_file.py tests/test_classic_card.py tests/test_pos_on_every_driver.py
# apt-get needs root; use sudo when we are not root and it exists.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends

.PHONY: demo test check lint setup clean

setup: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { $(APT_INSTALL) python3 python3-venv; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "ykt needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version)"; exit 1; }
	@# Debian splits ensurepip (needed by venv) into python3-venv / python3.X-venv.
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(APT_INSTALL) python3-venv \
		"python3.$$($(PYTHON) -c 'import sys; print(sys.version_info[1])')-venv" || $(APT_INSTALL) python3-venv; }
	@missing=$$(for package in $(BUILD_DEBS); do dpkg-query -W -f='$${Status}' $$package 2>/dev/null \
		| grep -q 'install ok installed' || echo $$package; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing"; $(APT_INSTALL) $$missing; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	@{ command -v node && command -v npm; } >/dev/null || { $(APT_INSTALL) nodejs npm; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Installs only the Debian packages that are missing, then pyscard (the `pcsc` extra). Not a
# prerequisite of demo, which needs no PC/SC reader.
$(PCSC_STAMP): pyproject.toml $(PY_STAMP)
	@missing=$$(for package in $(PCSC_DEBS); do dpkg-query -W -f='$${Status}' $$package 2>/dev/null \
		| grep -q 'install ok installed' || echo $$package; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing"; $(APT_INSTALL) $$missing; fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,pcsc]'
	touch $@

# Asks apt only for the browser (and strace, bluez, dbus-daemon, espeak-ng, alsa-utils, openssh-server) packages that are missing.
$(CHROMIUM_STAMP): Makefile
	@missing=$$(for package in $(CHROMIUM_DEBS) $(TRACE_DEBS) $(BLUEZ_DEBS) $(VOICE_DEBS) $(SSH_DEBS); do dpkg-query -W -f='$${Status}' $$package 2>/dev/null \
		| grep -q 'install ok installed' || echo $$package; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing"; $(APT_INSTALL) $$missing; fi
	@mkdir -p $(VENV) && touch $@

# Asks apt only for PostgreSQL when it is missing, then installs the `postgresql` extra.
$(PG_STAMP): pyproject.toml $(PY_STAMP)
	@missing=$$(for package in $(PG_DEBS); do dpkg-query -W -f='$${Status}' $$package 2>/dev/null \
		| grep -q 'install ok installed' || echo $$package; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing"; $(APT_INSTALL) $$missing; fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,postgresql]'
	touch $@

# `make demo FACE=1` shows POS 1's screens during the rush (port 8800); FACE=8801 picks the port.
DEMO_FACE = $(if $(filter 1 yes,$(FACE)),--face,$(if $(FACE),--face $(FACE)))
demo: $(PY_STAMP)
	$(BIN)/ykt demo $(DEMO_FACE) $(DEMO_ARGS)

test: lint $(NODE_STAMP) $(PCSC_STAMP) $(CHROMIUM_STAMP) $(PG_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --reader=all --store=both $(PYTEST_ARGS)

check: lint $(NODE_STAMP)
	node tools/mp_test_runner.mjs --import-core tests/core/test_*.py
	$(BIN)/python -m pytest -q --reader=sim $(CHECK_TESTS)

# ruff, pinned in the `test` extra and set up in pyproject.toml: mistakes only, no reformatting.
lint: $(PY_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis .ruff_cache
