"""Shared fixtures: the built-in dataset built once per test process, and small run configs.

Tests marked ``multidevice`` need 8 devices. They are left out of the ordinary session (one CPU
device, like a laptop) and run by `tests/parallel/test_multidevice.py` in a separate pytest
process started with ``MMJAX_TEST_DEVICES=8``, which simulates 8 CPU devices. That variable has
to act before JAX is imported, hence its place at the top of this file.
"""

import os
import sys
import tempfile

# Tests check results, not speed: skipping XLA's backend optimisations makes compilation, which
# dominates these short runs, 2–4× faster. Subprocesses started by tests inherit it, except the
# notebook's kernel (see pytest_runtest_setup), which trains for real. Users run optimised code:
# tests/test_optimized.py runs the tests marked ``optimized`` (bitwise resume, determinism,
# sharded = single device) again with MMJAX_TEST_OPTIMIZED=1, at XLA's default level.
XLA_FLAGS_AS_GIVEN = os.environ.get("XLA_FLAGS")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "") and not os.environ.get("MMJAX_TEST_OPTIMIZED"):
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
if os.environ.get("MMJAX_TEST_DEVICES"):
  os.environ["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={os.environ['MMJAX_TEST_DEVICES']}"
# Many tests start training processes that compile the same programs: JAX's persistent cache
# (keyed by program, flags and JAX version, so never stale) lets all but the first skip it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"mmjax-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest
from hypothesis import settings as hypothesis_settings

# Property tests: CI tries the same cases on every run (derandomized: no flaky red from a case
# drawn once), 150 per test unless a test says otherwise; `HYPOTHESIS_PROFILE=dev` searches at
# random, 2,000 cases per test, for finding new failures locally. A failing case prints the
# `@reproduce_failure` blob that replays it.
hypothesis_settings.register_profile("ci", derandomize=True, max_examples=150, deadline=None, print_blob=True)
hypothesis_settings.register_profile("dev", derandomize=False, max_examples=2000, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `configs`

from configs import clip_digits  # noqa: E402


def _shared_data_dir(tmp_path_factory, prepare) -> str:
  """A TFDS data directory shared by this session's xdist workers, `prepare`d once (under a lock)."""
  import fcntl

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the base directory all workers of the session share
  directory = root / "tensorflow_datasets"
  directory.mkdir(exist_ok=True)
  with open(root / "tensorflow_datasets.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    prepare(str(directory))
  return str(directory)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data directory holding mm_digits (built here, offline)."""
  from mmjax.data import mm_digits

  return _shared_data_dir(tmp_path_factory, mm_digits.prepare)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
  """A TFDS data directory holding mm_shapes (default config) and mm_digits."""
  from mmjax.data import mm_shapes

  return _shared_data_dir(tmp_path_factory, mm_shapes.prepare)


def small_config(data_dir: str, **train):
  """clip_digits shrunk to run in seconds: tiny towers, small batches, few steps."""
  config = clip_digits.get_config()
  config.data.data_dir = data_dir
  config.data.batch_size = 32
  config.model.embed_dim = 16
  config.model.encoders.image.conv.update(channels=(8, 16), strides=(1, 2))
  config.model.encoders.text.gru.width = 16
  config.model.encoders.text.transformer.update(width=16, depth=1)
  config.optimizer.warmup_steps = 2
  config.train.update(
      dict(num_steps=12, log_every=4, eval_every=6, checkpoint_every=6, eval_batch_size=128, progress_bar=False)
  )
  config.train.update(train)
  return config


@pytest.fixture
def small(data_dir):
  """Factory for small configs: ``small(num_steps=20)``."""
  return lambda **train: small_config(data_dir, **train)


# Tests that start many busy threads or processes of their own (8 simulated devices, two
# training processes, a notebook kernel): on a 2-core machine they run one after another on one
# xdist worker rather than starving each other.
SERIAL_HEAVY = ("test_multidevice.py", "test_multihost.py", "test_optimized.py", "quickstart.ipynb", "vae.ipynb", "fusion.ipynb")


def pytest_collection_modifyitems(config, items):
  """Groups the heavy tests; deselects ``multidevice`` tests unless this process simulates
  several devices."""
  for item in items:
    if item.path.name in SERIAL_HEAVY:
      item.add_marker(pytest.mark.xdist_group("serial_heavy"))
  if os.environ.get("MMJAX_TEST_DEVICES"):
    return
  selected = [item for item in items if "multidevice" not in item.keywords]
  if len(selected) < len(items):
    config.hook.pytest_deselected(items=[item for item in items if "multidevice" in item.keywords])
    items[:] = selected


def pytest_runtest_setup(item):
  if item.path.suffix == ".ipynb":
    item.stash[_TEST_XLA_FLAGS] = os.environ.get("XLA_FLAGS")
    _set_env("XLA_FLAGS", XLA_FLAGS_AS_GIVEN)


def pytest_runtest_teardown(item):
  if _TEST_XLA_FLAGS in item.stash:
    _set_env("XLA_FLAGS", item.stash[_TEST_XLA_FLAGS])


_TEST_XLA_FLAGS = pytest.StashKey[str | None]()


def _set_env(name: str, value: str | None) -> None:
  if value is None:
    os.environ.pop(name, None)
  else:
    os.environ[name] = value
