"""How the process runs XLA:CPU programs: host memory that is reused across steps, and synchronous
dispatch.

A train step's buffers are allocated anew at every execution. Measured on the peer benchmark's
steps (docs/performance.md), a plain process page-faults them in again every step:
- 39.5 k minor faults (≈ 155 MiB) per CLIP-mini step;
- 70 k per MMVAE step;
- 16 k per attention-fusion step and 8 k per tensor-fusion step.

glibc's malloc returns large freed blocks to the kernel (`munmap`, heap trimming), so the next
step maps and zero-fills them again. Two settings remove the faults:

* `keep_freed_host_memory`: glibc serves blocks up to 1 GiB from its heap and keeps freed memory
  there (``mallopt`` ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``), so the next step reuses it.
  The process's resident memory then stays at its peak instead of shrinking between steps.
* `use_synchronous_dispatch`: CPU programs run on the calling thread
  (``jax_cpu_enable_async_dispatch=False``). With asynchronous dispatch, the CLIP-mini and MMVAE
  steps kept every fault whatever the allocator settings; synchronously, with the thresholds
  above, they had none. It must be set before JAX creates its CPU client, i.e. before the first
  computation. It affects only programs run on CPU devices.

Both together, each step alone in a fresh process: CLIP-mini 168.7 → 127.1 ms, MMVAE 403.0 →
334–336 ms, attention fusion 60.1 → 41.3–41.9 ms, tensor fusion 27.9 → 19.3 ms, MVAE unchanged
(20.6 → 20.4 ms; it had no faults).

The ``mmjax`` command applies both, and the trainer applies `keep_freed_host_memory` when it
trains on CPU. A notebook or script gets the whole effect by calling `use_synchronous_dispatch`
before its first JAX computation.

In the peer benchmark, which runs PyTorch in the same process (so with the same allocator
settings), three suite runs of 2026-12-08 gave, against one run without the settings:
- CLIP-mini 0.99× the peer (0.74×);
- MMVAE 1.05× (0.92×);
- tensor fusion 1.16× (0.78×);
- attention fusion 1.15× (0.77×);
- MVAE 1.53× (1.53×).

The quickstart's ``mmjax train`` (`configs/clip_digits.py`, small steps) trained at the same speed.
docs/performance.md has the figures.
"""

import ctypes
import ctypes.util
import functools
import platform

import jax

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


@functools.cache
def _glibc():
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  path = ctypes.util.find_library("c")
  return ctypes.CDLL(path) if path else None


def keep_freed_host_memory() -> bool:
  """Makes glibc serve blocks up to 1 GiB from its heap and keep freed memory for reuse, so that
  buffers allocated at every step are not mapped and page-faulted in again each time.

  The setting is process-wide and lasts until the process ends. Elsewhere than Linux with glibc it
  does nothing.

  Returns:
    Whether the setting was applied.
  """
  libc = _glibc()
  if libc is None:
    return False
  return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def use_synchronous_dispatch() -> None:
  """Runs CPU programs on the calling thread (``jax_cpu_enable_async_dispatch=False``).

  Call it before the process's first JAX computation; once JAX's CPU client exists, the setting no
  longer changes it. Programs on GPU or TPU devices are not affected.
  """
  jax.config.update("jax_cpu_enable_async_dispatch", False)
