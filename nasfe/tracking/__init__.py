"""Experiment tracking at the edge: W&B as an engine callback (``wandb_logger``), rank 0 only,
offline when W&B is unreachable, never fatal to a run."""
