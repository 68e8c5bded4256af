"""train/search.py: successive halving on a synthetic objective (the best survives, each rung
trains eta x longer, survivors continue), Pareto fronts by hand, the space's sampling and its
budgets, decode speed, and the errors that name their argument."""
import math

import numpy as np
import pytest

from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.train.scaling import non_embedding_params
from tinygrad_llm.train.search import (SEARCH_SPACE, config_from_choice,
                                       decode_tokens_per_second, pareto_front, sample_configs,
                                       successive_halving, within_budget)

FIXED = dict(vocab_size=65, block_size=32, bias=False)


# ---- successive halving -------------------------------------------------------------------
class Synthetic:
    """Candidate c's loss after s steps in all: c + 4 / (1 + s). A candidate that restarted
    instead of continuing would be scored on the steps of its last call alone."""

    def __init__(self):
        self.steps, self.calls = {}, []

    def train(self, i, candidate, steps):
        self.calls.append((i, steps))
        self.steps[i] = self.steps.get(i, 0) + steps

    def evaluate(self, i, candidate):
        return candidate + 4.0 / (1 + self.steps[i])


def test_the_best_survives_and_each_rung_trains_eta_times_longer():
    qualities = [0.9, 0.3, 0.7, 0.1, 0.5, 0.8, 0.2, 0.6, 0.4]       # the best is index 3
    objective = Synthetic()
    out = successive_halving(qualities, objective.train, objective.evaluate, min_steps=5, eta=3)
    assert out["winner"] == 3
    assert [len(r) for r in out["rungs"]] == [9, 3, 1]
    assert out["rungs"][1] == [1, 3, 6] and out["rungs"][2] == [3]      # the three best
    for r in out["records"]:
        assert r["steps"] == 5 * 3 ** r["rung"]
        assert r["loss"] == pytest.approx(qualities[r["index"]] + 4.0 / (1 + r["steps"]))
    # survivors continue: the winner was asked for 5, then 10 more, then 30 more
    assert [s for i, s in objective.calls if i == 3] == [5, 10, 30]
    assert objective.steps[3] == 45
    assert out["train_steps"] == sum(s for _, s in objective.calls) == 9 * 5 + 3 * 10 + 30


def test_rungs_shrink_by_eta_and_max_rungs_stops_early():
    objective = Synthetic()
    out = successive_halving(list(range(8)), objective.train, objective.evaluate, 1, eta=2)
    assert [len(r) for r in out["rungs"]] == [8, 4, 2, 1] and out["winner"] == 0
    objective = Synthetic()
    out = successive_halving(list(range(8)), objective.train, objective.evaluate, 1, eta=2,
                             max_rungs=2)
    assert [len(r) for r in out["rungs"]] == [8, 4] and max(objective.steps.values()) == 2


def test_a_non_finite_loss_ranks_last_and_ties_go_to_the_lower_index():
    losses = {0: float("nan"), 1: 2.0, 2: 2.0, 3: float("inf")}
    out = successive_halving(list(range(4)), lambda i, c, s: None, lambda i, c: losses[i], 1,
                             eta=2)
    assert out["rungs"][1] == [1, 2] and out["winner"] == 1
    assert math.isnan(out["records"][0]["loss"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(eta=1), "eta: expected an int >= 2, got 1"),
    (dict(eta=2.5), "eta: expected an int >= 2, got 2.5"),
    (dict(min_steps=0), "min_steps: expected an int >= 1, got 0"),
    (dict(max_rungs=0), "max_rungs: expected a positive int or None, got 0")])
def test_successive_halving_names_a_bad_argument(kwargs, message):
    args = {"min_steps": 1, "eta": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        successive_halving([1, 2], lambda *a: None, lambda *a: 0.0, **args)
    with pytest.raises(ValueError, match="candidates: expected at least one"):
        successive_halving([], lambda *a: None, lambda *a: 0.0, 1)


# ---- Pareto fronts ------------------------------------------------------------------------
@pytest.mark.parametrize("points, maximize, front", [
    ([(1, 5), (2, 4), (3, 3), (2, 5), (4, 4)], None, [0, 1, 2]),    # dominated ones removed
    ([(1, 1), (1, 1), (2, 2)], None, [0, 1]),                        # equal points both kept
    ([(1, 2), (1, 3)], None, [0]),                                   # tied in one, worse in one
    ([(3.0, 7.0)], None, [0]),                                       # one point
    ([(1.0, 100), (1.5, 200), (2.0, 150)], [False, True], [0, 1]),   # speed: higher is better
    ([(1.0, float("nan")), (2.0, 2.0)], None, [1]),                  # NaN never on the front
    ([(1, 2, 3), (2, 1, 3), (2, 2, 3)], None, [0, 1]),               # three objectives
])
def test_pareto_front(points, maximize, front):
    assert pareto_front(points, maximize) == front


def test_pareto_front_names_bad_input():
    with pytest.raises(ValueError, match=r"points: expected a non-empty \(N, M\)"):
        pareto_front([])
    with pytest.raises(ValueError, match="maximize: expected 2 flags"):
        pareto_front([(1, 2)], maximize=[True])


# ---- the space ----------------------------------------------------------------------------
def test_sampled_configs_are_valid_distinct_and_seeded():
    drawn = sample_configs(SEARCH_SPACE, 60, seed=0, fixed=FIXED)
    assert len(drawn) == 60
    assert len({tuple(sorted(choice.items())) for choice, _ in drawn}) == 60
    for choice, config in drawn:
        assert config.n_embd % config.n_head == 0 and config.n_head % config.n_kv_head == 0
        assert config.n_kv_head == {"mha": config.n_head, "mqa": 1}.get(
            choice["attention"], config.n_kv_head)
        if choice["attention"] == "gqa":
            assert 1 < config.n_kv_head < config.n_head
        assert config.ffn_hidden == max(8, 8 * round(choice["ffn_mult"] * config.n_embd / 8))
        assert config.prenorm is choice["prenorm"] and config.vocab_size == 65
        for key in ("n_layer", "n_embd", "n_head", "norm", "pos", "mlp"):
            assert getattr(config, key) == choice[key]
    # every option of every field shows up, and the seed decides the draw
    for key, options in SEARCH_SPACE.items():
        assert {c[key] for c, _ in drawn} == set(options), key
    assert [c for c, _ in sample_configs(SEARCH_SPACE, 5, seed=0, fixed=FIXED)] == \
        [c for c, _ in drawn[:5]]
    assert [c for c, _ in sample_configs(SEARCH_SPACE, 5, seed=1, fixed=FIXED)] != \
        [c for c, _ in drawn[:5]]


def test_a_sampled_config_builds_and_is_counted_exactly():
    for _, config in sample_configs(SEARCH_SPACE, 4, seed=3, fixed=FIXED):
        model = GPT(config)
        assert model.num_parameters(non_embedding=True) == non_embedding_params(config)


@pytest.mark.parametrize("choice", [
    dict(n_embd=48, n_head=5),                              # heads do not divide the width
    dict(n_embd=32, n_head=2, attention="gqa"),             # no divisor between 1 and 2
    dict(n_embd=32, n_head=1, attention="mqa"),             # MQA is MHA at one head
    dict(n_embd=48, n_head=16, pos="rope")])                # odd RoPE head width (3)
def test_invalid_choices_give_none(choice):
    assert config_from_choice(choice, **FIXED) is None


def test_a_space_with_too_few_valid_points_says_how_many():
    with pytest.raises(ValueError, match=r"n: asked for 3 distinct valid configurations, "
                                         r"found 2 in"):
        sample_configs({"n_embd": (32, 64), "n_head": (3, 4)}, 3, seed=0, fixed=FIXED)
    with pytest.raises(ValueError, match=r"space\['n_head'\]: expected a non-empty tuple"):
        sample_configs({"n_embd": (32,), "n_head": ()}, 1, seed=0)


def test_within_budget_keeps_those_inside_and_names_the_closest_when_none_is():
    items = [dict(p=5), dict(p=1), dict(p=3)]
    assert within_budget(items, lambda e: e["p"], 3, "--budget") == [dict(p=1), dict(p=3)]
    assert within_budget(items, lambda e: e["p"], 3, "--floor", at_most=False) == \
        [dict(p=5), dict(p=3)]
    with pytest.raises(ValueError, match=r"--budget: no candidate meets the budget \(<= 0\.5\); "
                                         r"the smallest of the 3 candidates has 1"):
        within_budget(items, lambda e: e["p"], 0.5, "--budget")
    with pytest.raises(ValueError, match=r"--floor: no candidate meets the budget \(>= 9\); "
                                         r"the largest of the 3 candidates has 5"):
        within_budget(items, lambda e: e["p"], 9, "--floor", at_most=False)


# ---- decode speed -------------------------------------------------------------------------
def test_decode_speed_is_measured_and_checks_its_arguments():
    model = GPT(GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=16,
                                 vocab_size=11))
    speed = decode_tokens_per_second(model, new_tokens=4, repeats=2)
    assert math.isfinite(speed) and speed > 0
    with pytest.raises(ValueError, match="new_tokens: expected a positive int, got 0"):
        decode_tokens_per_second(model, new_tokens=0)
    with pytest.raises(ValueError, match="exceeds the model's 16 positions"):
        decode_tokens_per_second(model, new_tokens=16, prompt_tokens=1)
