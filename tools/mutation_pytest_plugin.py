"""pytest plugin loaded by `tools/mutation.sh`: every test traces JAX functions afresh.

mutmut activates a mutant when the mutated function is called (a trampoline looks up the active
mutant), and it forks each mutant's test run from the process that first ran the suite unmutated.
A function JAX has already traced is not called again: `jit` would replay the trace made without
the mutant and the mutant would survive unseen. The same cache would hide from mutmut's coverage
pass which tests reach a function that an earlier test traced, so those tests would not be run
against its mutants. Clearing JAX's caches before each test closes both holes; the recompilations
that follow can be served by the persistent compilation cache that `tests/conftest.py` sets up.
"""

import jax


def pytest_runtest_setup(item) -> None:
  """Drops every trace and compiled program cached in memory before `item` runs."""
  del item
  jax.clear_caches()
