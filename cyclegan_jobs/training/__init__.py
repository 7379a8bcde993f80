"""Training: the networks and losses (the seed's model), the CycleGAN and its train step, the
training data, and the Trainer with its loop's hooks."""
