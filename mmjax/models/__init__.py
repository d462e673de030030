"""Model families built from encoders, fusion and losses; each honours `base.Model`."""

from mmjax.models import classifier, contrastive, mmvae, mopoe, mvae
from mmjax.models.base import Batch, Family, LossFn, Model, Objective, Variables
from mmjax.models.dual_encoder import DualEncoder

# Model families by the name used in `config.model.name`.
FAMILIES: dict[str, Family] = {
    "classifier": classifier.FAMILY, "contrastive": contrastive.FAMILY,
    "mvae": mvae.FAMILY, "mmvae": mmvae.FAMILY, "mopoe": mopoe.FAMILY,
}

__all__ = ["Batch", "DualEncoder", "FAMILIES", "Family", "LossFn", "Model", "Objective", "Variables"]
