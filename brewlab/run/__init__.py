"""Layer 8, the top: cross-group validation, the pipeline that orders a run's stages and writes its directory, and the Hydra job around it."""
