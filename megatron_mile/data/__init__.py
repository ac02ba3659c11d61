"""Data tools: Pile-style corpora to Megatron indexed datasets, per domain.

* :func:`megatron_mile.data.tokenizers.build_tokenizer`: tokenizers encoding as megatron-core's.
* :mod:`megatron_mile.data.preprocess` (``mile-preprocess``): jsonl / jsonl.zst -> ``.bin/.idx``.
* :mod:`megatron_mile.data.merge` (``mile-merge-datasets``): merge datasets of several runs.
* :mod:`megatron_mile.data.manifest`: what a run wrote (checked by every reader), staged commits.
* :mod:`megatron_mile.data.blend` (``mile-blend``): ``--data-path`` blend from manifests.
* :mod:`megatron_mile.data.train_tokenizer` (``mile-train-tokenizer``): sentencepiece training.
* :func:`megatron_mile.data.corpus.write_text_corpus`: real-text corpus from installed packages.

Nothing here imports torch or megatron (the preprocessing workers stay small and start fast).
"""

from megatron_mile.data.tokenizers import TOKENIZER_TYPES, build_tokenizer

__all__ = ["TOKENIZER_TYPES", "build_tokenizer"]
