from jsd_loss.metrics._nll import final_hidden_states, response_nll
from jsd_loss.metrics._stats import paired_bootstrap
from jsd_loss.metrics._text import exact_match, normalize_answer, rouge, token_f1
from jsd_loss.metrics._training import (
    convergence_step,
    curve_summary,
    moving_average,
    relative_difference,
    tail_variance,
)

__all__ = [
    "convergence_step",
    "curve_summary",
    "exact_match",
    "final_hidden_states",
    "moving_average",
    "normalize_answer",
    "paired_bootstrap",
    "relative_difference",
    "response_nll",
    "rouge",
    "tail_variance",
    "token_f1",
]
