"""Cross-modal attention learns a known alignment between two sequences sampled at different rates.

Each example is a fresh random smooth multichannel signal (sums of slow sinusoids). Sequence A
samples it at rate 1 (times 0, 1, …, 15) and also carries one extra channel ``u``; sequence B samples
the other channels at rate 2.5 (times 0, 0.4, …, 15.6); both are noisy. The model must predict
``u`` at B's times, which only A has: B's tokens query A's tokens with `CrossAttention` and the
answer is read from the attended values. Since the signal is new in every example, the only way to
solve the task is to match B's samples to A's samples of the same time by their content, so the
learned attention's argmax should land on the A sample nearest in time: ``i ≈ j / 2.5``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.fusion import CrossAttention

LENGTH_A, RATE_B = 16, 2.5
LENGTH_B = int(LENGTH_A * RATE_B)
CHANNELS, WIDTH, NOISE = 4, 16, 0.05


def sample(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(a [B, 16, channels + 1], b [B, 40, channels], u at B's times [B, 40])``."""
  frequency_key, phase_key, amplitude_key, noise_a, noise_b = jax.random.split(key, 5)
  shape = (batch, CHANNELS + 1, 3)  # three sinusoids per channel, slow enough to be smooth at rate 1
  frequency = jax.random.uniform(frequency_key, shape, minval=0.2, maxval=0.8)
  phase = jax.random.uniform(phase_key, shape, maxval=2 * jnp.pi)
  amplitude = jax.random.normal(amplitude_key, shape) / jnp.sqrt(3.0)

  def at(times):
    waves = jnp.sin(frequency[:, :, None, :] * times[None, None, :, None] + phase[:, :, None, :])
    return jnp.einsum("bcs,bcts->btc", amplitude, waves)

  a = at(jnp.arange(LENGTH_A, dtype=jnp.float32))
  b = at(jnp.arange(LENGTH_B, dtype=jnp.float32) / RATE_B)
  observed_b = b[..., :CHANNELS] + NOISE * jax.random.normal(noise_b, b[..., :CHANNELS].shape)
  return a + NOISE * jax.random.normal(noise_a, a.shape), observed_b, b[..., CHANNELS]


class Aligner(nn.Module):
  """Per-sequence token MLPs, one cross-attention head (B queries A), a linear read-out of ``u``."""

  @nn.compact
  def __call__(self, a: jax.Array, b: jax.Array, sow_weights: bool = False) -> jax.Array:
    tokens_a = nn.Dense(WIDTH)(nn.gelu(nn.Dense(WIDTH)(a)))
    tokens_b = nn.Dense(WIDTH)(nn.gelu(nn.Dense(WIDTH)(b)))
    valid_a = jnp.ones(a.shape[:2], bool)
    attended = CrossAttention(num_heads=1, name="cross")(tokens_b, tokens_a, valid_a, sow_weights=sow_weights)
    return nn.Dense(1)(attended)[..., 0]


def test_cross_attention_recovers_the_time_mapping_between_rates():
  model, optimizer, steps = Aligner(), optax.adam(1e-2), 300
  a, b, _ = sample(jax.random.key(0), 2)
  params = jax.jit(model.init)(jax.random.key(0), a, b)

  def loss(params, key):
    a, b, u = sample(key, 32)
    return jnp.mean((model.apply(params, a, b) - u) ** 2)

  @jax.jit
  def train(params, key):
    def step(carry, key):
      params, state = carry
      value, grads = jax.value_and_grad(loss)(params, key)
      updates, state = optimizer.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), value

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))
    return params, losses

  @jax.jit
  def attended_positions(params, key):
    a, b, _ = sample(key, 64)
    _, state = model.apply(params, a, b, sow_weights=True, mutable=["intermediates"])
    weights = state["intermediates"]["cross"]["attention"]["attention_weights"][0]  # [B, heads, 40, 16]
    return jnp.argmax(weights[:, 0], axis=-1)

  trained, losses = train(params, jax.random.key(1))
  assert float(losses[-20:].mean()) < 0.2 * float(losses[:20].mean())
  time_in_a = np.arange(LENGTH_B) / RATE_B  # B's sample j is at time j / 2.5, A's sample i at time i

  def agreement(params):
    """Fractions of B's positions attending most to the A sample nearest in time, and to one within 1."""
    argmax = np.asarray(attended_positions(params, jax.random.key(2)))
    return np.mean(argmax == np.round(time_in_a)), np.mean(np.abs(argmax - time_in_a) <= 1)

  before, after = agreement(params), agreement(trained)
  assert before[1] < 0.5, before
  assert after[0] >= 0.7 and after[1] >= 0.9, after
