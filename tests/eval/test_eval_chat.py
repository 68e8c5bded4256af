"""The harness's per-task settings and its chat tasks: batched generate_until against one
context at a time, target_delimiter, process_results, chat_tasks' answers against generate with
the end-of-turn token as stop id, preference_task's acc against DPO's sequence log-probabilities."""
import numpy as np
import pytest

from tinygrad_llm import no_grad
from tinygrad_llm.eval import (Task, chat_context, chat_tasks, evaluate, generate_until,
                               loglikelihood, multiple_choice, preference_task, scores)
from tinygrad_llm.eval.chat import _chat_results
from tinygrad_llm.finetune import COURTESY
from tinygrad_llm.finetune.dpo import encode_pairs, sequence_logprobs
from tinygrad_llm.generate import generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, ChatTemplate

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
    metrics = scores(report)["mixed"]
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
    assert scores(report)["preference"]["acc"] == pytest.approx((chosen > rejected).mean())
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
