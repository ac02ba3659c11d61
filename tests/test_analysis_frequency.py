"""Token counts against a direct count of the tokens read back from the dataset; frequency buckets
against their definitions."""

import collections
import json
import math

import numpy as np
import pytest
import torch

from megatron_mile.analysis.frequency import (
    TokenCounts,
    VocabularyMismatchError,
    build_buckets,
    count_tokens,
    dataset_label,
    log_buckets,
    mass_quantile_buckets,
    parse_blend,
)


def _write(prefix, docs, dtype=np.uint16):
    """Write with megatron's own builder, not the package's writer."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        builder.add_item(torch.tensor(doc, dtype=torch.int64))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def _direct_count(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    counter = collections.Counter()
    for i in range(len(ds)):
        counter.update(int(t) for t in ds[i])
    return counter


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("freq")
    rng = np.random.default_rng(0)
    a = [list(rng.zipf(1.5, size=rng.integers(1, 60)) % 300) for _ in range(40)]
    b = [list(rng.integers(0, 300, size=rng.integers(1, 30))) for _ in range(25)]
    return _write(str(root / "web_text_document"), a), _write(str(root / "code_text_document"), b)


@pytest.mark.parametrize("chunk_tokens", [7, 1 << 20])
def test_counts_equal_direct_count(datasets, chunk_tokens):
    a, b = datasets
    counts = count_tokens([a, b], vocab_size=300, chunk_tokens=chunk_tokens)
    direct = _direct_count(a) + _direct_count(b)
    expected = np.zeros(300, np.int64)
    for tok, n in direct.items():
        expected[tok] = n
    assert counts.counts.dtype == np.int64
    np.testing.assert_array_equal(counts.counts, expected)
    assert [d.tokens for d in counts.datasets] == [sum(_direct_count(p).values()) for p in (a, b)]
    assert [d.label for d in counts.datasets] == ["web", "code"]


def test_weighted_blend_is_expected_counts(datasets):
    a, b = datasets
    counts = count_tokens(["30", a, "10", b], vocab_size=300)
    ca, cb = _direct_count(a), _direct_count(b)
    na, nb = sum(ca.values()), sum(cb.values())
    for tok in (0, 1, 5, 299):
        expected = (na + nb) * (0.75 * ca[tok] / na + 0.25 * cb[tok] / nb)
        assert counts.counts[tok] == pytest.approx(expected)
    assert counts.kind == "blend_expected"


def test_inferred_vocab_and_save_load(datasets, tmp_path):
    a, _ = datasets
    counts = count_tokens([a])
    direct = _direct_count(a)
    assert counts.vocab_size == max(direct) + 1 and counts.vocab_size_inferred
    npy, js = counts.save(str(tmp_path / "out" / "counts"))
    back = TokenCounts.load(npy)
    np.testing.assert_array_equal(back.counts, counts.counts)
    summary = json.load(open(js))  # strict JSON: no NaN anywhere
    assert summary["total_tokens"] == sum(direct.values())
    assert summary["types_seen"] == len(direct)
    assert summary["top_tokens"][0]["count"] == max(direct.values())


def test_token_id_beyond_vocab_is_an_error(datasets):
    a, _ = datasets
    top = max(_direct_count(a))
    with pytest.raises(VocabularyMismatchError, match=f"token id {top} >= vocabulary size {top}"):
        count_tokens([a], vocab_size=top)


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope_text_document.idx"):
        count_tokens([str(tmp_path / "nope_text_document")], vocab_size=10)


def test_parse_blend():
    assert parse_blend(["x/a_text_document"]) == (["x/a_text_document"], None, ["a"])
    prefixes, weights, labels = parse_blend(["1", "web=p1", "3", "p/code_text_document"])
    assert prefixes == ["p1", "p/code_text_document"] and weights == [0.25, 0.75] and labels == ["web", "code"]
    with pytest.raises(ValueError, match="distinct"):
        parse_blend(["a/x_text_document", "b/x_text_document"])
    assert dataset_label("out/pile_Wikipedia_en_text_document") == "pile_Wikipedia_en"
    # The output prefix all of one preprocessing run's datasets share is dropped from the labels.
    _, _, labels = parse_blend(["o/pile_Pile-CC_text_document", "o/pile_Wikipedia_en_text_document", "my=x"])
    assert labels == ["Pile-CC", "Wikipedia_en", "my"]


def test_log_buckets_follow_their_definition():
    counts = np.array([0, 1, 9, 10, 99, 100, 5000, 0, 3])
    b = log_buckets(counts)
    assert b.labels == ["unseen", "[1, 10)", "[10, 100)", "[100, 1000)", ">=1000"]
    expected = [0 if c == 0 else 1 + int(math.floor(math.log10(c))) for c in counts]
    np.testing.assert_array_equal(b.of(np.arange(counts.size)), expected)
    np.testing.assert_array_equal(b.types, [2, 3, 2, 1, 1])
    assert b.mass.sum() == pytest.approx(1.0)
    with pytest.raises(VocabularyMismatchError):
        b.of(np.array([counts.size]))


def test_mass_buckets_split_the_mass_and_keep_ties_together():
    rng = np.random.default_rng(1)
    counts = np.concatenate([rng.zipf(1.3, size=5000) % 100000, np.zeros(50, np.int64)])
    counts[:20] = 7  # a tie spanning what would otherwise be a boundary
    b = mass_quantile_buckets(counts, num_buckets=4)
    assigned = b.of(np.arange(counts.size))
    assert np.all(assigned[counts == 0] == 0)
    for value in np.unique(counts):  # a bucket depends on the count only
        assert np.unique(assigned[counts == value]).size == 1
    # Definition: the quantile of the middle of the mass interval of the type's count value.
    total = counts.sum()
    positive = np.flatnonzero(counts > 0)
    below = np.array([counts[counts < counts[i]].sum() for i in positive])
    same = np.array([counts[counts == counts[i]].sum() for i in positive])
    quantile = np.minimum(np.floor((below + same / 2) / total * 4), 3)
    present, rank = np.unique(quantile, return_inverse=True)
    np.testing.assert_array_equal(assigned[positive], rank + 1)
    assert b.num_buckets == 1 + present.size
    assert b.mass[0] == 0 and b.mass.sum() == pytest.approx(1.0)
    assert np.all(np.diff(b.edges) > 0)


def test_one_dominant_type_merges_quantiles_not_empty_buckets():
    counts = np.array([1000, 1, 1, 1, 1])
    b = build_buckets(counts, "mass", num_buckets=4)
    assert b.num_buckets == 3  # unseen, the rare types, the dominant one
    assert np.all(b.types[1:] > 0)


def test_paper_buckets_hold_5_15_80_percent_of_the_mass():
    # 1000 tokens: five types x 10 (5%), three x 50 (15%), one x 800 (80%), two unseen types.
    counts = np.array([0, 10, 10, 10, 10, 10, 50, 50, 50, 800, 0])
    b = build_buckets(counts, "paper")
    assert b.token_bucket.tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2, 3, 0]
    np.testing.assert_allclose(b.mass, [0.0, 0.05, 0.15, 0.80])
    assert [label.split()[0] for label in b.labels] == ["unseen", "low", "medium", "high"]
    # A type taking most of the mass swallows the medium share: no empty bucket, names kept.
    b = build_buckets(np.array([1, 1, 98]), "paper")
    assert [label.split()[0] for label in b.labels] == ["unseen", "low", "high"]


def test_split_counts_only_that_splits_documents(datasets):
    """Documents [0, round(0.9 * D)) are megatron's training split of '90,10,0'."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    a, _ = datasets
    ds = IndexedDataset(a)
    num_docs = len(ds.document_indices) - 1
    cut = int(round(0.9 * num_docs))
    for name, docs in (("train", range(0, cut)), ("valid", range(cut, num_docs))):
        counts = count_tokens([a], vocab_size=300, split="90,10,0", split_name=name)
        counter = collections.Counter()
        for d in docs:
            for s in range(ds.document_indices[d], ds.document_indices[d + 1]):
                counter.update(int(t) for t in ds[s])
        expected = np.zeros(300, np.int64)
        for tok, n in counter.items():
            expected[tok] = n
        np.testing.assert_array_equal(counts.counts, expected)
