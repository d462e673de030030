#!/usr/bin/env bash
# Mutation testing of the modules whose guarantees users rely on most, each against its own tests.
#
#   pip install -e '.[dev]'          # mutmut
#   tools/mutation.sh [TARGET...]    # TARGET: losses | checkpoints | faults (default: all three)
#
# Environment: PYTHON (the interpreter with mutmut), MUTATION_DIR (where the copies go),
# MUTATION_PYTEST_K (a pytest -k expression narrowing the tests), MUTATION_MAX_CHILDREN (mutants
# tested at once; default 1, as each test run already uses every core through XLA),
# MUTATION_ISOLATION (mutmut's process_isolation: forkserver, the default, or fork),
# MUTATION_MUTANTS (mutant names or fnmatch patterns to run, e.g. 'mmjax.losses.chunked.*';
# default: all). The loss code that runs only with an axis name is reached by
# tests/losses/test_distributed.py, which needs MMJAX_TEST_DEVICES=8 in the environment.
#
# Each target runs in a fresh copy of the committed tree (git archive HEAD) under
# ${MUTATION_DIR:-/tmp/mmjax-mutation}/TARGET, so the working tree is never touched, and ends with
# `mutmut results` (the survivors). Inspect one with `mutmut show NAME` in that directory.
# Slow: every mutant reruns the target's tests; see docs/testing.md for measured times and results.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${MUTATION_DIR:-/tmp/mmjax-mutation}"
PYTHON="${PYTHON:-python}"

declare -A PATHS=(
  [losses]="mmjax/losses/"
  [checkpoints]="mmjax/train/checkpoints.py"
  [faults]="mmjax/train/faults.py"
)
declare -A TESTS=(
  [losses]="tests/losses/ tests/test_properties.py"
  [checkpoints]="tests/train/test_checkpoints.py tests/train/test_crash_recovery.py"
  [faults]="tests/train/test_faults.py tests/train/test_crash_recovery.py"
)

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(losses checkpoints faults)
for target in "${targets[@]}"; do
  [ -n "${PATHS[$target]:-}" ] || { echo "unknown target '$target'; valid: ${!PATHS[*]}" >&2; exit 2; }
  dir="$WORK/$target"
  rm -rf "$dir" && mkdir -p "$dir"
  git -C "$ROOT" archive HEAD | tar -x -C "$dir"
  # mutmut reads lists from setup.cfg one item per line. The pytest arguments replace the
  # project's addopts (doctests, notebooks, xdist), which would otherwise run with every mutant;
  # MUTATION_PYTEST_K narrows the tests (e.g. to the fast unit tests) for a quick first pass.
  {
    echo "[mutmut]"
    echo "source_paths = ${PATHS[$target]}"
    echo "pytest_add_cli_args_test_selection ="; printf '  %s\n' ${TESTS[$target]}
    echo "also_copy ="; printf '  %s\n' configs/ tests/ mmjax/ benchmarks/
    # mutation_pytest_plugin (tools/) clears JAX's in-memory caches before each test, so a trace
    # made without the mutant is never replayed in its place.
    echo "pytest_add_cli_args ="; printf '  %s\n' -p no:xdist -p mutation_pytest_plugin -o addopts=--import-mode=importlib
    if [ -n "${MUTATION_PYTEST_K:-}" ]; then printf '  %s\n' -k "$MUTATION_PYTEST_K"; fi
    # Mutants run in processes forked from a server that has only collected the tests: forked from
    # mutmut's own process (which ran the suite), they inherit Orbax's and TensorStore's state
    # without the threads behind it and hang on the first checkpoint they read.
    echo "process_isolation = ${MUTATION_ISOLATION:-forkserver}"
  } > "$dir/setup.cfg"
  echo "== $target: mutating ${PATHS[$target]} against ${TESTS[$target]}"
  (set -f && cd "$dir" && export PYTHONPATH="$dir/tools${PYTHONPATH:+:$PYTHONPATH}" &&
    "$PYTHON" -m mutmut run --max-children "${MUTATION_MAX_CHILDREN:-1}" ${MUTATION_MUTANTS:-} &&
    "$PYTHON" -m mutmut results) || true
done
