"""Layer 3: tasks (sources and kinds), preparation, batching and augmentation. Knows no distiller, no training loop and no teacher stage."""
