"""Zero-shot downstream evaluation of a checkpoint by log-likelihood, as lm-evaluation-harness scores it.

A request is a ``(context, continuation)`` pair of strings; its score is the summed log-probability
of the continuation's tokens given the context, and whether greedy decoding would have produced
them. Multiple-choice tasks (PIQA, HellaSwag, ARC, SIQA, StoryCloze, ...) pick the candidate with
the highest score (``acc``) or the highest score per character of the candidate (``acc_norm``).

The conventions are lm-evaluation-harness 0.4.13's, so numbers compare with the paper's tables:
all trailing whitespace of the context (spaces, tabs, newlines) moves to the continuation; the pair
is tokenised as one string and split where the context's own tokens end; an empty context starts
from the end-of-document token (unless the continuation itself starts with it); an input longer
than the model's sequence length keeps its last ``seq_length + 1`` tokens. Perplexity tasks
(``loglikelihood_rolling``) cut a text into lm-eval's rolling windows (:func:`rolling_windows`).

Tasks come from jsonl files, one item per line: ``{"context": str, "choices": [str, ...],
"label": int}`` (:func:`read_multiple_choice`), or from lm-evaluation-harness itself through
:func:`lm_eval_model` (its task registry; datasets must be in the local Hugging Face cache, since
nothing is downloaded here). ``tools/eval_downstream.py`` is the command line.

The model runs on one process (``load_model_for_eval``: any saved TP/PP layout, one GPU or CPU).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "ContinuationScore",
    "continuation_choice_items",
    "LoglikelihoodScorer",
    "MultipleChoiceItem",
    "evaluate_multiple_choice",
    "lm_eval_model",
    "read_multiple_choice",
    "rolling_windows",
]


@dataclass
class ContinuationScore:
    logprob: float
    """Sum of the continuation tokens' log-probabilities (nats)."""
    is_greedy: bool
    """Whether every continuation token is the model's most probable next token."""
    num_tokens: int


class LoglikelihoodScorer:
    """Scores continuations with a causal LM called as ``model(tokens, position_ids, None)`` ->
    logits ``[b, s, V]`` (megatron's ``GPTModel`` without labels).

    Args:
        model: the model, in eval mode.
        tokenizer: a :class:`megatron_mile.data.tokenizers.MileTokenizer` (``tokenize``,
            ``detokenize``, ``eod``).
        seq_length: the longest input the model takes.
        batch_size: sequences per forward pass.
        device: where the inputs go (default: the model's parameters' device).
    """

    def __init__(self, model, tokenizer, seq_length: int, batch_size: int = 8, device=None):
        self.model = model
        self.tokenizer = tokenizer
        self.seq_length = seq_length
        self.batch_size = batch_size
        self.device = device or next(model.parameters()).device

    # ---------------------------------------------------------------- tokenisation
    def encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """lm-evaluation-harness's split (``TemplateLM.loglikelihood`` / ``_encode_pair``): all
        trailing whitespace (``str.rstrip()``) joins the continuation, the pair is tokenised whole and
        cut where the context's tokens end. An empty context is the end-of-document token, or the
        continuation's first token when that is already the end-of-document token (as lm-eval). A
        context of whitespace only is empty once stripped; lm-eval then passes no context token at
        all, which a causal model cannot score, so we condition on the end-of-document token."""
        if not context:
            ids = self.tokenizer.tokenize(continuation)
            return ([self._eod()], ids) if not ids or ids[0] != self._eod() else (ids[:1], ids[1:])
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        if not stripped:
            return [self._eod()], self.tokenizer.tokenize(continuation)
        whole = self.tokenizer.tokenize(stripped + continuation)
        context_ids = self.tokenizer.tokenize(stripped)
        return whole[:len(context_ids)], whole[len(context_ids):]

    def _eod(self) -> int:
        eod = self.tokenizer.eod
        if eod is None:
            raise ValueError("the tokenizer has no end-of-document token to start an empty context from")
        return eod

    # ---------------------------------------------------------------- scoring
    def score(self, pairs: Sequence[Tuple[str, str]]) -> List[ContinuationScore]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in pairs])

    @torch.no_grad()
    def score_tokens(self, token_pairs: Sequence[Tuple[Sequence[int], Sequence[int]]],
                     progress: Optional[Callable[[int, int], None]] = None) -> List[ContinuationScore]:
        """Scores of ``(context_ids, continuation_ids)`` pairs, batched longest first."""
        inputs = []
        for context, continuation in token_pairs:
            if not continuation:
                raise ValueError("a continuation with no tokens cannot be scored")
            if len(continuation) > self.seq_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                                 f"sequence length {self.seq_length}")
            if not context:
                raise ValueError("a context with no tokens: start it with the end-of-document token")
            whole = (list(context) + list(continuation))[-(self.seq_length + 1):]
            inputs.append((whole, len(continuation)))
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
        scores: List[Optional[ContinuationScore]] = [None] * len(inputs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(inputs[batch[0]][0]) - 1
            tokens = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):  # right padding: causal attention never looks ahead
                whole = inputs[i][0]
                tokens[row, :len(whole) - 1] = torch.tensor(whole[:-1])
            tokens = tokens.to(self.device)
            positions = torch.arange(width, device=self.device).unsqueeze(0).expand_as(tokens)
            logp = torch.log_softmax(self.model(tokens, positions, None).float(), dim=-1)
            for row, i in enumerate(batch):
                whole, n = inputs[i]
                end = len(whole) - 1
                target = torch.tensor(whole[-n:], device=self.device)
                span = logp[row, end - n:end]
                scores[i] = ContinuationScore(
                    logprob=float(span.gather(-1, target.unsqueeze(-1)).sum()),
                    is_greedy=bool((span.argmax(-1) == target).all()),
                    num_tokens=n,
                )
            if progress is not None:
                progress(min(start + self.batch_size, len(order)), len(order))
        return scores

    def rolling_logprob(self, text: str) -> float:
        """Log-likelihood (nats) of a whole text, every token predicted exactly once, in
        lm-evaluation-harness's rolling windows (:func:`rolling_windows` with the end-of-document
        token as prefix): ``loglikelihood_rolling``, what perplexity tasks such as wikitext use.
        An empty text scores 0."""
        pairs = rolling_windows(self.tokenizer.tokenize(text), self._eod(), self.seq_length)
        return sum(s.logprob for s in self.score_tokens(pairs))

    @torch.no_grad()
    def generate_greedy(self, context: str, until: Sequence[str], max_new_tokens: int) -> str:
        """Greedy continuation of ``context`` up to any of the ``until`` strings (not included),
        the end-of-document token or ``max_new_tokens`` tokens (recomputes the whole window per
        token: short answers, as in TriviaQA or NaturalQuestions)."""
        tokens = self.tokenizer.tokenize(context) or [self._eod()]
        generated: List[int] = []
        for _ in range(max_new_tokens):
            window = (tokens + generated)[-self.seq_length:]
            inp = torch.tensor([window], device=self.device)
            positions = torch.arange(len(window), device=self.device).unsqueeze(0)
            next_id = int(self.model(inp, positions, None)[0, -1].float().argmax())
            if next_id == self.tokenizer.eod:
                break
            generated.append(next_id)
            text = self.tokenizer.detokenize(generated)
            cut = [text.index(stop) for stop in until if stop and stop in text]
            if cut:
                return text[:min(cut)]
        return self.tokenizer.detokenize(generated)


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> List[Tuple[List[int], List[int]]]:
    """``(context, continuation)`` token windows that predict every token of ``tokens`` once, as
    lm-evaluation-harness 0.4.13 cuts a text for ``loglikelihood_rolling`` (``lm_eval/utils.py``:
    ``get_rolling_token_windows`` with ``context_len=1``, then ``make_disjoint_window``).

    The first window predicts the first ``min(max_length, n)`` tokens from ``prefix_token``; each
    further window predicts the next ``max_length`` tokens (fewer in the last one) and is conditioned
    on the tokens just before them, so that context plus continuation is ``max_length + 1`` tokens:
    one token of context for a full window, ``max_length - k + 1`` for a last window of ``k``."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_token], tokens[:first])]
    end = first
    while end < len(tokens):
        start, end = end, min(len(tokens), end + max_length)
        # end - max_length - 1 >= 0 here: a second window exists only when the first one was full.
        windows.append((tokens[end - max_length - 1:start], tokens[start:end]))
    return windows


# -------------------------------------------------------------------- multiple-choice tasks
@dataclass
class MultipleChoiceItem:
    context: str
    choices: List[str]
    label: int


def read_multiple_choice(path: str) -> List[MultipleChoiceItem]:
    """Items of a jsonl task file; a malformed line is an error naming the file and line."""
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                item = MultipleChoiceItem(str(record["context"]), [str(c) for c in record["choices"]],
                                          int(record["label"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected {{\"context\": str, \"choices\": [str, ...], "
                                 f"\"label\": int}}: {exc}") from None
            if len(item.choices) < 2 or not 0 <= item.label < len(item.choices):
                raise ValueError(f"{path}:{number}: needs at least 2 choices and a label indexing them, got "
                                 f"{len(item.choices)} choices and label {item.label}")
            items.append(item)
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def _mean_and_stderr(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def evaluate_multiple_choice(scorer: LoglikelihoodScorer, items: Sequence[MultipleChoiceItem],
                             target_delimiter: str = " ", log: Optional[Callable[[str], None]] = None) -> dict:
    """``acc`` (highest log-likelihood) and ``acc_norm`` (per character of the choice) with their
    standard errors, as lm-evaluation-harness reports them, and per item ``correct`` /
    ``correct_norm`` (1.0 or 0.0, in item order: paired comparisons of runs); each choice is scored
    as the continuation ``target_delimiter + choice`` of the item's context."""
    pairs, owners = [], []
    for index, item in enumerate(items):
        for choice in item.choices:
            pairs.append(scorer.encode_pair(item.context, target_delimiter + choice))
            owners.append(index)
    started = last = time.perf_counter()

    def progress(done: int, total: int) -> None:  # a line every 10 s, and at the end
        nonlocal last
        now = time.perf_counter()
        if log is None or (now - last < 10 and done < total):
            return
        last = now
        eta = (now - started) / done * (total - done)
        log(f"  scored {done}/{total} continuations ({done / (now - started):.1f}/s, ETA {eta:.0f} s)")

    scores = scorer.score_tokens(pairs, progress=progress)
    per_item: List[List[float]] = [[] for _ in items]
    for owner, score in zip(owners, scores):
        per_item[owner].append(score.logprob)
    correct, correct_norm = [], []
    for item, logprobs in zip(items, per_item):
        lengths = [max(1, len(choice)) for choice in item.choices]
        normalised = [lp / n for lp, n in zip(logprobs, lengths)]
        correct.append(float(max(range(len(logprobs)), key=logprobs.__getitem__) == item.label))
        correct_norm.append(float(max(range(len(normalised)), key=normalised.__getitem__) == item.label))
    acc, acc_stderr = _mean_and_stderr(correct)
    acc_norm, acc_norm_stderr = _mean_and_stderr(correct_norm)
    chance = sum(1.0 / len(item.choices) for item in items) / len(items)
    return dict(acc=acc, acc_stderr=acc_stderr, acc_norm=acc_norm, acc_norm_stderr=acc_norm_stderr,
                chance=chance, num_items=len(items), correct=correct, correct_norm=correct_norm)


def continuation_choice_items(documents: Sequence[str], num_items: int, context_words: int = 24,
                              continuation_words: int = 6, num_choices: int = 4, seed: int = 1234,
                              max_choice_chars: int = 80) -> List[dict]:
    """A multiple-choice cloze from held-out text, for checkpoints no public benchmark suits (small
    models, offline machines): the context is ``context_words`` words of a document, the right
    choice the next ``continuation_words`` words, the others equally long word spans of other
    documents; the label is uniform. Words are whitespace-separated and rejoined by one space;
    spans longer than ``max_choice_chars`` (hashes, URLs) are not used as choices."""
    import random

    rng = random.Random(seed)
    words = [document.split() for document in documents]
    usable = [i for i, w in enumerate(words) if len(w) >= context_words + continuation_words]
    if len(usable) < num_choices:
        raise ValueError(f"{len(usable)} documents have {context_words + continuation_words} words or more; "
                         f"{num_choices} are needed")
    items = []
    while len(items) < num_items:
        for _ in range(1000):
            i = rng.choice(usable)
            start = rng.randrange(len(words[i]) - context_words - continuation_words + 1)
            correct = " ".join(words[i][start + context_words:start + context_words + continuation_words])
            if len(correct) <= max_choice_chars:
                break
        else:
            raise ValueError(f"no span of {continuation_words} words within {max_choice_chars} characters")
        context = " ".join(words[i][start:start + context_words])
        distractors: List[str] = []
        for _ in range(1000):
            if len(distractors) == num_choices - 1:
                break
            j = rng.choice(usable)
            offset = rng.randrange(len(words[j]) - continuation_words + 1)
            candidate = " ".join(words[j][offset:offset + continuation_words])
            if j != i and candidate != correct and candidate not in distractors and len(candidate) <= max_choice_chars:
                distractors.append(candidate)
        else:
            raise ValueError("could not find distinct distractors: the documents are too alike")
        label = rng.randrange(num_choices)
        items.append({"context": context, "choices": distractors[:label] + [correct] + distractors[label:],
                      "label": label})
    return items


# -------------------------------------------------------------------- lm-evaluation-harness
def lm_eval_model(scorer: LoglikelihoodScorer):
    """The scorer as an ``lm_eval.api.model.LM`` (lm-evaluation-harness installed), for
    ``lm_eval.simple_evaluate(model=..., tasks=[...])``."""
    from lm_eval.api.model import LM

    class MegatronMileLM(LM):
        def __init__(self):
            super().__init__()
            self.scorer = scorer

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            scores = self.scorer.score([request.args for request in requests])
            return [(s.logprob, s.is_greedy) for s in scores]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return [self.scorer.rolling_logprob(request.args[0]) for request in requests]

        def generate_until(self, requests, disable_tqdm: bool = False):
            out = []
            for request in requests:
                context, kwargs = request.args
                until = kwargs.get("until", [])
                until = [until] if isinstance(until, str) else list(until)
                out.append(self.scorer.generate_greedy(context, until, int(kwargs.get("max_gen_toks", 256))))
            return out

    return MegatronMileLM()


# -------------------------------------------------------------------- command line
def _task_spec(text: str) -> Tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH.jsonl, got {text!r}")
    return name, path


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="eval_downstream.py",
        description="Zero-shot downstream accuracy of a checkpoint (log-likelihood scoring, "
                    "lm-evaluation-harness conventions), on one GPU or CPU.")
    p.add_argument("--load", required=True, help="Checkpoint directory (a --save directory or one iter_N).")
    p.add_argument("--iteration", type=int, default=None, help="Iteration (default: the latest).")
    p.add_argument("--tokenizer-model", default=None,
                   help="Tokenizer model file or directory instead of the one the checkpoint's args.json names "
                        "(e.g. a checkpoint copied to another machine).")
    p.add_argument("--vocab-file", default=None, help="GPT-2 vocab.json instead of the checkpoint's.")
    p.add_argument("--merge-file", default=None, help="GPT-2 merges.txt instead of the checkpoint's.")
    p.add_argument("--task", dest="tasks", type=_task_spec, action="append", default=[], metavar="NAME=PATH",
                   help='A multiple-choice jsonl task: {"context": str, "choices": [str, ...], "label": int} '
                        "per line; repeat for several.")
    p.add_argument("--lm-eval-tasks", default=None,
                   help="Comma-separated lm-evaluation-harness tasks (needs lm_eval installed and the datasets "
                        "in the local Hugging Face cache).")
    p.add_argument("--lm-eval-include-path", default=None,
                   help="A directory of your own lm-evaluation-harness task YAML files (lm_eval's --include_path), "
                        "e.g. a perplexity task over local text.")
    p.add_argument("--num-fewshot", type=int, default=0, help="Few-shot examples for --lm-eval-tasks.")
    p.add_argument("--limit", type=int, default=None, help="At most this many items per task.")
    p.add_argument("--target-delimiter", default=" ", help="Put between context and choice (jsonl tasks).")
    p.add_argument("--batch-size", type=int, default=8, help="Sequences per forward pass.")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="Compute dtype (default: bfloat16 on GPU, float32 on CPU).")
    p.add_argument("--output", default=None, help="Write the results as JSON (atomically).")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    if not args.tasks and not args.lm_eval_tasks:
        raise SystemExit("eval_downstream: give at least one --task NAME=PATH or --lm-eval-tasks")
    if args.lm_eval_include_path and not os.path.isdir(args.lm_eval_include_path):
        raise SystemExit(f"eval_downstream: --lm-eval-include-path {args.lm_eval_include_path} is not a directory")
    task_items = {}
    for name, path in args.tasks:  # read every task before loading the model: bad input fails fast
        if not os.path.isfile(path):
            raise SystemExit(f"eval_downstream: task {name}: no file {path}")
        try:
            task_items[name] = read_multiple_choice(path)[:args.limit]
        except ValueError as exc:
            raise SystemExit(f"eval_downstream: task {name}: {exc}") from None

    from megatron_mile.training.logger import fused_path_notice

    dtype_name = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    try:
        with fused_path_notice():  # megatron-core's notices on import and model building: one line
            from megatron_mile.data.tokenizers import build_tokenizer
            from megatron_mile.training.checkpointing import load_model_for_eval

            model, train_args = load_model_for_eval(args.load, args.iteration, dtype=getattr(torch, dtype_name))
        tokenizer = build_tokenizer(train_args.tokenizer_type,
                                    tokenizer_model=args.tokenizer_model or train_args.tokenizer_model,
                                    vocab_file=args.vocab_file or train_args.vocab_file,
                                    merge_file=args.merge_file or train_args.merge_file,
                                    vocab_size=train_args.vocab_size)
    except (OSError, ValueError) as exc:  # no checkpoint there, or its tokenizer file moved
        raise SystemExit(f"eval_downstream: cannot load {args.load}: {exc} (a moved tokenizer: "
                         f"--tokenizer-model / --vocab-file / --merge-file)") from None
    scorer = LoglikelihoodScorer(model, tokenizer, train_args.seq_length, args.batch_size)
    results = {"checkpoint": os.path.abspath(args.load), "iteration": args.iteration, "dtype": dtype_name,
               "tasks": {}}
    for name, items in task_items.items():
        print(f"[eval_downstream] {name}: {len(items)} items", flush=True)
        metrics = evaluate_multiple_choice(scorer, items, args.target_delimiter, log=lambda m: print(m, flush=True))
        results["tasks"][name] = metrics
        print(f"[eval_downstream] {name}: acc {metrics['acc']:.4f} +- {metrics['acc_stderr']:.4f}, "
              f"acc_norm {metrics['acc_norm']:.4f} +- {metrics['acc_norm_stderr']:.4f} "
              f"(chance {metrics['chance']:.4f}, {metrics['num_items']} items)", flush=True)
    if args.lm_eval_tasks:
        import lm_eval
        from lm_eval.tasks import TaskManager

        evaluated = lm_eval.simple_evaluate(model=lm_eval_model(scorer), tasks=args.lm_eval_tasks.split(","),
                                            num_fewshot=args.num_fewshot, limit=args.limit,
                                            task_manager=TaskManager(include_path=args.lm_eval_include_path))
        results["lm_eval"] = evaluated["results"]
        for task, metrics in evaluated["results"].items():
            print(f"[eval_downstream] {task}: {metrics}", flush=True)
    if args.output:
        from megatron_mile.analysis._io import finite_or_none, write_json

        for metrics in results["tasks"].values():  # JSON has no NaN: a stderr of one item is null
            metrics.update({k: finite_or_none(v) for k, v in metrics.items() if isinstance(v, float)})
        write_json(args.output, results)
        print(f"[eval_downstream] wrote {args.output}")
    return 0


def build_task_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="make_choice_task.py",
        description="A multiple-choice continuation task (jsonl for eval_downstream.py --task) from the held-out "
                    "documents of Megatron indexed datasets, detokenised with the training tokenizer.")
    p.add_argument("--data-path", nargs="+", required=True, help="Dataset prefixes (.bin/.idx).")
    p.add_argument("--split", default=None, help="The training --split (e.g. 969,30,1); default: all documents.")
    p.add_argument("--split-name", choices=["train", "valid", "test"], default="valid")
    p.add_argument("--tokenizer-type", required=True)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only.")
    p.add_argument("--num-items", type=int, default=500)
    p.add_argument("--context-words", type=int, default=24)
    p.add_argument("--continuation-words", type=int, default=6)
    p.add_argument("--num-choices", type=int, default=4)
    p.add_argument("--max-choice-chars", type=int, default=80, help="Longer word spans are not used as choices.")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--output", required=True, help="The task file (jsonl, written atomically).")
    return p


def make_task_main(argv: Optional[Sequence[str]] = None) -> int:
    import os

    import numpy as np

    from megatron_mile.analysis._io import write_text
    from megatron_mile.analysis.frequency import document_token_range, iter_token_chunks, open_indexed_dataset
    from megatron_mile.data.tokenizers import build_tokenizer

    args = build_task_parser().parse_args(argv)
    for prefix in args.data_path:
        if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
            raise SystemExit(f"make_choice_task: no dataset {prefix}.bin/.idx")
    try:
        tokenizer = build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                                    vocab_file=args.vocab_file, merge_file=args.merge_file, vocab_size=args.vocab_size)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"make_choice_task: tokenizer: {exc}") from None
    documents = []
    for prefix in args.data_path:
        dataset = open_indexed_dataset(prefix)
        first, end = document_token_range(dataset, args.split, args.split_name)
        starts = np.concatenate([[0], np.cumsum(dataset.index.sequence_lengths.astype(np.int64))])
        doc_starts = starts[dataset.index.document_indices]
        for begin, stop in zip(doc_starts[:-1], doc_starts[1:]):
            if first <= begin and stop <= end and stop > begin:
                chunks = iter_token_chunks(dataset, token_range=(int(begin), int(stop)))
                documents.append(tokenizer.detokenize(np.concatenate(list(chunks)).tolist()))
    try:
        items = continuation_choice_items(documents, args.num_items, args.context_words, args.continuation_words,
                                          args.num_choices, args.seed, args.max_choice_chars)
    except ValueError as exc:
        raise SystemExit(f"make_choice_task: {exc}") from None
    write_text(args.output, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    print(f"[make_choice_task] {len(items)} items from {len(documents)} {args.split_name} documents -> {args.output}")
    return 0
