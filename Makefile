# The two commands of the README. Each prepares .venv by itself (scripts/ensure_env.sh); the
# tests also prepare one environment per Blender LTS of the matrix (scripts/ensure_blender_env.sh).
.PHONY: demo test env blender-envs bench

env:
	bash scripts/ensure_env.sh

blender-envs:
	for req in requirements/blender-*.txt; do \
	  v=$${req#requirements/blender-}; bash scripts/ensure_blender_env.sh $${v%.txt} >/dev/null || exit 1; \
	done

demo: env
	.venv/bin/python tools/demo.py --out out/demo

test: env blender-envs
	.venv/bin/python -m pytest -q -rfEp --durations=40 tests

bench: env
	.venv/bin/python benchmarks/bench_render.py
	.venv/bin/python benchmarks/bench_field.py
