"""Independent float64 references written from the definitions, for tests only."""

import torch


def log_softmax64(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    z = logits.double() / temperature
    z = z - z.max(dim=-1, keepdim=True).values
    return z - torch.log(torch.exp(z).sum(dim=-1, keepdim=True))


def softmax64(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.exp(log_softmax64(logits, temperature))


def _sum_a_log_ratio(a, log_a, log_b):
    """sum_v a_v * (log a_v - log b_v), skipping a_v == 0 (0 log 0 = 0)."""
    pos = a > 0
    diff = torch.where(pos, log_a, torch.zeros_like(log_a)) - torch.where(
        pos, log_b, torch.zeros_like(log_b)
    )
    return torch.where(pos, a * diff, torch.zeros_like(a)).sum(-1)


def jsd64(student_logits, teacher_logits, beta, temperature=1.0):
    """Per-token generalized JSD with M = beta*P_t + (1-beta)*P_s, mixed in probability space.

    beta=0 is KL(P_t||P_s), beta=1 is KL(P_s||P_t); scaled by temperature**2.
    """
    log_q = log_softmax64(student_logits, temperature)
    log_p = log_softmax64(teacher_logits, temperature)
    q, p = torch.exp(log_q), torch.exp(log_p)
    if beta == 0:
        out = _sum_a_log_ratio(p, log_p, log_q)
    elif beta == 1:
        out = _sum_a_log_ratio(q, log_q, log_p)
    else:
        m = beta * p + (1 - beta) * q
        log_m = torch.log(torch.where(m > 0, m, torch.ones_like(m)))
        out = beta * _sum_a_log_ratio(p, log_p, log_m) + (1 - beta) * _sum_a_log_ratio(
            q, log_q, log_m
        )
    return out * temperature**2
