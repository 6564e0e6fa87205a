"""Training, evaluation, checkpoints and multi-process helpers."""
