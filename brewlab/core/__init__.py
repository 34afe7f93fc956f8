"""Layer 0, imported by every other layer and importing none: errors, registries, atomic files, the cache, the run-directory layout, torchrun helpers, packaged models and data, the hub probe."""
