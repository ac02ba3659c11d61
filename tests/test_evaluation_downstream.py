"""Downstream (zero-shot, log-likelihood) evaluation against references computed here.

Unit tests use a stub LM whose logits depend on the current token and its position, so every
continuation's log-probability has a float64 closed form that also checks batching, right padding
and truncation to the sequence length. The end-to-end test trains a tiny checkpoint (mock data,
NullTokenizer) and compares the command line's accuracies with choices recomputed from the loaded
model's float64 log-softmax over each whole sequence.
"""

import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch

from megatron_mile.evaluation.downstream import (
    LoglikelihoodScorer,
    MultipleChoiceItem,
    evaluate_multiple_choice,
    lm_eval_model,
    read_multiple_choice,
    rolling_windows,
)

WORLD_SIZE = 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 11


class PositionalBigram(torch.nn.Module):
    """logits[b, p] = table[token[b, p]] + bias[p]: depends on the current token and its position."""

    def __init__(self, seed=0, max_len=64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=gen) * 2)
        self.bias = torch.nn.Parameter(torch.randn(max_len, VOCAB, generator=gen))

    def forward(self, tokens, position_ids, attention_mask):
        assert attention_mask is None
        return self.table[tokens] + self.bias[position_ids]


class DigitTokenizer:
    """One token per character '0'..'9' and ' ' (id 10 doubles as end of document)."""

    def tokenize(self, text):
        return [10 if c == " " else int(c) for c in text]

    def detokenize(self, ids):
        return "".join(" " if i == 10 else str(i) for i in ids)

    @property
    def eod(self):
        return 10


def reference_score(model, context, continuation, seq_length):
    """float64 log-probability of the continuation and its greedy flag, position by position."""
    window = (list(context) + list(continuation))[-(seq_length + 1):]
    table, bias = model.table.detach().double(), model.bias.detach().double()
    total, greedy = 0.0, True
    for k in range(len(window) - len(continuation), len(window)):
        p = k - 1  # the input position that predicts window[k]
        logp = torch.log_softmax(table[window[p]] + bias[p], dim=-1)
        total += float(logp[window[k]])
        greedy &= int(logp.argmax()) == window[k]
    return total, greedy


def test_scores_match_closed_form_with_batching_padding_and_truncation():
    model = PositionalBigram()
    seq_length = 12
    gen = torch.Generator().manual_seed(1)
    pairs = []
    for context_len, cont_len in [(3, 2), (1, 1), (7, 4), (20, 3), (11, 1), (2, 9), (30, 12), (5, 5)]:
        ctx = torch.randint(0, VOCAB, (context_len,), generator=gen).tolist()
        cont = torch.randint(0, VOCAB, (cont_len,), generator=gen).tolist()
        pairs.append((ctx, cont))
    # The model's own greedy continuation of one context, so a True greedy flag is exercised too.
    ctx = [3, 1, 4]
    cont = [int((model.table[ctx[-1]] + model.bias[len(ctx) - 1]).argmax())]
    pairs.append((ctx, cont))
    for batch_size in (1, 3, 16):
        scorer = LoglikelihoodScorer(model, DigitTokenizer(), seq_length, batch_size=batch_size)
        scores = scorer.score_tokens(pairs)
        for (ctx, cont), score in zip(pairs, scores):
            want, greedy = reference_score(model, ctx, cont, seq_length)
            assert math.isclose(score.logprob, want, rel_tol=1e-5, abs_tol=1e-5), (ctx, cont, batch_size)
            assert score.is_greedy == greedy and score.num_tokens == len(cont)
    assert scores[-1].is_greedy


def test_encode_pair_follows_lm_eval_conventions():
    scorer = LoglikelihoodScorer(PositionalBigram(), DigitTokenizer(), 16)
    assert scorer.encode_pair("12 ", "34") == ([1, 2], [10, 3, 4])  # the trailing space joins the continuation
    assert scorer.encode_pair("12", " 34") == ([1, 2], [10, 3, 4])
    assert scorer.encode_pair("", "5") == ([10], [5])  # an empty context starts from end of document
    assert scorer.encode_pair("", " 5") == ([10], [5])  # ... unless the continuation starts with it
    with pytest.raises(ValueError, match="does not fit"):
        scorer.score_tokens([([1], list(range(10)) * 2)])
    with pytest.raises(ValueError, match="no tokens"):
        scorer.score_tokens([([1], [])])


class CharTokenizer:
    """One token per character of a fixed alphabet (id 0, the space, doubles as end of document)."""

    ALPHABET = " \n\tabc12"

    def tokenize(self, text):
        return [self.ALPHABET.index(c) for c in text]

    def detokenize(self, ids):
        return "".join(self.ALPHABET[i] for i in ids)

    eod = 0


WHITESPACE_PAIRS = [("ab\n", "c"), ("ab \t\n", " c"), ("a\tb\t", "1"), ("ab", " c"), ("ab\n\n", "c\n"),
                    ("", "ab"), ("", " a")]


def lm_eval_encode_pair(tokenizer, context, continuation):
    """lm-evaluation-harness 0.4.13's ``TemplateLM.loglikelihood`` split for a causal model,
    re-implemented from their code: every trailing whitespace character joins the continuation."""
    if context == "":
        ids = tokenizer.tokenize(continuation)
        return ([tokenizer.eod], ids) if tokenizer.eod != ids[0] else (ids[:1], ids[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.tokenize(context + continuation)
    return whole[:len(tokenizer.tokenize(context))], whole[len(tokenizer.tokenize(context)):]


def test_context_whitespace_moves_to_the_continuation_as_in_lm_eval():
    scorer = LoglikelihoodScorer(PositionalBigram(), CharTokenizer(), 16)
    for context, continuation in WHITESPACE_PAIRS:
        assert scorer.encode_pair(context, continuation) == \
            lm_eval_encode_pair(CharTokenizer(), context, continuation), (context, continuation)
    assert scorer.encode_pair("ab\n", "c") == ([3, 4], [1, 5])  # the newline is scored, not conditioned on


def test_context_whitespace_against_lm_eval_itself():
    model_api = pytest.importorskip("lm_eval.api.model")  # optional: not a CI dependency
    seen = []

    class Recorder(model_api.TemplateLM):
        eot_token_id = CharTokenizer.eod

        def tok_encode(self, string, **kwargs):
            return CharTokenizer().tokenize(string)

        def _loglikelihood_tokens(self, requests, **kwargs):
            seen.extend((context, continuation) for _, context, continuation in requests)
            return [(0.0, False)] * len(requests)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    Recorder().loglikelihood([types.SimpleNamespace(args=pair) for pair in WHITESPACE_PAIRS], disable_tqdm=True)
    scorer = LoglikelihoodScorer(PositionalBigram(), CharTokenizer(), 16)
    assert [scorer.encode_pair(*pair) for pair in WHITESPACE_PAIRS] == seen


def test_multiple_choice_accuracy_and_stderr():
    model = PositionalBigram(seed=3)
    scorer = LoglikelihoodScorer(model, DigitTokenizer(), 16, batch_size=4)
    gen = torch.Generator().manual_seed(2)
    items = []
    for i in range(9):
        context = "".join(str(int(d)) for d in torch.randint(0, 10, (4,), generator=gen))
        choices = ["".join(str(int(d)) for d in torch.randint(0, 10, (1 + (i + j) % 3,), generator=gen))
                   for j in range(3)]
        items.append(MultipleChoiceItem(context, choices, label=i % 3))
    got = evaluate_multiple_choice(scorer, items)
    correct, correct_norm = [], []
    for item in items:
        context_ids = DigitTokenizer().tokenize(item.context)
        logprobs = [reference_score(model, context_ids, DigitTokenizer().tokenize(" " + c), 16)[0]
                    for c in item.choices]
        per_char = [lp / len(c) for lp, c in zip(logprobs, item.choices)]
        correct.append(float(logprobs.index(max(logprobs)) == item.label))
        correct_norm.append(float(per_char.index(max(per_char)) == item.label))
    n = len(items)
    for key, values in (("acc", correct), ("acc_norm", correct_norm)):
        mean = sum(values) / n
        assert math.isclose(got[key], mean)
        sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        assert math.isclose(got[key + "_stderr"], sample_std / math.sqrt(n))
    assert got["num_items"] == 9 and math.isclose(got["chance"], 1 / 3)
    assert got["correct"] == correct and got["correct_norm"] == correct_norm


def lm_eval_rolling_windows(token_list, prefix_token, max_seq_len, context_len=1):
    """lm-evaluation-harness 0.4.13's ``get_rolling_token_windows`` followed by
    ``make_disjoint_window`` (lm_eval/utils.py), re-implemented here step by step from their code."""
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return []
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    overlapping = [([prefix_token] + token_list[:first_seq_len - 1], token_list[:first_seq_len])]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        overlapping.append((token_list[window_end - max_seq_len - 1:window_end - 1],
                            token_list[window_end - window_pred_len:window_end]))
        predicted += window_pred_len
    return [(a[:len(a) - (len(b) - 1)], b) for a, b in overlapping]  # make_disjoint_window


ROLLING_LENGTHS = [0, 1, 4, 5, 6, 9, 10, 11, 13, 23]  # around and across multiples of seq_length 5


def test_rolling_windows_are_lm_evals():
    for n in ROLLING_LENGTHS:
        tokens = [(7 * i + 3) % VOCAB for i in range(n)]
        got = rolling_windows(tokens, 10, 5)
        assert got == lm_eval_rolling_windows(tokens, 10, 5), n
        # Every token predicted once, in order; every window fits the model.
        assert [t for _, cont in got for t in cont] == tokens
        assert all(len(ctx) + len(cont) <= 6 for ctx, cont in got)
    # The case: a last partial window is conditioned on seq_length - k + 1 earlier tokens.
    windows = rolling_windows(list(range(204)), -1, 128)
    assert [(len(c), len(x)) for c, x in windows] == [(1, 128), (53, 76)]
    assert windows[1][0] == list(range(75, 128))


def test_rolling_windows_against_lm_eval_itself():
    utils = pytest.importorskip("lm_eval.utils")  # optional: not a CI dependency
    for n in ROLLING_LENGTHS:
        tokens = [(3 * i + 1) % VOCAB for i in range(n)]
        want = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            token_list=tokens, prefix_token=10, max_seq_len=5, context_len=1)]
        assert rolling_windows(tokens, 10, 5) == want, n


def test_rolling_logprob_sums_lm_eval_windows():
    model = PositionalBigram(seed=4)
    for batch_size in (1, 2):
        scorer = LoglikelihoodScorer(model, DigitTokenizer(), 5, batch_size=batch_size)
        for n in ROLLING_LENGTHS:
            text = "31415926535897932384626"[:n]
            ids = DigitTokenizer().tokenize(text)
            want = sum(reference_score(model, ctx, cont, 5)[0] for ctx, cont in lm_eval_rolling_windows(ids, 10, 5))
            assert math.isclose(scorer.rolling_logprob(text), want, rel_tol=1e-5, abs_tol=1e-6), (n, batch_size)


def test_rolling_and_greedy_generation():
    model = PositionalBigram(seed=4)
    scorer = LoglikelihoodScorer(model, DigitTokenizer(), 5, batch_size=2)
    # Greedy: follow the argmax chain by hand (window of the last 5 tokens, positions from 0).
    tokens, out = DigitTokenizer().tokenize("27"), []
    for _ in range(4):
        window = (tokens + out)[-5:]
        nxt = int((model.table[window[-1]] + model.bias[len(window) - 1]).argmax())
        if nxt == 10:
            break
        out.append(nxt)
    assert scorer.generate_greedy("27", until=[], max_new_tokens=4) == DigitTokenizer().detokenize(out)
    if len(out) >= 2:  # a stop string cuts the text before it
        stop = DigitTokenizer().detokenize(out[1:2])
        assert scorer.generate_greedy("27", until=[stop], max_new_tokens=4) == \
            DigitTokenizer().detokenize(out)[:DigitTokenizer().detokenize(out).index(stop)]


def test_lm_eval_adapter_maps_requests(monkeypatch):
    """The adapter against a stand-in for lm_eval's LM base class (lm_eval itself is optional)."""
    base = type("LM", (), {"__init__": lambda self: None})
    api = types.ModuleType("lm_eval.api")
    api.model = types.SimpleNamespace(LM=base)
    monkeypatch.setitem(sys.modules, "lm_eval", types.ModuleType("lm_eval"))
    monkeypatch.setitem(sys.modules, "lm_eval.api", api)
    monkeypatch.setitem(sys.modules, "lm_eval.api.model", api.model)
    model = PositionalBigram(seed=5)
    scorer = LoglikelihoodScorer(model, DigitTokenizer(), 8)
    lm = lm_eval_model(scorer)
    assert isinstance(lm, base)
    request = types.SimpleNamespace
    got = lm.loglikelihood([request(args=("12 ", "3")), request(args=("", "45"))])
    want = [reference_score(model, [1, 2], [10, 3], 8), reference_score(model, [10], [4, 5], 8)]
    for (lp, greedy), (want_lp, want_greedy) in zip(got, want):
        assert math.isclose(lp, want_lp, rel_tol=1e-5) and greedy == want_greedy
    assert math.isclose(lm.loglikelihood_rolling([request(args=("123",))])[0], scorer.rolling_logprob("123"))
    (text,) = lm.generate_until([request(args=("27", {"until": "9", "max_gen_toks": 3}))])
    assert text == scorer.generate_greedy("27", ["9"], 3)


def test_task_file_errors_name_the_line(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text('{"context": "1", "choices": ["2", "3"], "label": 1}\n{"context": "1", "choices": ["2"]}\n')
    with pytest.raises(ValueError, match=r"task.jsonl:2: expected"):
        read_multiple_choice(str(path))
    path.write_text('{"context": "1", "choices": ["2", "3"], "label": 2}\n')
    with pytest.raises(ValueError, match=r"task.jsonl:1: needs at least 2 choices and a label"):
        read_multiple_choice(str(path))
    good = tmp_path / "good.jsonl"
    good.write_text('{"context": "1", "choices": ["2", "3"], "label": 1}\n\n')
    assert read_multiple_choice(str(good)) == [MultipleChoiceItem("1", ["2", "3"], 1)]


# ----------------------------------------------------------------------------- end to end
SEQ = 16
TRAIN_FLAGS = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", str(SEQ),
               "--micro-batch-size", "2", "--train-iters", "3", "--lr", "3e-3", "--mock-data", "--vocab-size", "60",
               "--tokenizer-type", "NullTokenizer", "--eval-iters", "0", "--log-interval", "100",
               "--num-workers", "0", "--hidden-dropout", "0", "--attention-dropout", "0"]


def _train(save_dir):
    from megatron_mile.pretrain_gpt import pretrain

    pretrain(TRAIN_FLAGS + ["--save", save_dir])


def _reference_choices(save_dir, items):
    """The chosen index per item (acc and acc_norm) from float64 log-softmax over each whole sequence."""
    from megatron_mile.training.checkpointing import load_model_for_eval

    model, _ = load_model_for_eval(save_dir)
    chosen, chosen_norm = [], []
    for item in items:
        context = [int(x) for x in item["context"].split(" ")]
        scores = []
        for choice in item["choices"]:
            cont = [int(x) for x in choice.split(" ")]
            whole = torch.tensor([context + cont])
            positions = torch.arange(whole.size(1) - 1).unsqueeze(0)
            with torch.no_grad():
                logp = torch.log_softmax(model(whole[:, :-1], positions, None).double(), dim=-1)[0]
            targets = whole[0, 1:]
            per_token = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            scores.append(float(per_token[-len(cont):].sum()))
        chosen.append(scores.index(max(scores)))
        per_char = [s / len(c) for s, c in zip(scores, item["choices"])]
        chosen_norm.append(per_char.index(max(per_char)))
    return chosen, chosen_norm


def test_command_line_on_a_trained_checkpoint(tmp_path, dist_pool):
    save = str(tmp_path / "ckpt")
    dist_pool.run(_train, save)
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(6):
        context = " ".join(str(int(x)) for x in torch.randint(0, 60, (5 + i,), generator=gen))
        choices = [" ".join(str(int(x)) for x in torch.randint(0, 60, (1 + j,), generator=gen)) for j in range(4)]
        items.append({"context": context, "choices": choices, "label": i % 4})
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(item) + "\n" for item in items))
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools/eval_downstream.py"), "--load", save,
                           "--task", f"toy={task}", "--batch-size", "3", "--dtype", "float32", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "toy: acc" in proc.stdout and "continuations" in proc.stdout
    # megatron-core's import-time "not installed" warnings are one line, not a screen of tracebacks
    assert "Falling back" not in proc.stderr, proc.stderr[-2000:]
    result = json.loads(out.read_text())["tasks"]["toy"]
    chosen, chosen_norm = dist_pool.run(_reference_choices, save, items)[0]
    labels = [item["label"] for item in items]
    assert math.isclose(result["acc"], sum(c == lab for c, lab in zip(chosen, labels)) / len(items))
    assert math.isclose(result["acc_norm"], sum(c == lab for c, lab in zip(chosen_norm, labels)) / len(items))


def good_task(tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_text('{"context": "1 2", "choices": ["3", "4"], "label": 0}\n')
    return path


def test_command_line_rejects_bad_input_before_loading(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    tool = os.path.join(REPO, "tools/eval_downstream.py")
    for extra, words in [(["--task", f"t={bad}"], "bad.jsonl:1"), (["--task", f"t={tmp_path}/none.jsonl"], "no file"),
                         ([], "at least one --task"), (["--task", f"t={good_task(tmp_path)}"], "cannot load")]:
        proc = subprocess.run([sys.executable, tool, "--load", str(tmp_path / "missing"), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and words in proc.stderr, (extra, proc.stderr[-1000:])


# ----------------------------------------------------------------------------- task builder
def test_continuation_choice_items_are_real_continuations():
    from megatron_mile.evaluation.downstream import continuation_choice_items

    documents = [" ".join(f"d{d}w{k}" for k in range(40)) for d in range(6)] + ["too short"]
    items = continuation_choice_items(documents, 50, context_words=8, continuation_words=3, num_choices=4, seed=7)
    assert len(items) == 50 and {item["label"] for item in items} == {0, 1, 2, 3}
    for item in items:
        doc = item["context"].split()[0].split("w")[0]
        right = item["choices"][item["label"]]
        assert f"{item['context']} {right}" in documents[int(doc[1:])]  # the true next words
        others = [c for k, c in enumerate(item["choices"]) if k != item["label"]]
        assert len(set(item["choices"])) == 4 and all(not c.startswith(doc + "w") for c in others)
    assert items == continuation_choice_items(documents, 50, context_words=8, continuation_words=3, num_choices=4,
                                              seed=7)


def test_make_choice_task_reads_only_the_requested_split(tmp_path):
    import numpy as np

    from megatron_mile.data.indexed import IndexedDatasetWriter
    from megatron_mile.evaluation.downstream import make_task_main

    prefix = str(tmp_path / "docs_text_document")
    writer = IndexedDatasetWriter(prefix, np.uint16)
    docs = [np.arange(100 * d, 100 * d + 30, dtype=np.uint16) for d in range(10)]  # ids say which document
    writer.add_documents(np.concatenate(docs), [30] * 10)
    writer.finalize()
    out = tmp_path / "task.jsonl"
    make_task_main(["--data-path", prefix, "--split", "60,40,0", "--split-name", "valid", "--tokenizer-type",
                    "NullTokenizer", "--vocab-size", "1000", "--num-items", "30", "--context-words", "5",
                    "--continuation-words", "2",
                    "--output", str(out)])
    items = [json.loads(line) for line in out.read_text().splitlines()]
    used = {int(word) // 100 for item in items for text in [item["context"], *item["choices"]] for word in text.split()}
    assert used == {6, 7, 8, 9}  # megatron's 60/40 split of 10 documents: the last 4 are validation
