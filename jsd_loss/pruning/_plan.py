"""Pruning methods, the student shape they aim at, and how a size target picks that shape."""

from dataclasses import asdict, dataclass
from typing import Optional

from jsd_loss.pruning._surgery import count_parameters, pruned_config

# method -> (prunes depth, prunes width)
METHODS = {
    "width": (False, True),
    "depth-bi": (True, False),
    "depth-angular": (True, False),
    "even": (True, False),
    "depth-bi+width": (True, True),
    "depth-angular+width": (True, True),
}
_SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}
# intermediate sizes are rounded to this multiple (friendlier matmul shapes)
INTERMEDIATE_MULTIPLE = 8


def parse_size(text: str) -> int:
    """``"90M"`` -> 90_000_000; plain integers and K/M/B suffixes (case-insensitive)."""
    t = str(text).strip().upper()
    unit = t[-1] if t and t[-1] in "KMB" else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/B suffix") from None
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return int(round(value * _SIZE_UNITS[unit]))


@dataclass
class PruningPlan:
    """What to prune and to which shape. ``None`` shape fields keep the teacher's value,
    except the one a ``target_params`` solves for."""

    method: str = "width"
    target_params: Optional[int] = None
    num_layers: Optional[int] = None
    intermediate_size: Optional[int] = None
    num_heads: Optional[int] = None
    hidden_size: Optional[int] = None
    aggregation: str = "l2"
    iterations: int = 1
    refit_mlp: bool = False
    calibration_rows: int = 512
    calibration_max_seq_len: int = 512
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class StudentShape:
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    hidden_size: int

    def hf_config(self, teacher_config: dict) -> dict:
        return pruned_config(
            teacher_config, num_hidden_layers=self.num_layers, intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            hidden_size=self.hidden_size,
        )


def solve_shape(plan: PruningPlan, teacher_config: dict) -> StudentShape:
    """The student shape of ``plan``: given fields, teacher defaults, and at most one field
    solved from ``target_params`` (intermediate size for width methods, else the depth).

    Raises:
        ValueError: unknown method, a shape field the method does not prune, a shape the
            architecture cannot hold, or an unreachable size target.
    """
    if plan.method not in METHODS:
        raise ValueError(f"unknown pruning method {plan.method!r}; choose from {sorted(METHODS)}")
    depth, width = METHODS[plan.method]
    t = teacher_config
    t_layers, t_ffn = int(t["num_hidden_layers"]), int(t["intermediate_size"])
    t_heads, t_kv, t_hidden = int(t["num_attention_heads"]), int(t["num_key_value_heads"]), int(t["hidden_size"])
    if not depth and plan.num_layers not in (None, t_layers):
        raise ValueError(f"method {plan.method!r} keeps every layer; drop --num-layers or pick a depth method")
    width_fields = {"intermediate_size": plan.intermediate_size, "num_heads": plan.num_heads,
                    "hidden_size": plan.hidden_size}
    given_width = [k for k, v in width_fields.items() if v is not None]
    if not width and given_width:
        raise ValueError(f"method {plan.method!r} does not prune width; {given_width} need a width method")
    shape = StudentShape(
        num_layers=plan.num_layers or t_layers, intermediate_size=plan.intermediate_size or t_ffn,
        num_heads=plan.num_heads or t_heads, num_kv_heads=t_kv, hidden_size=plan.hidden_size or t_hidden,
    )
    _check_shape(shape, t_layers, t_ffn, t_heads, t_kv, t_hidden)  # what is given, before solving
    if plan.target_params is not None:
        if width and plan.intermediate_size is None:
            if depth and plan.num_layers is None:
                raise ValueError(f"method {plan.method!r} with a size target needs --num-layers "
                                 "(the MLP width is then solved for the target)")
            shape.intermediate_size = _solve(plan.target_params, teacher_config, shape, "intermediate_size",
                                             1, t_ffn, INTERMEDIATE_MULTIPLE, plan.method)
        elif depth and plan.num_layers is None:
            shape.num_layers = _solve(plan.target_params, teacher_config, shape, "num_layers",
                                      1, t_layers, 1, plan.method)
        else:
            raise ValueError("--target-params has nothing to solve for: every pruned dimension is given")
    elif depth and plan.num_layers is None:
        raise ValueError(f"method {plan.method!r} needs --num-layers or --target-params (it would keep every layer)")
    _check_shape(shape, t_layers, t_ffn, t_heads, t_kv, t_hidden)
    return shape


def _solve(target, teacher_config, shape, field, lo, hi, multiple, method) -> int:
    def params(value):
        return count_parameters(StudentShape(**{**asdict(shape), field: value}).hf_config(teacher_config))

    smallest, largest = params(lo), params(hi)
    if not smallest <= target <= largest:
        raise ValueError(
            f"--target-params {target:,} is unreachable with method {method!r} and this shape: "
            f"{field} from {lo} to {hi} gives {smallest:,} to {largest:,} parameters"
        )
    per_unit = params(lo + 1) - smallest  # parameters are affine in either field
    value = lo + (target - smallest) / per_unit
    value = int(round(value / multiple) * multiple) if multiple > 1 else int(round(value))
    return min(max(value, lo), hi)


def _check_shape(s: StudentShape, t_layers, t_ffn, t_heads, t_kv, t_hidden) -> None:
    checks = [
        (1 <= s.num_layers <= t_layers, f"num_layers must be in [1, {t_layers}], got {s.num_layers}"),
        (1 <= s.intermediate_size <= t_ffn,
         f"intermediate_size must be in [1, {t_ffn}], got {s.intermediate_size}"),
        (1 <= s.hidden_size <= t_hidden, f"hidden_size must be in [1, {t_hidden}], got {s.hidden_size}"),
        (s.num_heads <= t_heads and s.num_heads % t_kv == 0 and s.num_heads > 0,
         f"num_heads must be a positive multiple of the {t_kv} KV heads and at most {t_heads} "
         f"(grouped-query attention keeps the same number of query heads per KV head), got {s.num_heads}"),
        (s.hidden_size % s.num_heads == 0,
         f"hidden_size {s.hidden_size} must be divisible by num_heads {s.num_heads} (torchtune's attention)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
