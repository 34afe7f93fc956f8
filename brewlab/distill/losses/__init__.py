"""Distillation losses as pure tensor functions, looked up by name from registries.

`LOGIT_LOSSES` (logit.py) compare student and teacher output logits at a temperature;
`MATCH_LOSSES` (match.py) compare intermediate features; `TEACHER_COMBINERS` (combine.py) merge
several teachers' logits; `probability_shift` (shift.py) fixes a teacher's wrong top class.
Teacher inputs are always detached, so no gradient reaches the teacher; masks follow masking.py.
Importing the package registers every loss.
"""

from brewlab.distill.losses.combine import TEACHER_COMBINERS, mean_logits, mean_probs
from brewlab.distill.losses.logit import LOGIT_LOSSES, kd_ce
from brewlab.distill.losses.match import MATCH_LOSSES, MatchProps, hidden_mse
from brewlab.distill.losses.shift import probability_shift

__all__ = [
    "LOGIT_LOSSES",
    "MATCH_LOSSES",
    "TEACHER_COMBINERS",
    "MatchProps",
    "hidden_mse",
    "kd_ce",
    "mean_logits",
    "mean_probs",
    "probability_shift",
]
