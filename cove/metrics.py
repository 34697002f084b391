"""``cove.metrics`` is ``cove.eval.metrics``: PCK, warp error and edit fidelity against ground truth."""
from .eval.metrics import *  # noqa: F401,F403
from .eval.metrics import __all__  # noqa: F401
