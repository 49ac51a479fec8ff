"""Training: the Trainer (`trainer`), the loss, the learning-rate schedule, the weights' moving
average and data-parallel CPU processes."""
