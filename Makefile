# Shortcuts; the README's two commands are the reference.
.PHONY: install test lint demo bench

install:
	python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e '.[dev,ann,serve,tune,als]'

test:
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests benchmarks

demo:
	.venv/bin/dr demo

bench:
	.venv/bin/python benchmarks/bench_synth.py
	.venv/bin/python benchmarks/bench_beam.py
	.venv/bin/python benchmarks/bench_mstep.py
	.venv/bin/python benchmarks/bench_quality.py synth
