import torch

from jsd_loss.metrics import response_nll
from tests.jsd_loss.pruning._tiny import tiny_teacher, tune_model


def test_response_nll_equals_transformers_log_softmax_on_scored_tokens():
    config, state, hf = tiny_teacher()
    samples = [([1, 2, 3, 4, 5, 6], [-100, -100, 3, 4, 5, 6]), ([7, 8, 9], [-100, 8, 9]),
               ([10, 11, 12, 13], [-100, -100, -100, 13]), ([14, 15], [-100, -100])]
    total, count = response_nll(tune_model(config, state), samples, batch_size=3)
    expected, expected_count = 0.0, 0
    with torch.no_grad():
        for tokens, labels in samples:  # one at a time, full logits, float64
            logp = torch.log_softmax(hf.double()(torch.tensor([tokens])).logits[0], -1)
            for i in range(len(tokens) - 1):
                if labels[i + 1] != -100:
                    expected -= float(logp[i, labels[i + 1]])
                    expected_count += 1
    assert count == expected_count == 4 + 2 + 1 + 0
    assert abs(total - expected) < 1e-4 * abs(expected)
