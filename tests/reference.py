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


# --- the divergences beyond the JSD family, from their definitions (probability vectors, last dim)


def alpha_beta_probs64(q, p, alpha, beta):
    """D_AB(p || q) of Cichocki, Cruces and Amari (2011), eq. (4) and its stated special cases."""
    q, p = q.double(), p.double()
    if alpha == 0 and beta == 0:
        return 0.5 * ((torch.log(p) - torch.log(q)) ** 2).sum(-1)
    if beta == 0:
        pa, qa = p**alpha, q**alpha
        return ((pa * torch.log(pa / qa) - pa + qa) / alpha**2).sum(-1)
    if alpha == 0:
        pb, qb = p**beta, q**beta
        return ((qb * torch.log(qb / pb) - qb + pb) / beta**2).sum(-1)
    if alpha + beta == 0:
        ratio = q**alpha / p**alpha
        return ((torch.log(ratio) + 1 / ratio - 1) / alpha**2).sum(-1)
    s = alpha + beta
    terms = p**alpha * q**beta - alpha / s * p**s - beta / s * q**s
    return (-terms / (alpha * beta)).sum(-1)


def total_variation_probs64(q, p):
    return 0.5 * (p.double() - q.double()).abs().sum(-1)


def skew_kl_probs64(q, p, alpha, direction):
    """DistiLLM: KL(p || a p + (1-a) q) forward, KL(q || (1-a) p + a q) reverse."""
    q, p = q.double(), p.double()
    if direction == "forward":
        return _sum_a_log_ratio(p, torch.log(p), torch.log(alpha * p + (1 - alpha) * q))
    return _sum_a_log_ratio(q, torch.log(q), torch.log((1 - alpha) * p + alpha * q))


def adaptive_kl_probs64(q, p, mu):
    """AKL: w KL(p||q) + (1-w) KL(q||p); the head walked token by token in Python, w detached."""
    q, p = q.double(), p.double()
    weights = []
    for q_row, p_row in zip(q.detach().reshape(-1, q.shape[-1]).tolist(), p.detach().reshape(-1, p.shape[-1]).tolist()):
        order = sorted(range(len(p_row)), key=lambda v: -p_row[v])
        head, cum = [], 0.0
        for v in order:
            cum += p_row[v]
            if head and cum > mu:
                break
            head.append(v)
        gaps = [abs(a - b) for a, b in zip(p_row, q_row)]
        weights.append(sum(gaps[v] for v in head) / sum(gaps) if sum(gaps) > 0 else 0.5)
    w = torch.tensor(weights, dtype=torch.float64).reshape(q.shape[:-1])
    log_q, log_p = torch.log(q), torch.log(p)
    return w * _sum_a_log_ratio(p, log_p, log_q) + (1 - w) * _sum_a_log_ratio(q, log_q, log_p)


def divergence_probs64(name, q, p, **params):
    return {
        "alpha_beta": alpha_beta_probs64,
        "total_variation": total_variation_probs64,
        "skew_kl": skew_kl_probs64,
        "adaptive_kl": adaptive_kl_probs64,
        "jsd": lambda q, p, beta: jsd_probs64(q, p, beta),
    }[name](q, p, **params)


def divergence64(name, student_logits, teacher_logits, temperature=1.0, **params):
    """Per-token divergence of the tempered softmaxes, times temperature**2."""
    q, p = softmax64(student_logits, temperature), softmax64(teacher_logits, temperature)
    return divergence_probs64(name, q, p, **params) * temperature**2


def topk_divergence64(name, student_logits, teacher, temperature=1.0, **params):
    """As :func:`topk_jsd64` for any divergence: both (k+1)-bucket distributions built explicitly."""
    ids, log_probs, tail_log_mass = teacher
    q_buckets = bucket_probs64(softmax64(student_logits, temperature), ids)
    p_buckets = torch.cat([log_probs, tail_log_mass.unsqueeze(-1)], -1).double().exp()
    return divergence_probs64(name, q_buckets, p_buckets, **params) * temperature**2
