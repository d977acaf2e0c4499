"""Training engine: the shared loop (DDP, AMP, accumulation, exact resume) and the two
stages built on it, pre-training (:mod:`rap.training.pretrain`) and fine-tuning
(:mod:`rap.training.finetune`). Import the stage modules directly; they pull in the model and
data packages."""

from rap.training.checkpoint import load_model_weights
from rap.training.loop import NonFiniteLossError

__all__ = ["NonFiniteLossError", "load_model_weights"]
