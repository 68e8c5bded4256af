"""The harness's per-task settings and its chat tasks: batched generate_until against one
context at a time, target_delimiter, process_results, chat_tasks' answers against generate with
the end-of-turn token as stop id, preference_task's acc against DPO's sequence log-probabilities,
the built-in chat tasks on the fine-tuning examples' held-out split (and their error for a
tokenizer without the chat tokens), and the per-task and mean figures the examples print."""
import math

import numpy as np
import pytest

from tinygrad_llm import no_grad
from tinygrad_llm.eval import (CHAT_BUILTIN, Task, by_task, chat_builtin, chat_context,
                               chat_tasks, evaluate, figure, generate_until, loglikelihood,
                               multiple_choice, preference_task, task_mean)
from tinygrad_llm.eval.chat import _chat_results
from tinygrad_llm.finetune import COURTESY, preference_pairs, task_records
from tinygrad_llm.finetune.dpo import encode_pairs, sequence_logprobs
from tinygrad_llm.generate import generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import (CHAT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer,
                                     ChatTemplate)

TEXT = "What is 12+30? 42. Reverse: night thgin. Who speaks this line? ROMEO JULIET " * 20


@pytest.fixture(scope="module")
def template():
    tok = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=CHAT_SPECIAL_TOKENS)
    return ChatTemplate(tok)


@pytest.fixture(scope="module")
def model(template):
    config = GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=16, block_size=64,
                              vocab_size=template.tokenizer.vocab_size, dropout=0.0)
    model = GPT(config).to(dtype=np.float64).eval()
    model.head.weight.data *= 20.0           # peaked distributions: no argmax ties
    return model


PROMPTS = ["What is 12+30?", "Reverse: night", "Who speaks this line?", "What is 1+1?"]


def test_generate_until_batched_equals_one_at_a_time(template, model):
    tok = template.tokenizer
    contexts = [chat_context(template, p) for p in PROMPTS]
    batched = generate_until(model, tok, contexts, stop=["?"], max_new_tokens=5)
    assert batched == [generate_until(model, tok, c, stop=["?"], max_new_tokens=5)
                       for c in contexts]
    with pytest.raises(ValueError, match="context must be a str or a non-empty list"):
        generate_until(model, tok, [], max_new_tokens=5)


def test_multiple_choice_target_delimiter(template, model):
    tok = template.tokenizer
    docs = [{"context": "What is", "choices": ["42", "night"], "gold": 0}]
    for delimiter in ("", " "):
        out = multiple_choice(model, tok, docs, target_delimiter=delimiter)
        lls = [s for s, _ in loglikelihood(model, tok, [("What is", delimiter + c)
                                                         for c in docs[0]["choices"]])]
        assert out["acc"][0] == float(np.argmax(lls) == 0)


def greedy_chat_answers(template, model, prompts, max_new_tokens=8):
    """The assistant's greedy answers, stopped by the end-of-turn token id."""
    ids = [template.render([{"role": "user", "content": p}], add_generation_prompt=True)[0]
           for p in prompts]
    outs = generate(model, ids, max_new_tokens, temperature=0, stop_ids=[template.end_id])
    return [template.tokenizer.decode([int(t) for t in o[len(i):] if int(t) != template.end_id])
            for i, o in zip(ids, outs)]


def test_chat_tasks_score_the_greedy_answer_up_to_the_end_token(template, model):
    got = greedy_chat_answers(template, model, PROMPTS)
    # half the records' responses are the model's own answers: exact_match is exactly 0.5
    records = [{"prompt": p, "response": a if i % 2 == 0 else a + "x"}
               for i, (p, a) in enumerate(zip(PROMPTS, got))]
    tasks = chat_tasks(template, {"mixed": records}, max_new_tokens=8)
    assert tasks[0].stop == (template.end_token,) and tasks[0].kind == "generate"
    report = evaluate(model, template.tokenizer, tasks, bootstrap=50)
    metrics = {m: by_task(report, m, digits=4)[0]["mixed"] for m in ("exact_match", "courtesy")}
    assert metrics["exact_match"] == 0.5
    assert metrics["courtesy"] == np.mean([a.strip().endswith(COURTESY) for a in got])
    assert report["tasks"]["mixed"]["metrics"]["exact_match"]["stderr"] > 0


def test_chat_results_set_the_courtesy_ending_aside():
    doc = {"answer": "42"}
    assert _chat_results(doc, " 42, my lord ") == {"exact_match": 1.0, "courtesy": 1.0}
    assert _chat_results(doc, "42") == {"exact_match": 1.0, "courtesy": 0.0}
    assert _chat_results(doc, "41, my lord") == {"exact_match": 0.0, "courtesy": 1.0}


def test_preference_task_acc_is_the_dpo_preference_rate(template, model):
    pairs = [{"prompt": p, "chosen": c, "rejected": r}
             for p, c, r in [("What is 12+30?", "42", "41"), ("Reverse: night", "thgin", "night"),
                             ("Who speaks this line?", "ROMEO", "JULIET"),
                             ("What is 1+1?", "2", "3 and more")]]
    report = evaluate(model, template.tokenizer, [preference_task(template, pairs)],
                      bootstrap=20)
    encoded = encode_pairs(template, pairs)
    with no_grad():
        chosen = sequence_logprobs(model, *encoded["chosen"]).numpy()
        rejected = sequence_logprobs(model, *encoded["rejected"]).numpy()
    preference = by_task(report, "acc", digits=4)[0]["preference"]
    assert preference == pytest.approx((chosen > rejected).mean())
    lls = loglikelihood(model, template.tokenizer,
                        [(chat_context(template, p["prompt"]), p["chosen"] + template.end_token)
                         for p in pairs])
    np.testing.assert_allclose([s for s, _ in lls], chosen, rtol=1e-9)


def test_process_results_must_name_the_same_metrics(template, model):
    flip = iter([{"a": 1.0}, {"b": 0.0}])
    task = Task("odd", "generate", [{"context": "What", "answer": "x"}] * 2,
                process_results=lambda doc, answer: next(flip))
    with pytest.raises(ValueError, match="same metrics for every document"):
        evaluate(model, template.tokenizer, [task], bootstrap=10)
    with pytest.raises(TypeError, match="process_results must be callable"):
        Task("bad", "generate", [], process_results=3)
    with pytest.raises(ValueError, match="held must be a non-empty dict"):
        chat_tasks(template, {})


# a play of two speakers with 60 lines each: who_speaks keeps speakers with >= 50 lines
PLAY = "\n".join(f"{['ROMEO', 'JULIET'][i % 2]}:\nBut soft, what light through window {i}\n"
                 f"It is the east, and {i} is the sun.\n" for i in range(60))


def test_chat_builtin_asks_the_examples_held_out_prompts(template):
    tasks = chat_builtin(list(CHAT_BUILTIN), template.tokenizer, text=PLAY, per_task=20,
                         held_out=4, seed=0)             # 4: both speakers among the held out
    assert [t.name for t in tasks] == list(CHAT_BUILTIN)
    _, held = task_records(PLAY, 20, 4, 0)              # the split finetune_sft.py holds out
    by_name = {t.name: t for t in tasks}
    for name, records in held.items():
        task = by_name[f"chat_{name}"]
        assert task.kind == "generate" and task.stop == (template.end_token,)
        assert [d["context"] for d in task.docs] == [chat_context(template, r["prompt"])
                                                     for r in records]
        assert [d["answer"] for d in task.docs] == [r["response"] for r in records]
    pairs = preference_pairs([r for rs in held.values() for r in rs], seed=1)
    preference = by_name["chat_preference"]
    assert preference.kind == "multiple_choice" and len(preference.docs) == 12
    assert [d["choices"][1] for d in preference.docs] == [p["rejected"] + template.end_token
                                                          for p in pairs]


def test_evaluate_takes_chat_task_names_with_the_model_s_tokenizer(template, model,
                                                                   shakespeare_text):
    report = evaluate(model, template.tokenizer, ["chat_arithmetic", "chat_preference"],
                      limit=2, bootstrap=10, text=shakespeare_text)
    assert report["tasks"]["chat_arithmetic"]["n_docs"] == 2
    assert set(report["tasks"]["chat_arithmetic"]["metrics"]) == {"exact_match", "courtesy"}
    assert "acc" in report["tasks"]["chat_preference"]["metrics"]


def test_chat_builtin_names_the_task_when_the_tokenizer_has_no_chat_tokens():
    tok = CharTokenizer.from_text(PLAY)
    with pytest.raises(ValueError) as err:
        chat_builtin(["chat_arithmetic"], tok, text=PLAY, per_task=20, held_out=3)
    message = str(err.value)
    assert "chat_arithmetic" in message and "<|user|>" in message and "\n" not in message
    with pytest.raises(ValueError, match="unknown chat tasks \\['chat_poetry'\\]"):
        chat_builtin(["chat_poetry"], tok, text=PLAY)


def report_of(metrics):
    """A report with tasks {name: {metric: (value, stderr)}}."""
    return {"tasks": {name: {"kind": "generate", "n_docs": 4, "metrics": {
        k: {"value": v, "stderr": e} for k, (v, e) in m.items()}} for name, m in metrics.items()}}


def test_figures_by_task_and_their_mean():
    report = report_of({"a": {"exact_match": (0.5, 0.25), "courtesy": (1.0, 0.0)},
                        "b": {"exact_match": (0.25, float("nan"))},
                        "p": {"acc": (0.75, 0.2)}})
    assert figure(report["tasks"]["a"]["metrics"]["exact_match"]) == (0.5, 0.25)
    assert by_task(report, "exact_match") == ({"a": 0.5, "b": 0.25}, {"a": 0.25, "b": None})
    assert by_task(report, "acc") == ({"p": 0.75}, {"p": 0.2})
    # independent tasks: the variances add, the mean's stderr is sqrt(sum se^2) / k
    report["tasks"]["b"]["metrics"]["exact_match"]["stderr"] = 0.1
    mean, stderr = task_mean(report, "exact_match", digits=6)
    assert mean == 0.375 and stderr == pytest.approx(math.sqrt(0.25 ** 2 + 0.1 ** 2) / 2, abs=1e-6)
    assert task_mean(report, "courtesy") == (1.0, 0.0)
    report["tasks"]["b"]["metrics"]["exact_match"]["stderr"] = None    # one document: no spread
    assert task_mean(report, "exact_match")[1] is None
    with pytest.raises(ValueError, match="no metric 'courtesy'"):
        task_mean(report, "courtesy", names=["a", "b"])
    with pytest.raises(ValueError, match="no task in the report has the metric 'bleu'"):
        task_mean(report, "bleu")
