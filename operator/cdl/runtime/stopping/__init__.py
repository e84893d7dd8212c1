"""Early-stopping rules shared by the local engine's driver, the trial runtime on Determined and
`cdl experiments study` (which replays recorded searches under each rule).

Pure logic over learning curves: numpy and scipy only, nothing from the operator side, so the
same code decides inside a trial container and in the engine. `settings` parses the
`searcher.earlyStopping` object as it travels (camelCase, as in `CDL_EARLY_STOPPING`); `rules`
decides on one trial given the curves of the search's completed trials; `predict` is the
learning-curve model behind predictive stopping.
"""

from cdl.runtime.stopping.curves import Curve, Point
from cdl.runtime.stopping.rules import Decision, Outcome, StoppingRules
from cdl.runtime.stopping.settings import StoppingSettings

__all__ = ["Curve", "Decision", "Outcome", "Point", "StoppingRules", "StoppingSettings"]
