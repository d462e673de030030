"""`mmjax.cpu_runtime`, each check in a fresh process: the settings are process-wide and the
dispatch one must come before JAX's first computation."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only"
)


def _python(code: str, env: dict | None = None) -> str:
  result = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
  )
  assert result.returncode == 0, result.stderr
  return result.stdout


@glibc_only
def test_freed_host_memory_is_reused_instead_of_faulted_in_again():
  output = _python("""
      import ctypes, ctypes.util, resource
      from mmjax import cpu_runtime

      libc = ctypes.CDLL(ctypes.util.find_library("c"))
      libc.malloc.restype = ctypes.c_void_p
      libc.free.argtypes = [ctypes.c_void_p]

      def faults_of_repeated_allocations():
        # As XLA's buffers: malloc'd, written, freed, allocated again at the next step.
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
          block = libc.malloc(64 << 20)  # 64 MiB: above glibc's largest default mmap threshold
          ctypes.memset(block, 1, 64 << 20)
          libc.free(block)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

      plain = faults_of_repeated_allocations()
      applied = cpu_runtime.keep_freed_host_memory()
      faults_of_repeated_allocations()  # the first one after the change still grows the heap
      print(applied, plain, faults_of_repeated_allocations())
  """)
  applied, plain, kept = output.split()
  assert applied == "True"
  # 5 × 64 MiB in 4 KiB pages is 81,920 faults when each allocation is mapped afresh.
  assert int(plain) > 50_000 and int(kept) < int(plain) // 20, output


def test_synchronous_dispatch_runs_single_and_multi_device_programs():
  output = _python(
      """
      from mmjax import cpu_runtime

      cpu_runtime.use_synchronous_dispatch()
      import jax
      import jax.numpy as jnp
      from jax.sharding import NamedSharding, PartitionSpec as P

      mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
      x = jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P("data")))
      total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(jnp.sum(x), "data"), mesh=mesh, in_specs=P("data"), out_specs=P()))
      print(jax.config.read("jax_cpu_enable_async_dispatch"), float(total(x)), float(jnp.dot(x, x)))
      """,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"},
  )
  assert output.split() == ["False", "28.0", "140.0"]
