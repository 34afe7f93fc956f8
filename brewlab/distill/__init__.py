"""Layer 5: pure tensor losses and schedulers, the objective, the distiller registry, teacher ensembles and the one teacher-output provider."""
