"""Layer 8, the top: cross-group validation and the pipeline that orders a run's stages and writes its directory."""
