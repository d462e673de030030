"""Sharding rules: first match wins, FSDP picks the largest divisible dimension of large leaves,
explicit specs, clear errors; paths cover parameters and their optimizer state together."""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mmjax.parallel import mesh as mesh_lib, sharding
from mmjax.schema import ConfigError


@pytest.mark.parametrize(
    "path,shape,rules,expected",
    [
        ("params/a/kernel", (64, 256), [(".*", "fsdp")], P(None, "fsdp")),
        ("params/a/kernel", (256, 64), [(".*", "fsdp")], P("fsdp", None)),
        ("params/a/kernel", (6, 64), [(".*", "fsdp")], P(None, "fsdp")),  # 6 does not divide by 4
        ("params/a/kernel", (6, 7), [(".*", "fsdp")], P()),  # nothing divides: replicated
        ("params/a/bias", (64,), [(".*", "fsdp")], P()),  # below fsdp_min_size
        ("params/log_scale", (), [(".*", "fsdp")], P()),
        ("params/a/kernel", (64, 256), [("kernel", "replicate"), (".*", "fsdp")], P()),  # first wins
        ("params/embed/embedding", (100, 64), [("embed", (None, "model"))], P(None, "model")),
        ("params/other", (64, 64), [("embed", "fsdp")], P()),  # no rule matches
    ],
)
def test_spec_for(path, shape, rules, expected):
  assert sharding.spec_for(path, shape, rules, fsdp_size=4, fsdp_min_size=256) == expected


@pytest.mark.parametrize(
    "rules,message",
    [
        ([("(", "fsdp")], "bad regular expression"),
        ([(".*", "shard")], r"unknown action 'shard'; valid: \['replicate', 'fsdp'\]"),
        ([(".*", (None, "tensor"))], r"axes must be None or among \['data', 'fsdp', 'model'\]"),
        (["fsdp"], "must be a \\(regex, action\\) pair"),
    ],
)
def test_malformed_rules_are_rejected(rules, message):
  with pytest.raises(ConfigError, match=message):
    sharding.validate_rules(rules, mesh_lib.AXES)


def test_rules_reach_optimizer_state_through_paths():
  params = {"dense": {"kernel": jnp.zeros((8, 16)), "bias": jnp.zeros(16)}}
  state = {"params": params, "opt_state": optax.adam(1e-3).init(params)}
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1, "model": 1})
  shardings = sharding.tree_shardings(state, mesh, [("bias", "replicate"), ("kernel$", (None, "model"))], 0)
  lines = sharding.describe(state, shardings)
  assert "params/dense/kernel (8, 16) P(None, 'model')" in lines
  assert any(line.startswith("opt_state/0/mu/dense/kernel (8, 16) P(None, 'model')") for line in lines), lines
  assert any(line.startswith("opt_state/0/nu/dense/bias (16,) P()") for line in lines), lines
  with pytest.raises(ConfigError, match=r"gives 2 axes to dense/bias of shape \(16,\)"):
    sharding.tree_shardings(params, mesh, [(".*", (None, "model"))], 0)
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
