"""train/scaling.py: exact parameter and FLOP counts, the IsoFLOP plan, and the Chinchilla fits
(Approach 2 and 3) recovering known constants from synthetic losses."""
import numpy as np
import pytest

from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.train.scaling import (bootstrap_loss_surface, compute_optimal,
                                        fit_isoflop_parabolas, fit_loss_surface,
                                        forward_flops_per_token, isoflop_plan,
                                        non_embedding_params, predict_loss,
                                        train_flops_per_token)

# Hoffmann et al. (2022), the constants of their Approach 3 fit
TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
TRUE_A = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])          # 0.4516


def tiny(name, **overrides):
    base = dict(n_layer=2, n_head=4, n_embd=16, block_size=8, vocab_size=11)
    return GPTConfig.preset(name, **{**base, **overrides})


@pytest.mark.parametrize("config", [
    tiny("gpt2"),                                                   # tied, biases, LayerNorm
    tiny("gpt2", tie_embeddings=False, bias=False),                 # untied head, no biases
    tiny("llama"),                                                  # GQA, SwiGLU, RMSNorm
    tiny("llama", n_kv_head=1, tie_embeddings=True),                # MQA, tied
    tiny("gpt2", n_layer=3, kv_share=2, pos="t5", prenorm=False),   # shared K/V, T5 bias, post-LN
    tiny("gpt2", pos="sinusoidal", mlp="relu", ffn_hidden=24),
    tiny("llama", n_expert=3, n_expert_per_token=2),                # mixture of experts
    tiny("gpt2", mlp="none"),                                       # attention only
], ids=["gpt2", "gpt2-untied", "llama-gqa", "llama-mqa-tied", "kv-share-t5-postln",
        "sinusoidal", "moe", "attention-only"])
def test_non_embedding_params_match_the_built_model(config):
    assert non_embedding_params(config) == GPT(config).num_parameters(non_embedding=True)


def test_forward_flops_are_counted_by_hand():
    # C=8, H=2, D=4, F=32, V=10, T=4; causal mean context (1 + 2 + 3 + 4) / 4 = 2.5
    config = GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=8, block_size=4,
                              vocab_size=10)
    terms = forward_flops_per_token(config, 4)
    assert terms == {"qkv": 2 * (2 * 8 * 24), "attention": 2 * (2 * 2 * 4 * 2.5 * 2),
                     "proj": 2 * (2 * 8 * 8), "ffn": 2 * (2 * 2 * 8 * 32), "head": 2 * 8 * 10}
    assert train_flops_per_token(config, 4) == 3 * sum(terms.values())
    full = forward_flops_per_token(config, 4, context="full")
    assert full["attention"] == terms["attention"] * 4 / 2.5
    window = forward_flops_per_token(GPTConfig(**{**config.to_dict(), "window": 2}), 4)
    assert window["attention"] == terms["attention"] * 1.75 / 2.5   # (1 + 2 + 2 + 2) / 4


def test_gqa_swiglu_and_shared_kv_flops():
    config = tiny("llama", n_layer=4, n_kv_head=2, kv_share=2)      # C=16, H=4, Hkv=2, D=4
    terms = forward_flops_per_token(config, 8)
    # 4 layers project q (H D = 16), 2 of them also k and v (2 Hkv D = 16)
    assert terms["qkv"] == 2 * 16 * (4 * 16 + 2 * 16)
    assert terms["ffn"] == 4 * 3 * 2 * 16 * config.ffn_hidden
    moe = forward_flops_per_token(tiny("llama", n_expert=4, n_expert_per_token=2), 8)
    assert moe["ffn"] == 2 * (2 * 16 * 4 + 2 * 3 * 2 * 16 * config.ffn_hidden)


def test_six_n_d_holds_for_wide_models_and_fails_where_attention_dominates():
    # attention per token is 12 L C ctx against 6 N ~ 72 L C^2: the ratio is ctx / (6 C)
    wide = GPTConfig.preset("gpt2", n_layer=24, n_head=16, n_embd=2048, block_size=256,
                            vocab_size=65)
    ratio = train_flops_per_token(wide, 256) / (6 * non_embedding_params(wide))
    assert 1.0 < ratio < 1.03                                       # within 3%
    narrow = GPTConfig.preset("gpt2", n_layer=2, n_head=4, n_embd=32, block_size=1024,
                              vocab_size=65)
    assert train_flops_per_token(narrow, 1024) > 2 * 6 * non_embedding_params(narrow)


def test_counting_rejects_what_it_cannot_count():
    with pytest.raises(ValueError, match="attention='linear'"):
        non_embedding_params(tiny("gpt2", attention="linear"))
    with pytest.raises(ValueError, match="seq_len"):
        train_flops_per_token(tiny("gpt2"), 0)
    with pytest.raises(ValueError, match="context"):
        train_flops_per_token(tiny("gpt2"), 8, context="half")
    with pytest.raises(TypeError, match="GPTConfig"):
        non_embedding_params({"n_layer": 2})


# ---- the IsoFLOP plan ---------------------------------------------------------------------
SIZES = {f"w{c}": tiny("gpt2", n_embd=c, block_size=16) for c in (16, 32, 64, 128)}


def test_plan_spends_each_budget_in_whole_steps():
    fpt = {k: train_flops_per_token(c, 16) for k, c in SIZES.items()}
    budget = 1e4 * max(fpt.values()) * 32
    plan = isoflop_plan([budget, budget * 10], SIZES, seq_len=16, batch_size=2)
    assert plan["dropped"] == [] and len(plan["runs"]) == 8
    for run in plan["runs"]:
        assert run["tokens"] == run["steps"] * 32
        assert run["flops"] <= run["budget"] < run["flops"] + fpt[run["size"]] * 32
        assert run["params"] == non_embedding_params(SIZES[run["size"]])
    params = [r["params"] for r in plan["runs"] if r["budget"] == budget]
    assert params == sorted(params)


def test_plan_drops_runs_that_do_not_fit_and_says_why():
    fpt = {k: train_flops_per_token(c, 16) for k, c in SIZES.items()}
    budget = 10 * fpt["w64"] * 32                   # w128 gets 2 steps, w16 more than 100
    plan = isoflop_plan([budget], SIZES, seq_len=16, batch_size=2, min_steps=5,
                        max_tokens=100 * 32, min_sizes=1)
    reasons = {d["size"]: d["reason"] for d in plan["dropped"]}
    assert "min_steps=5" in reasons["w128"] and "max_tokens" in reasons["w16"]
    assert [r["size"] for r in plan["runs"]] == ["w32", "w64"]
    plan = isoflop_plan([budget, 1000 * budget], SIZES, seq_len=16, batch_size=2, min_steps=5,
                        min_sizes=4)              # the small budget keeps 3 sizes of 4
    assert {r["budget"] for r in plan["runs"]} == {1000 * budget}
    assert len(plan["dropped"]) == 4 and all(d["budget"] == budget for d in plan["dropped"])
    assert "only 3 sizes fit" in plan["dropped"][-1]["reason"]
    with pytest.raises(ValueError, match="smallest model \\('w16'\\)"):
        isoflop_plan([1e3], SIZES, seq_len=16, batch_size=2)


# ---- the fits, on losses drawn from known constants -------------------------------------
def synthetic_runs(budgets=(1e18, 1e19, 1e20, 1e21), per_budget=8, noise=0.005, seed=0):
    """IsoFLOP runs around each budget's optimum, with D = C / 6N and log-normal noise."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        for n in np.logspace(np.log10(c) / 2 - 2.3, np.log10(c) / 2 - 0.3, per_budget):
            d = c / (6 * n)
            loss = predict_loss(TRUTH, n, d) * np.exp(rng.normal(0, noise))
            runs.append(dict(budget=c, params=n, tokens=d, loss=float(loss)))
    return runs


def columns(runs):
    return [np.array([r[k] for r in runs]) for k in ("params", "tokens", "loss")]


def test_approach_3_recovers_the_exponents():
    n, d, loss = columns(synthetic_runs())
    fit = fit_loss_surface(n, d, loss)
    # the objective is the Huber losses summed over runs (Besiroglu et al., 2024), not averaged
    r = np.log(predict_loss(fit, n, d)) - np.log(loss)
    huber = np.where(np.abs(r) <= 1e-3, 0.5 * r * r, 1e-3 * (np.abs(r) - 0.5e-3))
    assert fit["objective"] == pytest.approx(huber.sum(), rel=1e-6)
    assert abs(fit["alpha"] - TRUTH["alpha"]) < 0.02
    assert abs(fit["beta"] - TRUTH["beta"]) < 0.02
    assert abs(fit["a"] - TRUE_A) < 0.015
    assert abs(fit["E"] - TRUTH["E"]) < 0.05
    assert fit["n_runs"] == 32


def test_approach_2_recovers_the_allocation_exponent():
    fit = fit_isoflop_parabolas(synthetic_runs())
    assert abs(fit["a"] - TRUE_A) < 0.02
    assert abs(fit["b"] - (1 - TRUE_A)) < 0.02
    assert len(fit["budgets"]) == 4 and all(b["inside"] for b in fit["budgets"])
    n_opt = [b["N_opt"] for b in fit["budgets"]]
    assert n_opt == sorted(n_opt)


def test_compute_optimal_is_the_minimum_on_the_budget_line():
    truth = {**TRUTH, "a": TRUE_A, "b": 1 - TRUE_A}
    opt = compute_optimal(truth, 1e21)
    n = np.logspace(8, 12, 20001)
    best = n[np.argmin(predict_loss(truth, n, 1e21 / (6 * n)))]
    assert opt["N_opt"] == pytest.approx(best, rel=1e-3)
    assert opt["tokens_per_param"] == pytest.approx(opt["D_opt"] / opt["N_opt"])
    assert 6 * opt["N_opt"] * opt["D_opt"] == pytest.approx(1e21)


def test_bootstrap_intervals_contain_the_truth():
    n, d, loss = columns(synthetic_runs(noise=0.01, seed=1))
    out = bootstrap_loss_surface(n, d, loss, n_boot=40, budget=1e21, seed=0)
    truth = {**TRUTH, "a": TRUE_A,
             "tokens_per_param": compute_optimal({**TRUTH, "a": TRUE_A, "b": 1 - TRUE_A},
                                                 1e21)["tokens_per_param"]}
    for name in ("alpha", "beta", "a", "E", "tokens_per_param"):
        low, high = out["intervals"][name]
        assert low < truth[name] < high, (name, low, high, truth[name])
        assert high - low > 0
    assert out["samples"]["alpha"].shape == (40,)


def test_too_few_points_say_what_is_missing():
    runs = synthetic_runs()
    n, d, loss = columns(runs[:5])
    with pytest.raises(ValueError, match="at least 6 runs .* got 5"):
        fit_loss_surface(n, d, loss)
    with pytest.raises(ValueError, match="at least 2 budgets"):
        fit_isoflop_parabolas(runs[:8])
    with pytest.raises(ValueError, match="budget 1e\\+19 has 2 distinct sizes"):
        fit_isoflop_parabolas(runs[:8] + runs[8:10])
    with pytest.raises(ValueError, match="lacks 'loss'"):
        fit_isoflop_parabolas([{k: v for k, v in r.items() if k != "loss"} for r in runs])
    with pytest.raises(ValueError, match="no minimum"):
        fit_isoflop_parabolas([{**r, "loss": 5 - abs(np.log(r["params"]) - 20)}
                               for r in runs])


def test_compute_optimal_needs_falling_terms():
    from tinygrad_llm.train.scaling import compute_optimal
    fit = dict(E=1.7, A=400.0, B=400.0, alpha=-0.1, beta=0.3, a=1.5, b=-0.5)
    with pytest.raises(ValueError, match="alpha=-0.1"):
        compute_optimal(fit, 1e18)
