"""mile-preprocess: round trips through megatron's reader, the .idx format, failure behaviour.

References are independent of the code under test: each tokenizer library's own encode (and a
from-scratch GPT-2 BPE), ``struct`` parsing of the ``.idx``, and megatron-core's
``IndexedDatasetBuilder`` / ``IndexedDataset``. Text is real text from installed packages.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from megatron_mile.data import corpus as corpus_mod
from megatron_mile.data.preprocess import main as preprocess_main
from megatron_mile.data.small_tokenizers import (
    train_small_gpt2,
    train_small_huggingface,
    train_small_sentencepiece,
)

zstandard = pytest.importorskip("zstandard")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = ["--block-bytes", "65536"]  # many blocks even for small inputs: exercises ordering


# ----------------------------------------------------------------------------------------------
# Fixtures: a small real-text corpus with two json keys, and three small tokenizers.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("preprocess")


@pytest.fixture(scope="module")
def records(workdir):
    """~300 Pile-style records: text, a second key (first paragraph) and a domain."""
    path = str(workdir / "corpus.jsonl")
    corpus_mod.write_text_corpus(path, min_bytes=1_200_000, seed=1)
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            obj["summary"] = obj["text"].split("\n\n")[0][:500]
            out.append(obj)
    assert len({r["meta"]["pile_set_name"] for r in out}) >= 4
    return out


def write_jsonl(path, records, zst=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    if zst:
        # Two frames, as Pile shards have several: the reader must continue across them.
        cctx = zstandard.ZstdCompressor(write_checksum=True)
        half = data.rfind(b"\n", 0, len(data) // 2) + 1
        data = cctx.compress(data[:half]) + cctx.compress(data[half:])
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.fixture(scope="module")
def inputs(workdir, records):
    return {
        "jsonl": write_jsonl(workdir / "in.jsonl", records),
        "zst": write_jsonl(workdir / "in.jsonl.zst", records, zst=True),
    }


def _gpt2_reference_encoder(vocab_file, merges_file):
    """GPT-2 byte-level BPE written from its definition (independent of `tokenizers`)."""
    regex = pytest.importorskip("regex")
    pattern = regex.compile(
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    # Printable stand-ins for the 256 byte values, as GPT-2 defines them.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    byte_char, extra = {}, 0
    for b in range(256):
        if b in printable:
            byte_char[b] = chr(b)
        else:
            byte_char[b] = chr(256 + extra)
            extra += 1
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n") if ln and not ln.startswith("#version")]
    rank = {tuple(ln.split(" ")): i for i, ln in enumerate(lines)}
    cache = {}

    def bpe(word):
        parts = list(word)
        while len(parts) > 1:
            best = min(((rank.get((a, b), float("inf")), i)
                        for i, (a, b) in enumerate(zip(parts, parts[1:]))))
            if best[0] == float("inf"):
                break
            pair = (parts[best[1]], parts[best[1] + 1])
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [vocab[p] for p in parts]

    def encode(text):
        ids = []
        for piece in pattern.findall(text):
            word = "".join(byte_char[b] for b in piece.encode("utf-8"))
            if word not in cache:
                cache[word] = bpe(word)
            ids.extend(cache[word])
        return ids

    return encode, vocab["<|endoftext|>"]


@pytest.fixture(scope="module")
def tokenizers_(workdir, records, inputs):
    """name -> (CLI flags, reference encode, eod id)."""
    pytest.importorskip("tokenizers")
    import sentencepiece as spm
    from tokenizers import Tokenizer

    texts = [r["text"] for r in records]
    sp_model = train_small_sentencepiece(inputs["jsonl"], str(workdir / "sp"), vocab_size=2000)
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    hf_dir = train_small_huggingface(texts, str(workdir / "hf"), vocab_size=3000)
    hf = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    vocab, merges = train_small_gpt2(texts, str(workdir / "gpt2"), vocab_size=3000)
    gpt2_encode, gpt2_eod = _gpt2_reference_encoder(vocab, merges)
    return {
        "sentencepiece": (["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                           sp_model], sp.encode_as_ids, sp.eos_id()),
        "huggingface": (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir],
                        lambda t: hf.encode(t, add_special_tokens=False).ids,
                        hf.token_to_id("</s>")),
        "gpt2": (["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab,
                  "--merge-file", merges], gpt2_encode, gpt2_eod),
    }


@pytest.fixture(scope="module")
def expected(records, tokenizers_):
    """name -> key -> domain -> list of reference token lists (with EOD), empties dropped."""
    out = {}
    for name, (_, encode, eod) in tokenizers_.items():
        per_key = {}
        for key in ("text", "summary"):
            per_domain = {}
            for r in records:
                ids = encode(r[key])
                if ids:
                    per_domain.setdefault(r["meta"]["pile_set_name"], []).append(ids + [eod])
            per_key[key] = per_domain
        out[name] = per_key
    return out


def manifest_of(prefix):
    """Where the docs say the manifest of an output prefix DIR/NAME is."""
    return os.path.join(os.path.dirname(prefix), "mile-manifests", os.path.basename(prefix) + ".json")


def files_under(directory):
    """Every file below ``directory``, relative to it (outputs, temporaries, staging)."""
    return sorted(os.path.relpath(os.path.join(root, f), directory)
                  for root, _, files in os.walk(directory) for f in files)


def megatron_docs(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def run_cli(args, cwd=None, timeout=120):
    """Run the CLI as users do (tools/preprocess_data.py), return the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"),
                           *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# Round trips.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["jsonl", "zst"])
@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("name", ["sentencepiece", "huggingface", "gpt2"])
def test_round_trip_per_domain(tmp_path, inputs, tokenizers_, expected, name, workers,
                               compression):
    flags = tokenizers_[name][0]
    prefix = str(tmp_path / "out")
    rc = preprocess_main(["--input", inputs[compression], "--output-prefix", prefix, *flags,
                          "--json-keys", "text", "summary", "--split-by", "meta.pile_set_name",
                          "--append-eod", "--workers", str(workers), "--quiet", *BLOCK])
    assert rc == 0
    with open(manifest_of(prefix)) as f:
        stats = json.load(f)
    seen = set()
    for key, per_domain in expected[name].items():
        for domain, docs in per_domain.items():
            safe = domain.replace(" (", "_").replace(")", "").replace(" ", "_")
            ds_prefix = f"{prefix}_{safe}_{key}_document"
            assert megatron_docs(ds_prefix) == docs, (key, domain)
            entry = next(d for d in stats["datasets"] if d["name"] == os.path.basename(ds_prefix))
            assert (entry["key"], entry["domain"]) == (key, domain)
            assert entry["documents"] == len(docs)
            assert entry["tokens"] == sum(map(len, docs))
            seen.add(ds_prefix)
    assert {os.path.join(str(tmp_path), d["name"]) for d in stats["datasets"]} == seen
    assert len(glob.glob(prefix + "*.idx")) == len(seen)
    assert files_under(tmp_path) == sorted([os.path.basename(p) + e for p in seen for e in (".bin", ".idx")]
                                           + ["mile-manifests/out.json"])


def test_domain_file_names(tmp_path, tokenizers_):
    recs = [{"text": "some words here", "meta": {"pile_set_name": n}}
            for n in ("Wikipedia (en)", "Pile-CC", "Gutenberg (PG-19)", "DM Mathematics")]
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    prefix = str(tmp_path / "p")
    assert preprocess_main(["--input", src, "--output-prefix", prefix, "--quiet",
                            "--split-by", "meta.pile_set_name",
                            *tokenizers_["sentencepiece"][0]]) == 0
    names = sorted(os.path.basename(p) for p in glob.glob(prefix + "_*.idx"))
    assert names == ["p_DM_Mathematics_text_document.idx", "p_Gutenberg_PG-19_text_document.idx",
                     "p_Pile-CC_text_document.idx", "p_Wikipedia_en_text_document.idx"]


def test_no_split_matches_megatron_builder_bytes(tmp_path, records, inputs, tokenizers_):
    """Without --split-by the files are byte-identical to megatron-core's IndexedDatasetBuilder
    (which Megatron-LM's preprocess_data.py uses), documents in input order, every key."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    flags, encode, eod = tokenizers_["sentencepiece"]
    prefix = str(tmp_path / "ours")
    assert preprocess_main(["--input", inputs["zst"], "--output-prefix", prefix, *flags,
                            "--json-keys", "text", "summary", "--append-eod", "--workers", "2",
                            "--quiet", *BLOCK]) == 0
    for key in ("text", "summary"):
        ref = str(tmp_path / f"ref_{key}")
        builder = IndexedDatasetBuilder(ref + ".bin", dtype=np.uint16)
        for r in records:
            ids = encode(r[key])
            if ids:
                builder.add_document(ids + [eod], [len(ids) + 1])
        builder.finalize(ref + ".idx")
        for ext in (".bin", ".idx"):
            with open(f"{prefix}_{key}_document{ext}", "rb") as a, open(ref + ext, "rb") as b:
                assert a.read() == b.read(), (key, ext)


def test_idx_header_fields(tmp_path, inputs, tokenizers_, expected):
    """The .idx layout of facts.md, parsed with struct (not with any reader)."""
    flags = tokenizers_["sentencepiece"][0]
    prefix = str(tmp_path / "h")
    assert preprocess_main(["--input", inputs["jsonl"], "--output-prefix", prefix, *flags,
                            "--append-eod", "--quiet"]) == 0
    docs = [d for per in expected["sentencepiece"]["text"].values() for d in per]
    with open(prefix + "_text_document.idx", "rb") as f:
        raw = f.read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", raw[9:34])
    assert (version, code) == (1, 8)  # uint16 below 65500 token ids
    assert n_seq == len(docs) and n_doc == len(docs) + 1
    lengths = struct.unpack(f"<{n_seq}i", raw[34:34 + 4 * n_seq])
    off = 34 + 4 * n_seq
    pointers = struct.unpack(f"<{n_seq}q", raw[off:off + 8 * n_seq])
    off += 8 * n_seq
    doc_idx = struct.unpack(f"<{n_doc}q", raw[off:off + 8 * n_doc])
    assert off + 8 * n_doc == len(raw)
    assert sorted(lengths) == sorted(len(d) for d in docs)
    assert pointers == tuple(2 * sum(lengths[:i]) for i in range(n_seq))
    assert doc_idx == tuple(range(n_doc))
    assert os.path.getsize(prefix + "_text_document.bin") == 2 * sum(lengths)


@pytest.mark.parametrize("vocab,code", [(65499, 8), (65500, 4), (70000, 4)])
def test_token_dtype_switches_to_int32(tmp_path, vocab, code):
    """NullTokenizer (text = space-separated ids): vocab+1 >= 65500 ids -> int32 (code 4)."""
    n = vocab - 1  # NullTokenizer reports vocab_size + 1 (its EOD)
    docs = [[1, 2, 3], [n - 1, 0, n - 2], [min(n - 1, 65535), 7]]
    src = write_jsonl(tmp_path / "n.jsonl", [{"text": " ".join(map(str, d))} for d in docs])
    prefix = str(tmp_path / "n")
    assert preprocess_main(["--input", src, "--output-prefix", prefix, "--quiet",
                            "--tokenizer-type", "NullTokenizer", "--vocab-size", str(n),
                            "--append-eod"]) == 0
    with open(prefix + "_text_document.idx", "rb") as f:
        assert struct.unpack("<B", f.read(18)[17:18])[0] == code
    assert megatron_docs(prefix + "_text_document") == [d + [n] for d in docs]


# ----------------------------------------------------------------------------------------------
# Bad input, empty documents, killed runs.
# ----------------------------------------------------------------------------------------------

GOOD = json.dumps({"text": "A good line of text.", "meta": {"pile_set_name": "A"}})
BAD_LINES = {
    "malformed json": '{"text": "unterminated',
    "missing key": json.dumps({"body": "no text key", "meta": {"pile_set_name": "A"}}),
    "not a string": json.dumps({"text": ["a", "list"], "meta": {"pile_set_name": "A"}}),
    "not an object": json.dumps(["a", "list"]),
    "missing split value": json.dumps({"text": "no meta here"}),
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_line_stops_with_file_and_line(tmp_path, tokenizers_, reason):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join([GOOD, GOOD, BAD_LINES[reason], GOOD]) + "\n")
    prefix = str(tmp_path / "o")
    proc = run_cli(["--input", str(src), "--output-prefix", prefix, "--quiet",
                    "--split-by", "meta.pile_set_name", *tokenizers_["sentencepiece"][0]])
    assert proc.returncode != 0
    assert f"{src}:3" in proc.stderr and reason in proc.stderr
    assert files_under(tmp_path) == ["bad.jsonl"]  # nothing under final (or temporary) names


def test_skip_bad_lines_counts_reasons_blank_and_empty(tmp_path, tokenizers_):
    flags, encode, eod = tokenizers_["sentencepiece"]
    lines = [GOOD, "", BAD_LINES["malformed json"], "   ",
             json.dumps({"text": "", "meta": {"pile_set_name": "A"}}),  # empty document
             BAD_LINES["missing key"], BAD_LINES["missing key"], BAD_LINES["not a string"],
             json.dumps({"text": "Second good line.", "meta": {"pile_set_name": "B"}})]
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(lines))  # no final newline: the last line still counts
    prefix = str(tmp_path / "o")
    proc = run_cli(["--input", str(src), "--output-prefix", prefix, "--skip-bad-lines",
                    "--split-by", "meta.pile_set_name", "--append-eod", *flags])
    assert proc.returncode == 0, proc.stderr
    with open(manifest_of(prefix)) as f:
        totals = json.load(f)["totals"]
    assert totals["bad_lines"] == {"malformed_json": 1, "missing_key": 2, "not_a_string": 1}
    assert {(e["line"], e["reason"]) for e in totals["bad_line_examples"]} == {
        (3, "malformed_json"), (6, "missing_key"), (7, "missing_key"), (8, "not_a_string")}
    assert totals["blank_lines"] == 2 and totals["empty_documents"] == 1
    assert totals["documents"] == 2 and totals["lines"] == 9
    assert "skipped bad lines" in proc.stderr
    assert megatron_docs(prefix + "_A_text_document") == [
        encode("A good line of text.") + [eod]]
    assert megatron_docs(prefix + "_B_text_document") == [encode("Second good line.") + [eod]]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_undecodable_zstd_fails_cleanly(tmp_path, records, tokenizers_, damage):
    src = write_jsonl(tmp_path / "in.jsonl.zst", records[:100], zst=True)
    data = open(src, "rb").read()
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    else:
        data = data[:200] + bytes(64) + data[264:]
    open(src, "wb").write(data)
    prefix = str(tmp_path / "o")
    for extra in ([], ["--skip-bad-lines"]):  # never silently truncated
        proc = run_cli(["--input", src, "--output-prefix", prefix, "--quiet", *extra,
                        *tokenizers_["sentencepiece"][0]])
        assert proc.returncode != 0
        assert f"{src}:" in proc.stderr and "zstd" in proc.stderr
        assert files_under(tmp_path) == ["in.jsonl.zst"]


def _big_input(tmp_path, records, copies=8):
    return write_jsonl(tmp_path / "big.jsonl", records * copies)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_leaves_no_final_index(tmp_path, records, tokenizers_, sig):
    src = _big_input(tmp_path, records)
    prefix = str(tmp_path / "k")
    args = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", src,
            "--output-prefix", prefix, "--quiet", "--workers", "2", "--block-bytes", "32768",
            "--split-by", "meta.pile_set_name", *tokenizers_["sentencepiece"][0]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staged = str(tmp_path / "mile-manifests" / "staging-*" / "*.bin")
    deadline = time.time() + 60
    while not glob.glob(staged) and time.time() < deadline:
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    left = [f for f in files_under(tmp_path) if f != "big.jsonl"]
    assert all(f.startswith("mile-manifests/staging-") for f in left), left  # nothing final
    if sig == signal.SIGTERM:  # a catchable signal also removes the temporary files
        assert left == []
    # Re-running afterwards completes, overwrites cleanly and removes the dead run's staging.
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert glob.glob(prefix + "*.idx") and os.path.exists(manifest_of(prefix))
    assert not [f for f in files_under(tmp_path) if "staging-" in f]


def test_rerun_overwrites_and_drops_stale_domains(tmp_path, records, tokenizers_, expected):
    flags, encode, eod = tokenizers_["sentencepiece"]
    prefix = str(tmp_path / "r")
    first = write_jsonl(tmp_path / "all.jsonl", records)
    assert preprocess_main(["--input", first, "--output-prefix", prefix, "--quiet", *flags,
                            "--split-by", "meta.pile_set_name", "--append-eod"]) == 0
    domains = sorted({r["meta"]["pile_set_name"] for r in records})
    keep = [r for r in records if r["meta"]["pile_set_name"] == domains[0]]
    second = write_jsonl(tmp_path / "one.jsonl", keep)
    assert preprocess_main(["--input", second, "--output-prefix", prefix, "--quiet", *flags,
                            "--split-by", "meta.pile_set_name", "--append-eod"]) == 0
    idx = glob.glob(prefix + "_*.idx")
    assert len(idx) == 1
    assert megatron_docs(idx[0][:-4]) == expected["sentencepiece"]["text"][domains[0]]


def test_progress_and_stats(tmp_path, inputs, tokenizers_, records):
    prefix = str(tmp_path / "p")
    # The corpus size depends on what is installed: report about six times over whatever it is.
    interval = str(max(1, len(records) // 6))
    proc = run_cli(["--input", inputs["jsonl"], "--output-prefix", prefix, "--log-interval", interval,
                    "--workers", "2", *BLOCK, *tokenizers_["huggingface"][0]])
    assert proc.returncode == 0, proc.stderr
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("[mile-preprocess]")]
    assert len(progress) >= 3
    assert all(s in progress[0] for s in ("docs/s", "M tok/s", "MB/s", "ETA"))
    with open(manifest_of(prefix)) as f:
        stats = json.load(f)
    (ds,) = stats["datasets"]
    assert ds["name"] == "p_text_document" and ds["domain"] is None
    assert ds["documents"] == stats["totals"]["documents"] == len(records)
    assert ds["text_bytes"] == sum(len(r["text"].encode()) for r in records)
    assert stats["tokens_per_second"] > 0 and stats["dtype"] == "uint16"


def test_missing_input_and_unknown_tokenizer(tmp_path):
    proc = run_cli(["--input", str(tmp_path / "nope.jsonl"), "--output-prefix",
                    str(tmp_path / "o"), "--tokenizer-type", "NullTokenizer", "--vocab-size", "9"])
    assert proc.returncode != 0 and "nope.jsonl" in proc.stderr
    proc = run_cli(["--input", "x", "--output-prefix", "y", "--tokenizer-type", "Bogus"])
    assert proc.returncode != 0 and "SentencePieceTokenizer" in proc.stderr
