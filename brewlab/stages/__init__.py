"""Layer 7: where teachers come from (loaded, cached or trained), students, augmented batches, and the `Stage` every training step of a run is."""
