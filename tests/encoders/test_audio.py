"""Log-mel front end against an independent NumPy/SciPy reference and known facts; audio encoders."""

import functools
import logging
import math

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from mmjax.encoders import LogMelCNN, WaveformConvEncoder, log_mel_spectrogram, mel_filterbank
from mmjax.encoders import audio
from mmjax.encoders.base import Encoded

SAMPLE_RATE = 8000
NUM_SAMPLES = 2000  # 0.25 s
WAVEFORMS = np.random.default_rng(0).uniform(-0.5, 0.5, (3, NUM_SAMPLES)).astype(np.float32)


# --- Reference: written from the definitions, sharing no code with mmjax.encoders.audio -------------


def reference_mel_edges_hz(f_min, f_max, n_mels, mel_scale):
  """``n_mels + 2`` filter edges equally spaced in mel, in Hz."""
  if mel_scale == "htk":
    # mel = 2595 log10(1 + f / 700), written with the natural log.
    to_mel = lambda f: 2595.0 / math.log(10.0) * math.log1p(f / 700.0)
    to_hz = lambda m: 700.0 * math.expm1(m * math.log(10.0) / 2595.0)
  else:
    # Slaney: 200/3 Hz per mel up to 1 kHz (= mel 15), then 27 mel per factor 6.4.
    to_mel = lambda f: 3.0 * f / 200.0 if f < 1000.0 else 15.0 + 27.0 * math.log(f / 1000.0, 6.4)
    to_hz = lambda m: 200.0 * m / 3.0 if m < 15.0 else 1000.0 * 6.4 ** ((m - 15.0) / 27.0)
  low, high = to_mel(f_min), to_mel(f_max)
  return [to_hz(low + (high - low) * i / (n_mels + 1)) for i in range(n_mels + 2)]


def reference_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, mel_norm):
  edges = reference_mel_edges_hz(f_min, f_max, n_mels, mel_scale)
  weights = np.zeros((n_fft // 2 + 1, n_mels))
  for m in range(n_mels):
    left, centre, right = edges[m], edges[m + 1], edges[m + 2]
    for k in range(n_fft // 2 + 1):
      f = k * sample_rate / n_fft
      if left <= f <= centre:
        weights[k, m] = (f - left) / (centre - left)
      elif centre < f <= right:
        weights[k, m] = (right - f) / (right - centre)
    if mel_norm == "slaney":
      weights[:, m] /= (right - left) / 2.0  # unit area: a triangle of base (right - left) and height 2 / base
  return weights


def reference_log_mel(waveform, sample_rate, n_fft, hop_length, n_mels, f_min=0.0, f_max=None, window="hann",
                      mel_scale="htk", mel_norm=None, center=True, pad_mode="reflect", log_offset=1e-6):
  waveform = np.asarray(waveform, np.float64)
  if center:
    waveform = np.pad(waveform, n_fft // 2, mode=pad_mode)
  frames = np.lib.stride_tricks.sliding_window_view(waveform, n_fft)[::hop_length]
  power = np.abs(np.fft.rfft(frames * scipy.signal.get_window(window, n_fft, fftbins=True), axis=-1)) ** 2
  f_max = sample_rate / 2 if f_max is None else f_max
  filterbank = reference_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, mel_norm)
  return np.log(power @ filterbank + log_offset)


FRONT_ENDS = [
    dict(n_fft=256, hop_length=80, n_mels=40),  # torchaudio's defaults
    dict(n_fft=256, hop_length=80, n_mels=40, mel_scale="slaney", mel_norm="slaney", pad_mode="constant"),  # librosa's
    dict(n_fft=200, hop_length=100, n_mels=24, mel_scale="htk", mel_norm="slaney", window="hamming", center=False),
    dict(n_fft=256, hop_length=128, n_mels=32, mel_scale="slaney", f_min=100.0, f_max=3500.0),
]


# --- Front end -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mel_scale", ["htk", "slaney"])
@pytest.mark.parametrize("mel_norm", [None, "slaney"])
def test_filterbank_matches_the_triangle_formulas(mel_scale, mel_norm):
  for sample_rate, n_fft, n_mels, f_min, f_max in [(8000, 256, 40, 0.0, 4000.0), (16000, 400, 64, 50.0, 7600.0)]:
    filterbank = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, mel_norm)
    expected = reference_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, mel_norm)
    assert filterbank.shape == (n_fft // 2 + 1, n_mels) and filterbank.dtype == np.float64
    # Edges reached through other formulas differ in the last bits; 0 vs 4e-15 at a triangle's foot.
    np.testing.assert_allclose(filterbank, expected, rtol=1e-12, atol=1e-12 * expected.max())
    assert np.all(filterbank >= 0.0)
    assert np.all(filterbank.max(axis=0) > 0.0)  # every filter catches a bin at these settings


@pytest.mark.parametrize(
    "mel_scale,mel_norm,entries,total",
    [
        # librosa 0.11.0: librosa.filters.mel(sr=16000, n_fft=400, n_mels=64, htk=False, norm="slaney", dtype=float64)
        ("slaney", "slaney", {(1, 0): 0.01857444056356846, (24, 20): 0.014665335465500121,
                              (63, 40): 0.00707325815886634, (191, 63): 0.0026375267219475485}, 1.5986982261625027),
        # librosa.filters.mel(…, htk=True, norm=None): torchaudio's default scale and norm.
        ("htk", None, {(1, 0): 0.5714053041684966, (22, 20): 0.9985958039323042,
                       (68, 40): 0.9154159678607022, (192, 63): 0.9672423820389991}, 195.3525907191755),
    ],
)
def test_filterbank_matches_values_computed_by_librosa(mel_scale, mel_norm, entries, total):
  filterbank = mel_filterbank(16000, 400, 64, mel_scale=mel_scale, mel_norm=mel_norm)  # [bin, mel]
  for index, value in entries.items():
    assert filterbank[index] == pytest.approx(value, rel=1e-12)
  assert filterbank.sum() == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("settings", FRONT_ENDS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_log_mel_matches_the_numpy_reference_in_float64(settings, jit_variant):
  waveforms = np.random.default_rng(1).uniform(-1, 1, (2, 3, 1001))  # leading dims, length not a multiple of hop
  with jax.enable_x64(True):
    log_mel = jax.jit(functools.partial(log_mel_spectrogram, sample_rate=SAMPLE_RATE, **settings))(
        jnp.asarray(waveforms)
    )
    assert log_mel.dtype == jnp.float64
  expected = np.stack([[reference_log_mel(w, SAMPLE_RATE, **settings) for w in row] for row in waveforms])
  assert log_mel.shape == expected.shape
  np.testing.assert_allclose(log_mel, expected, rtol=1e-10, atol=1e-10)


def test_log_mel_in_float32_is_within_rounding_error(jit_variant):
  # Float32 rounds at 6e-8 relative; an n-point FFT accumulates about log2(n) = 8 roundings per output
  # and each filter sums < 130 bins of one sign, so a mel energy is off by ~1e-5 of the energy it
  # collects, at worst. White noise puts a comparable share of the frame's power into every filter,
  # so the log is off by ~1e-5 absolute: 1e-4 leaves a margin of 10 (measured: 1.1e-6).
  settings = FRONT_ENDS[0]
  log_mel = jax.jit(functools.partial(log_mel_spectrogram, sample_rate=SAMPLE_RATE, **settings))(WAVEFORMS)
  assert log_mel.dtype == jnp.float32
  np.testing.assert_allclose(log_mel, np.stack([reference_log_mel(w, SAMPLE_RATE, **settings) for w in WAVEFORMS]),
                             rtol=0, atol=1e-4)
  # A pure tone leaves most filters nearly empty, where the log amplifies any rounding: there the
  # error is bounded relative to the frame's total mel energy instead (measured: 1.0e-7 of it).
  tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(NUM_SAMPLES) / SAMPLE_RATE)
  log_mel = log_mel_spectrogram(jnp.asarray(tone, jnp.float32), SAMPLE_RATE, **settings)
  energies = np.exp(np.asarray(log_mel, np.float64))
  expected = np.exp(reference_log_mel(tone, SAMPLE_RATE, **settings))
  assert np.max(np.abs(energies - expected) / expected.sum(axis=-1, keepdims=True)) < 1e-5


@pytest.mark.parametrize("mel_scale,mel_norm", [("htk", None), ("slaney", None), ("slaney", "slaney")])
def test_a_pure_tone_peaks_in_the_mel_bin_of_its_frequency(mel_scale, mel_norm):
  n_mels = 24
  centres = reference_mel_edges_hz(0.0, SAMPLE_RATE / 2, n_mels, mel_scale)[1:-1]
  time = np.arange(NUM_SAMPLES) / SAMPLE_RATE
  for mel_bin in (6, 12, 20):  # tones from a few hundred Hz to 3 kHz, each at a filter's peak
    tone = 0.5 * np.sin(2 * np.pi * centres[mel_bin] * time)
    log_mel = log_mel_spectrogram(jnp.asarray(tone, jnp.float32), SAMPLE_RATE, n_fft=512, hop_length=128,
                                  n_mels=n_mels, mel_scale=mel_scale, mel_norm=mel_norm)
    assert int(jnp.argmax(jnp.mean(log_mel, axis=0))) == mel_bin, (mel_bin, centres[mel_bin])


def test_mel_scales_known_values():
  # HTK: 2595 and 700 are rounded constants, so 1000 Hz is 999.985 mel rather than exactly 1000.
  assert audio._hz_to_mel(1000.0, "htk") == pytest.approx(1000.0, abs=0.02)
  assert audio._hz_to_mel(0.0, "htk") == 0.0
  # Slaney: linear below 1 kHz, 3 mel per 200 Hz (librosa.hz_to_mel(60) == 0.9), 15 mel at 1 kHz,
  # then 27 mel per factor 6.4.
  below = np.linspace(0.0, 1000.0, 41)
  np.testing.assert_allclose(audio._hz_to_mel(below, "slaney"), 3.0 * below / 200.0, rtol=1e-12)
  assert audio._hz_to_mel(60.0, "slaney") == pytest.approx(0.9, rel=1e-12)
  assert audio._hz_to_mel(6400.0, "slaney") == pytest.approx(15.0 + 27.0, rel=1e-12)
  hz = np.geomspace(10.0, 20000.0, 50)
  for scale in audio.MEL_SCALES:
    np.testing.assert_allclose(audio._mel_to_hz(audio._hz_to_mel(hz, scale), scale), hz, rtol=1e-12)


def test_log_mel_gradient_matches_finite_differences(jit_variant):
  settings = dict(sample_rate=SAMPLE_RATE, n_fft=64, hop_length=32, n_mels=8)
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    waveform = jnp.asarray(rng.uniform(-1, 1, 300))
    weights = jnp.asarray(rng.normal(size=(1 + 300 // 32, 8)))
    loss = lambda w: jnp.sum(weights * log_mel_spectrogram(w, **settings))
    gradient = jax.jit(jax.grad(loss))(waveform)
    for _ in range(3):
      direction = jnp.asarray(rng.normal(size=300))
      step = 1e-6
      numeric = (loss(waveform + step * direction) - loss(waveform - step * direction)) / (2 * step)
      np.testing.assert_allclose(jnp.dot(gradient, direction), numeric, rtol=1e-6)


def test_log_mel_under_vmap_equals_the_batched_call():
  log_mel = functools.partial(log_mel_spectrogram, sample_rate=SAMPLE_RATE, n_fft=128, hop_length=64, n_mels=16)
  batched = jax.jit(log_mel)(WAVEFORMS)
  chex.assert_shape(batched, (3, 1 + NUM_SAMPLES // 64, 16))
  np.testing.assert_allclose(jax.jit(jax.vmap(log_mel))(WAVEFORMS), batched, rtol=1e-6)
  np.testing.assert_allclose(log_mel(WAVEFORMS[1]), batched[1], rtol=1e-6)


def test_front_end_errors_and_warnings(caplog):
  with pytest.raises(ValueError, match=r"log_mel_spectrogram: waveform: expected a float array, got int32"):
    log_mel_spectrogram(jnp.zeros(400, jnp.int32), SAMPLE_RATE)
  with pytest.raises(ValueError, match=r"a waveform of 100 samples is too short for n_fft=256 .*at least 129 samples"):
    log_mel_spectrogram(jnp.zeros(100), SAMPLE_RATE, n_fft=256)
  with pytest.raises(ValueError, match=r"at least 256 samples"):
    log_mel_spectrogram(jnp.zeros(200), SAMPLE_RATE, n_fft=256, center=False)
  with pytest.raises(ValueError, match=r"unknown window 'blackman'"):
    log_mel_spectrogram(jnp.zeros(400), SAMPLE_RATE, window="blackman")
  with pytest.raises(ValueError, match=r"unknown mel_scale 'bark'"):
    mel_filterbank(SAMPLE_RATE, 256, 40, mel_scale="bark")
  with pytest.raises(ValueError, match=r"unknown mel_norm 'area'"):
    mel_filterbank(SAMPLE_RATE, 256, 40, mel_norm="area")
  with pytest.raises(ValueError, match=r"f_min < f_max <= sample_rate / 2 = 4000.0, got f_min=0.0, f_max=5000"):
    mel_filterbank(SAMPLE_RATE, 256, 40, f_max=5000.0)
  # The common 16 kHz, n_fft 400, 128-mel setting leaves the lowest HTK filters between two bins.
  with caplog.at_level(logging.WARNING):
    filterbank = mel_filterbank(16000, 400, 128)
  assert "catch no FFT bin" in caplog.text
  assert np.all(filterbank[:, 0] == 0.0)


# --- Encoders --------------------------------------------------------------------------------------


def _encoders():
  yield "logmel", LogMelCNN(6, SAMPLE_RATE, n_fft=128, hop_length=64, n_mels=16, channels=(8, 8), strides=(2, 2))
  yield "waveform", WaveformConvEncoder(6, channels=(8, 8, 16), strides=(8, 4, 2), first_kernel_size=16, kernel_size=5)


ENCODERS = dict(_encoders())


def _num_steps(name, num_samples):
  if name == "logmel":
    frames = 1 + num_samples // 64  # centred frames
    return math.ceil(math.ceil(frames / 2) / 2)
  return math.ceil(math.ceil(math.ceil(num_samples / 8) / 4) / 2)


@functools.cache
def _variables(name):
  return jax.jit(ENCODERS[name].init)(jax.random.key(0), WAVEFORMS)


@pytest.mark.parametrize("name", ENCODERS)
def test_pooled_and_tokens(name):
  encoder, variables = ENCODERS[name], _variables(name)
  pooled = jax.jit(encoder.apply)(variables, WAVEFORMS)
  encoded = jax.jit(functools.partial(encoder.apply, return_tokens=True))(variables, WAVEFORMS)
  assert isinstance(encoded, Encoded)
  # The mel filterbank is a constant, not a parameter: only the stages and the projection learn.
  assert set(variables["params"]) == {f"stage{i}" for i in range(len(encoder.channels))} | {"projection"}
  steps = _num_steps(name, NUM_SAMPLES)
  chex.assert_shape(
      [pooled, encoded.pooled, encoded.tokens, encoded.valid], [(3, 6), (3, 6), (3, steps, 6), (3, steps)]
  )
  assert pooled.dtype == encoded.tokens.dtype == jnp.float32 and encoded.valid.dtype == jnp.bool_
  assert np.all(encoded.valid) and np.all(np.isfinite(pooled))
  np.testing.assert_allclose(encoded.pooled, pooled, rtol=1e-6)
  # One projection for both: the mean of the tokens is the pooled vector.
  np.testing.assert_allclose(jnp.mean(encoded.tokens, axis=1), pooled, rtol=1e-5, atol=1e-5)
  # Samples are independent of their batch neighbours.
  np.testing.assert_allclose(jax.jit(encoder.apply)(variables, WAVEFORMS[1:2])[0], pooled[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_vmap_over_a_leading_axis_matches_separate_calls(name):
  encoder, variables = ENCODERS[name], _variables(name)
  stacked = jnp.stack([WAVEFORMS, -WAVEFORMS[::-1]])
  batched = jax.jit(jax.vmap(lambda w: encoder.apply(variables, w, return_tokens=True)))(stacked)
  separate = jax.jit(functools.partial(encoder.apply, return_tokens=True))(variables, stacked[1])
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], batched), separate, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_parameter(name):
  encoder, variables = ENCODERS[name], _variables(name)
  grads = jax.jit(jax.grad(lambda v: jnp.sum(encoder.apply(v, WAVEFORMS, return_tokens=True).tokens ** 2)))(variables)
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(leaf != 0), jax.tree_util.keystr(path)


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in it, each after those it contains."""
  for eqn in jaxpr.eqns:
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(inner)
    yield eqn


@pytest.mark.parametrize("name", ENCODERS)
def test_remat_changes_memory_not_results(name):
  plain, variables = ENCODERS[name], _variables(name)
  remat = plain.clone(remat=True)

  def loss(module, v):
    return jnp.sum(module.apply(v, WAVEFORMS) ** 2)

  chex.assert_trees_all_close(
      jax.jit(jax.grad(functools.partial(loss, remat)))(variables),
      jax.jit(jax.grad(functools.partial(loss, plain)))(variables),
      rtol=1e-5, atol=1e-6,
  )
  def rematerialises(module):
    jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, module)))(variables).jaxpr
    names = {eqn.primitive.name for eqn in _equations(jaxpr)}
    return bool(names & {"remat2", "checkpoint", "remat"})

  assert rematerialises(remat) and not rematerialises(plain)


@pytest.mark.parametrize("name", ENCODERS)
def test_bfloat16_computation_keeps_float32_parameters(name):
  encoder = ENCODERS[name].clone(dtype=jnp.bfloat16)
  variables = _variables(name)
  abstract = jax.eval_shape(encoder.init, jax.random.key(0), WAVEFORMS)
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  encoded = jax.jit(functools.partial(encoder.apply, return_tokens=True))(variables, WAVEFORMS)
  assert encoded.pooled.dtype == encoded.tokens.dtype == jnp.bfloat16
  reference = jax.jit(ENCODERS[name].apply)(variables, WAVEFORMS)
  np.testing.assert_allclose(encoded.pooled.astype(jnp.float32), reference, atol=0.02, rtol=0.02)


def test_log_mel_front_end_stays_float32_in_a_bfloat16_encoder():
  encoder = ENCODERS["logmel"].clone(dtype=jnp.bfloat16)
  equations = list(_equations(jax.make_jaxpr(encoder.apply)(_variables("logmel"), WAVEFORMS).jaxpr))
  names = [eqn.primitive.name for eqn in equations]
  front_end = equations[: names.index("conv_general_dilated")]
  assert {"fft", "dot_general", "log"} <= {eqn.primitive.name for eqn in front_end}
  # Before the first convolution, bfloat16 appears only where its input and kernel are cast to it.
  for eqn in front_end:
    if any(var.aval.dtype == jnp.bfloat16 for var in eqn.outvars):
      assert eqn.primitive.name == "convert_element_type", eqn


def test_utterance_normalisation_removes_the_gain():
  encoder, variables = ENCODERS["logmel"], _variables("logmel")
  apply = jax.jit(encoder.apply)
  np.testing.assert_allclose(apply(variables, 0.25 * WAVEFORMS), apply(variables, WAVEFORMS), atol=1e-3)
  raw = encoder.clone(normalization="none")
  raw_apply = jax.jit(raw.apply)
  assert np.max(np.abs(raw_apply(variables, 0.25 * WAVEFORMS) - raw_apply(variables, WAVEFORMS))) > 0.1


def test_fixed_normalisation_with_the_utterance_statistics_equals_utterance_normalisation():
  log_mel = reference_log_mel(WAVEFORMS[0], SAMPLE_RATE, n_fft=128, hop_length=64, n_mels=16)
  encoder, variables = ENCODERS["logmel"], _variables("logmel")
  fixed = encoder.clone(normalization="fixed", mean=float(log_mel.mean()), std=float(log_mel.std()))
  np.testing.assert_allclose(
      jax.jit(fixed.apply)(variables, WAVEFORMS[:1]), jax.jit(encoder.apply)(variables, WAVEFORMS[:1]), atol=1e-4
  )


@pytest.mark.parametrize("name", ENCODERS)
def test_bad_inputs_raise_errors_naming_the_modality(name):
  encoder = ENCODERS[name].clone(modality="speech")
  kind = type(encoder).__name__
  with pytest.raises(ValueError, match=rf"{kind}: modality 'speech': expected shape \(\?, \?\), got \(3, 2000, 1\)"):
    encoder.init(jax.random.key(0), WAVEFORMS[..., None])
  with pytest.raises(ValueError, match=rf"{kind}: modality 'speech': expected a float array, got int32"):
    encoder.init(jax.random.key(0), jnp.zeros((3, NUM_SAMPLES), jnp.int32))
  with pytest.raises(ValueError, match=rf"{kind}: channels \(8, 8\) and strides \(2,\) must have the same length"):
    encoder.clone(channels=(8, 8), strides=(2,)).init(jax.random.key(0), WAVEFORMS)


def test_log_mel_cnn_configuration_errors():
  encoder = ENCODERS["logmel"]
  with pytest.raises(ValueError, match=r"LogMelCNN: modality 'audio': a waveform of 40 samples is too short for n_fft"):
    encoder.init(jax.random.key(0), WAVEFORMS[:, :40])
  with pytest.raises(ValueError, match=r"LogMelCNN: unknown normalization 'global'; valid choices"):
    encoder.clone(normalization="global").init(jax.random.key(0), WAVEFORMS)
  with pytest.raises(ValueError, match=r"LogMelCNN: fixed normalization needs std > 0, got 0.0"):
    encoder.clone(normalization="fixed", std=0.0).init(jax.random.key(0), WAVEFORMS)
