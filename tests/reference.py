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


def jsd_probs64(q, p, beta):
    """The generalized JSD of two probability vectors (last dim), as :func:`jsd64`, unscaled."""
    q, p = q.double(), p.double()
    log_q, log_p = torch.log(q), torch.log(p)
    if beta == 0:
        return _sum_a_log_ratio(p, log_p, log_q)
    if beta == 1:
        return _sum_a_log_ratio(q, log_q, log_p)
    m = beta * p + (1 - beta) * q
    log_m = torch.log(torch.where(m > 0, m, torch.ones_like(m)))
    return beta * _sum_a_log_ratio(p, log_p, log_m) + (1 - beta) * _sum_a_log_ratio(
        q, log_q, log_m
    )


def bucket_probs64(probs, ids):
    """(k+1)-bucket probabilities of ``probs`` (..., V): the entries at ``ids`` (..., k),
    then the summed probability of every other token."""
    top = probs.gather(-1, ids)
    outside = torch.ones_like(probs, dtype=torch.bool).scatter(-1, ids, False)
    rest = torch.where(outside, probs, torch.zeros_like(probs)).sum(-1, keepdim=True)
    return torch.cat([top, rest], dim=-1)


def topk_teacher64(teacher_logits, k, temperature=1.0):
    """``(ids, log_probs, tail_log_mass)`` of the k most probable tokens, by a float64 sort of
    the softmax and a plain sum of the probabilities outside them."""
    p = softmax64(teacher_logits, temperature)
    ids = p.argsort(dim=-1, descending=True)[..., :k]
    buckets = bucket_probs64(p, ids)
    return ids, buckets[..., :-1].log(), buckets[..., -1].log()


def topk_jsd64(student_logits, teacher, beta, temperature=1.0):
    """Per-token divergence of the (k+1)-bucket distributions, both built explicitly:
    the student's from its float64 softmax, the teacher's ``(ids, log_probs, tail_log_mass)``
    exponentiated as given. Scaled by temperature**2 like :func:`jsd64`."""
    ids, log_probs, tail_log_mass = teacher
    q_buckets = bucket_probs64(softmax64(student_logits, temperature), ids)
    p_buckets = torch.cat([log_probs, tail_log_mass.unsqueeze(-1)], -1).double().exp()
    return jsd_probs64(q_buckets, p_buckets, beta) * temperature**2
