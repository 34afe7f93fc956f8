"""Layer 4: the one training loop, its callbacks and state, checkpoints, the runtime and the trackers."""
