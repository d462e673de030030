"""Model families built from encoders, fusion and losses; each honours `base.Model`."""

from mmjax.models import adversarial_alignment, classifier, contrastive, cycle, gan, mmae, mmvae, mopoe, mvae
from mmjax.models.base import Batch, Family, LossFn, Model, Objective, Variables
from mmjax.models.dual_encoder import DualEncoder

# Model families by the name used in `config.model.name`.
FAMILIES: dict[str, Family] = {
    "classifier": classifier.FAMILY, "contrastive": contrastive.FAMILY,
    "mmae": mmae.FAMILY, "mvae": mvae.FAMILY, "mmvae": mmvae.FAMILY, "mopoe": mopoe.FAMILY,
    "gan": gan.FAMILY, "cycle": cycle.FAMILY, "adversarial_alignment": adversarial_alignment.FAMILY,
}

__all__ = ["Batch", "DualEncoder", "FAMILIES", "Family", "LossFn", "Model", "Objective", "Variables"]
