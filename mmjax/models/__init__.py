"""Model families built from encoders, fusion and losses; each honours `base.Model`."""

from mmjax.models import contrastive
from mmjax.models.base import Batch, LossFn, Model, Objective, Variables
from mmjax.models.dual_encoder import DualEncoder

# Model families by the name used in `config.model.name`, with the schema of their config section.
FAMILIES = {"contrastive": (contrastive.ContrastiveModel, contrastive.CONFIG_SCHEMA)}

__all__ = ["Batch", "DualEncoder", "FAMILIES", "LossFn", "Model", "Objective", "Variables"]
