"""pytest plugin loaded by `tools/mutation.sh`: every test traces JAX functions afresh.

mutmut activates a mutant when the mutated function is called (a trampoline looks up the active
mutant), and it forks each mutant's test run from the process that first ran the suite unmutated.
A function JAX has already traced is not called again: `jit` would replay the trace made without
the mutant and the mutant would survive unseen. The same cache would hide from mutmut's coverage
pass which tests reach a function that an earlier test traced, so those tests would not be run
against its mutants. Clearing JAX's caches before each test closes both holes; the recompilations
that follow can be served by the persistent compilation cache that `tests/conftest.py` sets up.

The mutants' test runs are forked from a server process that has only collected the tests. If
collecting them already ran JAX (an array or a key built at import or in a parametrisation), that
process holds XLA's thread pools, and a forked child deadlocks in its first compilation: every
mutant then times out. Collection is checked for that, and stops naming the cause.
"""

import jax
import pytest
from jax._src import xla_bridge  # whether a backend (and its thread pools) has been started


def pytest_collection_finish(session) -> None:
  """Fails the run if collecting the tests started a JAX backend (forked mutants would hang)."""
  if xla_bridge.backends_are_initialized():
    raise pytest.UsageError(
        "collecting the tests started a JAX backend (an array or a PRNG key built at import time or "
        f"in a parametrisation, in one of {len(session.items)} collected tests); mutants forked "
        "from this process deadlock in XLA. Build JAX values inside the tests."
    )


def pytest_runtest_setup(item) -> None:
  """Drops every trace and compiled program cached in memory before `item` runs."""
  del item
  jax.clear_caches()
