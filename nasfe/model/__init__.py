"""The NASFE network: operators, fusion cells, trellis, encoders, CN, decoder, registry."""

from nasfe.model.nasfe import NASFE, NASFEOutput, encoder_task_loss
from nasfe.model.ops import OPS
from nasfe.model.registry import build_model, create_model, list_models, register_fusion, register_model

__all__ = [
    "NASFE",
    "NASFEOutput",
    "OPS",
    "build_model",
    "create_model",
    "encoder_task_loss",
    "list_models",
    "register_fusion",
    "register_model",
]
