"""The manifest and the staged commit: re-runs killed before each rename step, Megatron-LM's merge
tool on our output directory, readers refusing files that disagree with their manifest.

References: token ids parsed from the text by the test itself (NullTokenizer data is
space-separated ids), each tokenizer library's own encode, megatron-core's ``IndexedDataset`` /
``IndexedDatasetBuilder``, and Megatron-LM's ``tools/merge_datasets.py`` directory walk, written
out below as that tool does it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from megatron_mile.data.blend import load_datasets
from megatron_mile.data.merge import main as merge_main
from megatron_mile.data.preprocess import main as preprocess_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 1000  # NullTokenizer ids 0..999, eod 1000


def docs_of(records, domain):
    return [[int(x) for x in r["text"].split()] + [VOCAB] for r in records
            if r["meta"]["pile_set_name"] == domain]


def write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def make_run(seed, domains):
    """Records of ``domains`` with seeded random ids: each run's data differs from the other's."""
    rng = np.random.default_rng(seed)
    return [{"text": " ".join(map(str, rng.integers(0, VOCAB, rng.integers(5, 60)))),
             "meta": {"pile_set_name": d}} for _ in range(40) for d in domains]


def megatron_docs(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def manifest_of(prefix):
    return os.path.join(os.path.dirname(prefix), "mile-manifests", os.path.basename(prefix) + ".json")


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(root, f), directory)
                  for root, _, files in os.walk(directory) for f in files)


def cli(args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), *args],
                          capture_output=True, text=True, timeout=120, env=env)


NULL_FLAGS = ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--append-eod",
              "--split-by", "meta.pile_set_name", "--quiet"]
OLD_DOMAINS, NEW_DOMAINS = ("A", "B", "C"), ("A", "B")  # the re-run drops domain C


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    old, new = make_run(1, OLD_DOMAINS), make_run(2, NEW_DOMAINS)
    return (write_jsonl(root / "old.jsonl", old), {d: docs_of(old, d) for d in OLD_DOMAINS},
            write_jsonl(root / "new.jsonl", new), {d: docs_of(new, d) for d in NEW_DOMAINS})


def training_check(prefix):
    """What training runs before its first step on ``--data-path prefix``."""
    from megatron_mile.training.data import check_data_tokenizer

    check_data_tokenizer(argparse.Namespace(
        data_path=[prefix], tokenizer_type="NullTokenizer", vocab_size=VOCAB, tokenizer_model=None,
        vocab_file=None, merge_file=None))


def what_readers_see(out, prefix):
    """``{domain: documents}`` as each reader gets them, or the error line a reader gave."""
    seen = {}
    try:
        seen["blend"] = {d["domain"]: megatron_docs(d["prefix"]) for d in load_datasets([manifest_of(prefix)])}
    except ValueError as e:
        seen["blend"] = str(e)
    training = {}
    for domain in OLD_DOMAINS:
        ds = f"{prefix}_{domain}_text_document"
        if os.path.exists(ds + ".idx") or os.path.exists(ds + ".bin"):
            try:
                training_check(ds)
                training[domain] = megatron_docs(ds)
            except ValueError as e:
                training = str(e)
                break
    seen["training"] = training
    merged = str(out / "merged" / "m")
    code = merge_main(["--input", manifest_of(prefix), "--output-prefix", merged])
    seen["merge"] = ({d["domain"]: megatron_docs(d["prefix"]) for d in load_datasets([manifest_of(merged)])}
                     if code == 0 else "refused")
    shutil.rmtree(out / "merged", ignore_errors=True)
    return seen


# Steps of the re-run's commit: per dataset (A, B) delete the old .idx, move .bin, move .idx;
# delete C's .idx and .bin; move the manifest.
COMMIT_STEPS = 3 * len(NEW_DOMAINS) + 2 + 1


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_rerun_killed_before_each_commit_step_is_all_old_or_all_new(tmp_path, two_runs, sig, capsys):
    old_input, old_docs, new_input, new_docs = two_runs
    base = tmp_path / "base"
    assert preprocess_main(["--input", old_input, "--output-prefix", str(base / "p"), *NULL_FLAGS]) == 0
    outcomes = []
    for step in range(1, COMMIT_STEPS + 2):  # the last one: the signal never comes
        out = tmp_path / f"step{step}"
        shutil.copytree(base, out)
        prefix = str(out / "p")
        env = {**os.environ, "MILE_TEST_SIGNAL_BEFORE_COMMIT_STEP": f"{step}:{sig}"}
        proc = cli(["--input", new_input, "--output-prefix", prefix, *NULL_FLAGS], env=env)
        killed = step <= COMMIT_STEPS
        expected_rc = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 128 + signal.SIGTERM}[sig] if killed else 0
        assert proc.returncode == expected_rc, (step, proc.stderr)
        seen = what_readers_see(out, prefix)
        for reader, got in seen.items():
            if isinstance(got, str):  # refused: one line naming a file of this output
                assert sig == "SIGKILL" and (reader == "merge" or str(out) in got), (step, reader, got)
                assert "\n" not in got
            else:  # accepted: exactly one run's datasets, all of them
                assert got == old_docs or got == new_docs, (step, reader, sorted(got))
        outcomes.append(seen)
        if sig == "SIGTERM" or not killed:
            # SIGTERM waits for the commit to end: always the whole new set, no temporaries.
            assert all(got == new_docs for got in seen.values()), step
            assert [f for f in files_under(out) if "staging-" in f] == []
        else:
            # After a kill -9 the next run completes the picture and removes the dead staging.
            assert cli(["--input", new_input, "--output-prefix", prefix, *NULL_FLAGS]).returncode == 0
            assert what_readers_see(out, prefix) == {"blend": new_docs, "training": new_docs, "merge": new_docs}
            assert [f for f in files_under(out) if "staging-" in f] == []
        shutil.rmtree(out)
    if sig == "SIGKILL":  # before the manifest moves, readers saw the old set or refused it
        assert outcomes[0]["blend"] == old_docs
        assert all(isinstance(o["blend"], str) for o in outcomes[1:COMMIT_STEPS])
        assert outcomes[-1]["blend"] == new_docs


def test_readers_refuse_a_dataset_that_disagrees_with_its_manifest(tmp_path, two_runs):
    old_input, old_docs, new_input, _ = two_runs
    prefix = str(tmp_path / "p")
    assert preprocess_main(["--input", old_input, "--output-prefix", prefix, *NULL_FLAGS]) == 0
    ds = f"{prefix}_A_text_document"
    # Same sizes, other content: the .idx checksum tells them apart.
    raw = bytearray(open(ds + ".idx", "rb").read())
    raw[34] ^= 1  # the first sequence length, one token more or less
    open(ds + ".idx", "wb").write(bytes(raw))
    for reader in (lambda: load_datasets([manifest_of(prefix)]), lambda: training_check(ds)):
        with pytest.raises(ValueError, match=f"{ds}.idx: its checksum differs"):
            reader()
    assert merge_main(["--input", manifest_of(prefix), "--output-prefix", str(tmp_path / "m")]) == 1
    os.remove(ds + ".bin")
    with pytest.raises(ValueError, match=f"{ds}.bin: missing"):
        load_datasets([manifest_of(prefix)])


# ----------------------------------------------------------------------------------------------
# Megatron-LM's tools/merge_datasets.py on our output directory.
# ----------------------------------------------------------------------------------------------


def megatron_merge_walk(directory):
    """Megatron-LM's tools/merge_datasets.py, its directory walk as written there: every *file* of
    the directory is half of a .bin/.idx pair (directories are skipped); then add_index each."""
    prefixes = set()
    for basename in os.listdir(directory):
        prefix, ext = os.path.splitext(basename)
        if prefix in prefixes:
            continue
        if not os.path.isfile(os.path.join(directory, basename)):
            continue
        ext_pair = ".bin" if ext == ".idx" else ".idx"
        assert os.path.isfile(os.path.join(directory, prefix) + ext_pair), \
            f"ERROR: {ext_pair} file not provided for {os.path.join(directory, prefix)}"
        prefixes.add(prefix)
    return sorted(prefixes)


def megatron_merge(directory, output_prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    builder = None
    for prefix in megatron_merge_walk(directory):
        if builder is None:
            dtype = IndexedDataset(os.path.join(directory, prefix)).index.dtype
            builder = IndexedDatasetBuilder(output_prefix + ".bin", dtype=dtype)
        builder.add_index(os.path.join(directory, prefix))
    builder.finalize(output_prefix + ".idx")


@pytest.fixture(scope="module")
def real_tokenizers(tmp_path_factory):
    """name -> (CLI flags, the library's own encode, eod) for three small tokenizers."""
    pytest.importorskip("tokenizers")
    import sentencepiece as spm
    from tokenizers import Tokenizer

    from megatron_mile.data import corpus as corpus_mod
    from megatron_mile.data.small_tokenizers import (
        train_small_gpt2,
        train_small_huggingface,
        train_small_sentencepiece,
    )

    root = tmp_path_factory.mktemp("tok")
    corpus = str(root / "corpus.jsonl")
    corpus_mod.write_text_corpus(corpus, min_bytes=400_000, seed=3)
    texts = [json.loads(line)["text"] for line in open(corpus)]
    sp_model = train_small_sentencepiece(corpus, str(root / "sp"), vocab_size=800)
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    hf_dir = train_small_huggingface(texts, str(root / "hf"), vocab_size=800)
    hf = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    vocab, merges = train_small_gpt2(texts, str(root / "gpt2"), vocab_size=800)
    from tokenizers import ByteLevelBPETokenizer

    gpt2 = ByteLevelBPETokenizer(vocab, merges, add_prefix_space=False)
    return corpus, {
        "sentencepiece": (["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model],
                          sp.encode_as_ids, sp.eos_id()),
        "huggingface": (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir],
                        lambda t: hf.encode(t, add_special_tokens=False).ids, hf.token_to_id("</s>")),
        "gpt2": (["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges],
                 lambda t: gpt2.encode(t).ids, gpt2.token_to_id("<|endoftext|>")),
    }


@pytest.mark.parametrize("name", ["sentencepiece", "huggingface", "gpt2"])
def test_megatron_merge_tool_reads_our_output_directory(tmp_path, real_tokenizers, name):
    """Megatron-LM's preprocess-then-merge test, on our tool's output: two runs (one split by
    domain) into one directory, then Megatron's merge of the whole directory."""
    corpus, toks = real_tokenizers
    flags, encode, eod = toks[name]
    records = [json.loads(line) for line in open(corpus)]
    half = len(records) // 2
    parts = [write_jsonl(tmp_path / "a.jsonl", records[:half]), write_jsonl(tmp_path / "b.jsonl", records[half:])]
    out = tmp_path / "out"
    assert preprocess_main(["--input", parts[0], "--output-prefix", str(out / "a"), *flags, "--append-eod",
                            "--quiet"]) == 0
    assert preprocess_main(["--input", parts[1], "--output-prefix", str(out / "b"), *flags, "--append-eod",
                            "--split-by", "meta.pile_set_name", "--quiet"]) == 0
    megatron_merge(str(out), str(tmp_path / "megatron"))
    # Megatron's order: sorted dataset file names.
    by_name = {"a_text_document": [r for r in records[:half]]}
    for r in records[half:]:
        safe = r["meta"]["pile_set_name"].replace(" (", "_").replace(")", "").replace(" ", "_")
        by_name.setdefault(f"b_{safe}_text_document", []).append(r)
    want = [encode(r["text"]) + [eod] for n in sorted(by_name) for r in by_name[n] if encode(r["text"])]
    assert megatron_docs(str(tmp_path / "megatron")) == want
    # Our merge tool on the directory gives the same bytes.
    assert merge_main(["--input", str(out), "--output-prefix", str(tmp_path / "ours")]) == 0
    for ext in (".bin", ".idx"):
        assert open(tmp_path / f"ours{ext}", "rb").read() == open(tmp_path / f"megatron{ext}", "rb").read()


def test_manifest_keeps_what_training_needs(tmp_path, real_tokenizers):
    import hashlib

    corpus, toks = real_tokenizers
    flags = toks["gpt2"][0]
    prefix = str(tmp_path / "g")
    assert preprocess_main(["--input", corpus, "--output-prefix", prefix, *flags, "--quiet"]) == 0
    with open(manifest_of(prefix)) as f:
        manifest = json.load(f)
    vocab, merges = flags[3], flags[5]
    with open(vocab, "rb") as a, open(merges, "rb") as b:
        sha = hashlib.sha256(a.read() + b.read()).hexdigest()
    assert manifest["tokenizer"] == {"type": "GPT2BPETokenizer", "vocab_size": len(json.load(open(vocab))),
                                     "eod": json.load(open(vocab))["<|endoftext|>"], "path": os.path.abspath(vocab),
                                     "merge_file": os.path.abspath(merges), "sha256": sha}
    (entry,) = manifest["datasets"]
    docs = megatron_docs(prefix + "_text_document")
    assert (entry["documents"], entry["tokens"]) == (len(docs), sum(map(len, docs)))
    with open(prefix + "_text_document.idx", "rb") as f:
        assert entry["idx_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert entry["bin_bytes"] == os.path.getsize(prefix + "_text_document.bin")
    assert files_under(tmp_path) == ["g_text_document.bin", "g_text_document.idx", "mile-manifests/g.json"]
