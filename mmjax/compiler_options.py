"""XLA compiler options for the functions mmjax compiles, by backend.

Only XLA's CPU backend gets options; on GPU and TPU every function compiles with XLA's defaults.
On CPU (jaxlib 0.10), measured on the peer benchmark's steps (docs/performance.md):

* ``xla_cpu_experimental_ynn_fusion_type=""`` keeps element-wise and reduction fusions in XLA's
  own code generator instead of handing them to YNNPACK: the YNNPACK reductions behind LayerNorm's
  gradient were 2.6× slower (7.6 against 19.8 ms on ``256×16×16×32``) and the conv tower of
  CLIP-mini's forward + backward went from 122 to 70–74 ms.
* ``xla_backend_optimization_level=1`` for steps that run many times (training and evaluation): it
  cut the CLIP-mini step's compilation by about a fifth at the same step time; functions that run
  once (initialisation) compile at level 0, whose code is slower but compiles in about half the time.

An option also set in ``XLA_FLAGS`` is left to ``XLA_FLAGS``: an explicit setting wins.
"""

import os

import jax

_CPU_REPEATED = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_backend_optimization_level": 1}
_CPU_ONCE = {**_CPU_REPEATED, "xla_backend_optimization_level": 0}


def _for_backend(cpu_options: dict, backend: str | None) -> dict | None:
  if (backend or jax.default_backend()) != "cpu":
    return None
  flags = os.environ.get("XLA_FLAGS", "")
  options = {name: value for name, value in cpu_options.items() if f"--{name}=" not in flags}
  return options or None


def repeated(backend: str | None = None) -> dict | None:
  """``compiler_options`` for `jax.jit` of a function run many times: train and evaluation steps.

  Args:
    backend: the backend compiled for; the default backend when None.

  Returns:
    The options for `jax.jit(..., compiler_options=...)`, or None (XLA's defaults).

  >>> jax.jit(lambda x: x * 2, compiler_options=repeated())(1.0).item()
  2.0
  """
  return _for_backend(_CPU_REPEATED, backend)


def once(backend: str | None = None) -> dict | None:
  """``compiler_options`` for `jax.jit` of a function run once (initialisation): cheapest compilation.

  Args:
    backend: the backend compiled for; the default backend when None.

  Returns:
    The options for `jax.jit(..., compiler_options=...)`, or None (XLA's defaults).
  """
  return _for_backend(_CPU_ONCE, backend)
