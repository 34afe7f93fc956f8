"""brewlab: Hydra-driven knowledge distillation for NLP."""

__version__ = "0.1.0"

# the typed config groups (trainer, logger, teacher stages) exist for Hydra as soon as brewlab is
# imported, so run.py, the scripts and any user's compose() all find them
from brewlab.config import schema as _schema  # noqa: E402,F401
