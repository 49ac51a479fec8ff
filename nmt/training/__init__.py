"""Training: `run_training` (`run`), the Trainer's loop (`trainer`), validation, the loss, the
learning-rate schedule, the weights' moving average and the ranks of data-parallel training."""
