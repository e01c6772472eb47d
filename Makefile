# The two commands of the README. Each prepares .venv by itself (scripts/ensure_env.sh).
.PHONY: demo test env bench

env:
	bash scripts/ensure_env.sh

demo: env
	.venv/bin/python tools/demo.py --out out/demo

test: env
	.venv/bin/python -m pytest -q tests

bench: env
	.venv/bin/python benchmarks/bench_render.py
	.venv/bin/python benchmarks/bench_field.py
