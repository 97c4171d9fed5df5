# Two entry points: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test test-pure lint explore install install-test test-deps native clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/trio-sfu --dev

# Things pip cannot install (Debian packages, npm packages) come from this script;
# it is a no-op when they are already present or cannot be installed here.
test-deps:
	bash scripts/test-deps.sh

# The compiled media helpers (trio_sfu/native, cffi API mode, built in place; gcc and the
# Python headers come from test-deps, nothing from the network): the batch UDP reader (_recv)
# and the fan-out (_fanout). A failed build is a warning, not an error: the server then runs
# the pure-Python twins (TRIO_SFU_FASTPATH=0 selects them anyway), and the tests of the
# compiled ones skip saying why.
native: install-test test-deps
	@$(PY) -m trio_sfu.native._recv_build || echo "native: trio_sfu.native._recv not built; the UDP reader runs its pure-Python twin" >&2
	$(PY) -m trio_sfu.native.build --allow-failure

# Pyflakes-level checks (undefined names, unused imports, syntax) before the suite; the
# generated protobuf modules are not ours to lint.
lint: install-test
	$(PY) -m ruff check --select F,E9 --exclude proto/relay_pb2.py,proto/cluster_pb2.py .

# The whole suite with the compiled helpers, then the second pass below without them.
test: install-test test-deps native lint
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc
	@$(MAKE) --no-print-directory test-pure

# The suite with the compiled helpers absent, as on a machine where `make native` built nothing:
# TRIO_SFU_NATIVE_ABSENT=1 hides them from the import system (trio_sfu/native/absent.py), the pure
# twins receive and forward everything, and only the tests of the compiled code itself skip,
# naming what is missing (tests/compiled_marks.py; under TRIO_SFU_REQUIRE_E2E=1 the only skips
# allowed, and only in this pass). `make test` runs it after the main run. Not tests/e2e: the two
# fan-outs send byte-identical datagrams (tests/test_forwarding_fast_path.py), so what browsers
# and SDKs add, interop, does not depend on which one sent them, and e2e is most of CI's time.
# Nor the race explorer (a minute of CPU): it runs on the in-memory network, where neither helper
# is ever used (the reader needs a kernel socket, the fan-out a socket descriptor), so its
# schedules would run exactly as in the main run.
PURE_PYTEST_ARGS ?= tests --ignore=tests/e2e --ignore=tests/test_race_explorer.py
test-pure: install-test
	TRIO_SFU_NATIVE_ABSENT=1 $(PY) -m pytest $(PURE_PYTEST_ARGS)

# The migration race explorer (tests/test_race_explorer.py) on real nodes under MockClock: `make
# test` explores 500 seeded schedules (about 1 min of CPU here); this runs EXPLORER_SCHEDULES of
# them (default 5000). A failing seed replays alone with EXPLORER_SEED=<seed>.
EXPLORER_SCHEDULES ?= 5000
explore: install-test
	EXPLORER_SCHEDULES=$(EXPLORER_SCHEDULES) $(PY) -m pytest -q tests/test_race_explorer.py

# Coverage-guided fuzzing (atheris; fuzz/): every parser's target for FUZZ_COUNT inputs, one
# target at a time, printing inputs executed and crashes per parser. FUZZ_TARGETS="stun rtp"
# runs only those. Corpus, crashing inputs and libFuzzer logs stay under .fuzz/<target>/.
FUZZ_COUNT ?= 100000
FUZZ_TARGETS ?=
.PHONY: fuzz
fuzz: install-test
	$(PY) -m fuzz --count $(FUZZ_COUNT) $(foreach t,$(FUZZ_TARGETS),--target $(t))

clean:
	rm -rf $(VENV) .venv-agents build *.egg-info trio_sfu/native/*.so
