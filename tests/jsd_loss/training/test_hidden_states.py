import torch
from torch import nn

from jsd_loss.models.smollm2 import smollm2
from jsd_loss.training import hidden_state_output, output_weight
from tests.conftest import TINY


def test_hidden_states_times_output_weight_are_the_logits():
    torch.manual_seed(0)
    model = smollm2(**TINY).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 7))
    logits = model(tokens)
    with hidden_state_output(model):
        hidden = model(tokens)
    assert hidden.shape == (2, 7, TINY["embed_dim"])
    torch.testing.assert_close(hidden @ output_weight(model).t(), logits)
    assert output_weight(model) is model.tok_embeddings.weight  # tied
    torch.testing.assert_close(model(tokens), logits)  # restored


def test_untied_output_and_chunked_logits_are_restored():
    torch.manual_seed(0)
    model = smollm2(**TINY).eval()
    model.output = nn.Linear(TINY["embed_dim"], TINY["vocab_size"], bias=False)
    model.set_num_output_chunks(4)
    tokens = torch.randint(0, TINY["vocab_size"], (1, 8))
    with hidden_state_output(model):
        hidden = model(tokens)
    assert output_weight(model) is model.output.weight
    chunks = model(tokens)
    assert isinstance(chunks, list) and len(chunks) == 4
    torch.testing.assert_close(torch.cat(chunks, 1), hidden @ model.output.weight.t())
