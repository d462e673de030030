"""MVAE on mm_digits with the caption as a third modality (image + label + caption): the
`mvae_digits` settings, the caption read by a GRU, decoded by the non-autoregressive transformer
and scored by a categorical per token (`configs/vae_digits_base.py` `modality_sections`). Evaluation
adds the caption directions (``coherence/image->caption``, ``coherence/caption->image``, …), judged
by a GRU caption classifier trained on the real captions. ``mmjax train --config
configs/mvae_digits_caption.py --workdir runs/mvae_caption``; the same on any VAE family:
``--config.model.modalities="('image', 'label', 'caption')"``. Measured figures: docs/generative.md."""

from configs import mvae_digits


def get_config():
  config = mvae_digits.get_config()
  config.model.modalities = ("image", "label", "caption")
  return config
