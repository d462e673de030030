"""Jaxpr inspection shared by tests: is rematerialisation really in the traced program, which\ncontractions does it hold?"""

import jax

# Names of JAX's rematerialisation primitive across versions ("remat2" in JAX 0.10).
REMAT_PRIMITIVES = ("checkpoint", "remat2")


def equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in its equations."""
  for equation in jaxpr.eqns:
    yield equation
    for value in equation.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr holds its Jaxpr
        if hasattr(inner, "eqns"):
          yield from equations(inner)


def primitive_names(jaxpr):
  """Every primitive's name in `jaxpr` and in the jaxprs nested in its equations."""
  return (equation.primitive.name for equation in equations(jaxpr))


def count_remats(function, *args) -> int:
  """How many rematerialised regions the jaxpr of ``function(*args)`` holds."""
  return sum(name in REMAT_PRIMITIVES for name in primitive_names(jax.make_jaxpr(function)(*args).jaxpr))
