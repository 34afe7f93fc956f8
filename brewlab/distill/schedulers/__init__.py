"""Schedules used while distilling, each picked by name from the `scheduler` config section:
the softmax temperature (temperatures.py), the loss-weight multipliers (weights.py) and the
learning-rate schedule (lr.py); build.py validates the section into a `Schedules`.
Pure code: torch (and transformers' LR helpers), never models or tasks. Importing the
package registers every schedule.
"""

from brewlab.distill.schedulers.build import Schedules, build_schedules
from brewlab.distill.schedulers.lr import LR_SCHEDULES
from brewlab.distill.schedulers.temperatures import TEMPERATURES
from brewlab.distill.schedulers.weights import WEIGHT_SCHEDULES

__all__ = ["LR_SCHEDULES", "TEMPERATURES", "WEIGHT_SCHEDULES", "Schedules", "build_schedules"]
