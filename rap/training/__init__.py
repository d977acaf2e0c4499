"""Training engine: the shared loop (DDP, AMP, accumulation, exact resume), the resume rules
(:mod:`rap.training.resume`) and the two phases built on them, pre-training
(:mod:`rap.training.pretrain`) and fine-tuning (:mod:`rap.training.finetune`). Import the
modules directly; this package imports nothing, so that loading a checkpoint
(:mod:`rap.checkpoint_io`) never pulls in the engine."""
