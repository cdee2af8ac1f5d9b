"""Student shapes from methods, explicit sizes and parameter targets."""

import pytest

from jsd_loss.pruning import PruningPlan, count_parameters, parse_size, solve_shape

SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True}


def test_parameter_count_of_smollm2_135m():
    assert count_parameters(SMOLLM2_135M) == 134_515_008  # the published size
    assert count_parameters({**SMOLLM2_135M, "num_hidden_layers": 17}) == 88_493_760


def test_size_parsing():
    assert parse_size("90M") == 90_000_000 and parse_size("88.5m") == 88_500_000
    assert parse_size("1.5B") == 1_500_000_000 and parse_size("1200") == 1200
    for bad in ("ninety", "-5M", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_width_target_solves_the_mlp_width():
    shape = solve_shape(PruningPlan(method="width", target_params=88_493_760), SMOLLM2_135M)
    assert (shape.num_layers, shape.num_heads, shape.hidden_size) == (30, 9, 576)
    assert shape.intermediate_size % 8 == 0
    got = count_parameters(shape.hf_config(SMOLLM2_135M))
    # the nearest multiple of 8: within half a step (4 neurons x 3 matrices x 576 x 30 layers)
    assert abs(got - 88_493_760) <= 4 * 3 * 576 * 30
    smaller = solve_shape(PruningPlan(method="width", target_params=88_493_760, hidden_size=504), SMOLLM2_135M)
    assert smaller.intermediate_size > shape.intermediate_size  # narrower stream buys a wider MLP


def test_depth_target_solves_the_layer_count():
    for method in ("even", "depth-bi", "depth-angular"):
        assert solve_shape(PruningPlan(method=method, target_params=88_493_760), SMOLLM2_135M).num_layers == 17
    shape = solve_shape(PruningPlan(method="depth-angular+width", num_layers=24, target_params=88_493_760),
                        SMOLLM2_135M)
    assert shape.num_layers == 24 and shape.intermediate_size < 1536


@pytest.mark.parametrize("plan, message", [
    (PruningPlan(method="prune-everything", target_params=10**8), "unknown pruning method"),
    (PruningPlan(method="width", target_params=10**6), "unreachable"),
    (PruningPlan(method="width", target_params=2 * 10**8), "unreachable"),
    (PruningPlan(method="depth-bi", target_params=10**7), "unreachable"),
    (PruningPlan(method="width", num_heads=7, target_params=9 * 10**7), "multiple of the 3 KV heads"),
    (PruningPlan(method="width", hidden_size=500, target_params=9 * 10**7), "divisible by num_heads"),
    (PruningPlan(method="width", num_layers=20, target_params=9 * 10**7), "keeps every layer"),
    (PruningPlan(method="even", intermediate_size=600), "does not prune width"),
    (PruningPlan(method="depth-bi+width", target_params=9 * 10**7), "needs --num-layers"),
    (PruningPlan(method="width", intermediate_size=4000), "intermediate_size must be in"),
    (PruningPlan(method="width", intermediate_size=600, target_params=9 * 10**7), "nothing to solve"),
])
def test_bad_plans_are_refused(plan, message):
    with pytest.raises(ValueError, match=message):
        solve_shape(plan, SMOLLM2_135M)
