"""Tokenizers for preprocessing and training, encoding exactly as megatron-core's do.

``build_tokenizer`` returns a light object with the interface megatron's ``GPTDataset`` and our
training code use (``tokenize``, ``detokenize``, ``vocab_size``, ``eod``, ``unique_identifiers``)
plus ``tokenize_batch`` for the preprocessing workers. It imports neither torch nor megatron:
the preprocessing workers would otherwise spend seconds and hundreds of MB importing them.

Encodings match megatron-core 0.16.1's tokenizer system (the default of Megatron-LM's
``tools/preprocess_data.py``), so our ``.bin`` files are byte-identical to Megatron's:

* ``SentencePieceTokenizer``: ``SentencePieceProcessor.encode_as_ids(text)``; ``eod`` is the
  model's ``eos_id``; ``vocab_size`` the number of pieces.
* ``HuggingFaceTokenizer``: a local ``tokenizer.json`` (file or directory; never a hub download),
  encoded without special tokens like megatron's ``text_to_ids``; ``vocab_size`` counts added
  tokens; ``eod`` is the ``eos_token`` of a ``tokenizer_config.json`` next to it, else the first
  of the usual end-of-text tokens found in the vocabulary, else ``None``.
* ``GPT2BPETokenizer``: ``vocab.json`` + ``merges.txt`` byte-level BPE as GPT-2 (and Megatron's
  GPT2 tokenizer) encode it; ``<|endoftext|>`` in the text is *not* special, as in Megatron;
  ``eod`` is ``<|endoftext|>``.
* ``NullTokenizer``: text of space-separated ints; ``eod = vocab_size`` and the reported
  ``vocab_size`` is one more, as megatron's.
"""

from __future__ import annotations

import abc
import json
import os
from collections import OrderedDict
from typing import Optional, Sequence

TOKENIZER_TYPES = (
    "SentencePieceTokenizer",
    "HuggingFaceTokenizer",
    "GPT2BPETokenizer",
    "NullTokenizer",
)

# Tokens that conventionally end a document, in order of preference, for tokenizer.json files
# that come without a tokenizer_config.json naming the eos token.
_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", "<|eot_id|>")


class MileTokenizer(abc.ABC):
    """Interface shared by all tokenizers returned from :func:`build_tokenizer`."""

    def __init__(self, **identifiers) -> None:
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__)] + [(k, str(v)) for k, v in identifiers.items()]
        )
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[tokenize(t) for t in texts]``, faster where the library encodes batches natively."""
        return [self.tokenize(t) for t in texts]

    def tokenize_arrays(self, texts: Sequence[str]) -> list:
        """Like :meth:`tokenize_batch` but one integer numpy array per text.

        The preprocessing workers use this: where the library can hand back a buffer
        (sentencepiece >= 0.2.1) no Python int is ever created, which is ~10% of the encode time.
        """
        import numpy as np

        return [np.asarray(ids, dtype=np.int64) for ids in self.tokenize_batch(texts)]

    @abc.abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (before any padding for tensor parallelism)."""

    @property
    @abc.abstractmethod
    def eod(self) -> Optional[int]:
        """End-of-document token id, or None when the tokenizer has none."""

    @property
    def eos(self) -> Optional[int]:
        return self.eod

    @property
    def bos(self) -> Optional[int]:
        return None

    @property
    def pad(self) -> Optional[int]:
        return None

    def __getstate__(self):
        # Library tokenizers are rebuilt from files in worker processes (cheap, and some of
        # them do not pickle); only the constructor arguments travel.
        return self._init_args

    def __setstate__(self, state):
        self.__init__(**state)


def _as_list(ids) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


class SentencePieceTokenizer(MileTokenizer):
    def __init__(self, model_file: str) -> None:
        import sentencepiece

        if not model_file or not os.path.isfile(model_file):
            raise FileNotFoundError(f"sentencepiece model file not found: {model_file!r}")
        self._init_args = {"model_file": model_file}
        super().__init__(tokenizer_path=[model_file])
        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        try:  # int32 buffers straight from C++; older sentencepiece releases lack it
            self._numpy_out = self._sp.encode("a", return_type="numpy").dtype.kind == "i"
        except (TypeError, ValueError, AttributeError):
            self._numpy_out = False

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode_as_ids(text)

    # No tokenize_batch override: sentencepiece's list API (even with num_threads=1) measured
    # ~15% slower than one call per text.

    def tokenize_arrays(self, texts: Sequence[str]) -> list:
        if self._numpy_out:
            encode = self._sp.encode
            return [encode(t, return_type="numpy") for t in texts]
        return super().tokenize_arrays(texts)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._sp.decode_ids(_as_list(ids))

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod(self) -> Optional[int]:
        eos = self._sp.eos_id()
        return eos if eos >= 0 else None

    @property
    def bos(self) -> Optional[int]:
        bos = self._sp.bos_id()
        return bos if bos >= 0 else None

    @property
    def pad(self) -> Optional[int]:
        pad = self._sp.pad_id()
        return pad if pad >= 0 else None


def _import_tokenizers():
    # The Rust tokenizers parallelise encode_batch over threads; the preprocessing tool already
    # runs one process per core, and threads inside forked workers can deadlock.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "HuggingFaceTokenizer and GPT2BPETokenizer need the `tokenizers` package: "
            "pip install 'megatron-mile[hf]'"
        ) from e
    return tokenizers


class _RustTokenizer(MileTokenizer):
    """Common part of the tokenizers backed by the Rust ``tokenizers`` library."""

    _tok = None

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode(_as_list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


class HuggingFaceTokenizer(_RustTokenizer):
    def __init__(self, path: str) -> None:
        tokenizers = _import_tokenizers()
        self._init_args = {"path": path}
        json_file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"HuggingFaceTokenizer needs a local tokenizer.json file or a directory holding "
                f"one (no hub downloads); not found: {json_file!r}"
            )
        super().__init__(tokenizer_path=[path])
        self._tok = tokenizers.Tokenizer.from_file(json_file)
        self._eod = self._find_eod(os.path.dirname(os.path.abspath(json_file)))

    def _find_eod(self, directory: str) -> Optional[int]:
        config = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token")
            if isinstance(eos, dict):  # AddedToken serialised as a dict
                eos = eos.get("content")
            if eos is not None and self._tok.token_to_id(eos) is not None:
                return self._tok.token_to_id(eos)
        for token in _EOD_CANDIDATES:
            if self._tok.token_to_id(token) is not None:
                return self._tok.token_to_id(token)
        return None

    @property
    def eod(self) -> Optional[int]:
        return self._eod


class GPT2BPETokenizer(_RustTokenizer):
    def __init__(self, vocab_file: str, merge_file: str) -> None:
        tokenizers = _import_tokenizers()
        from tokenizers import decoders, models, pre_tokenizers

        for name, f in (("vocab_file", vocab_file), ("merge_file", merge_file)):
            if not f or not os.path.isfile(f):
                raise FileNotFoundError(f"GPT2BPETokenizer needs --{name.replace('_', '-')}; "
                                        f"not found: {f!r}")
        self._init_args = {"vocab_file": vocab_file, "merge_file": merge_file}
        super().__init__(tokenizer_path=[vocab_file, merge_file])
        # Byte-level BPE exactly as GPT-2: its regex pre-split, no prefix space, no normaliser,
        # and no special tokens (Megatron's GPT2 tokenizer splits "<|endoftext|>" in text too).
        self._tok = tokenizers.Tokenizer(models.BPE.from_file(vocab_file, merge_file))
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        with open(vocab_file, encoding="utf-8") as f:
            self._vocab_len = len(json.load(f))
        self._eod = self._tok.token_to_id("<|endoftext|>")

    @property
    def vocab_size(self) -> int:
        return self._vocab_len

    @property
    def eod(self) -> Optional[int]:
        return self._eod


class NullTokenizer(MileTokenizer):
    def __init__(self, vocab_size: int) -> None:
        if vocab_size is None or int(vocab_size) <= 0:
            raise ValueError("NullTokenizer needs a positive vocab_size")
        self._init_args = {"vocab_size": int(vocab_size)}
        super().__init__(tokenizer_path=[], vocab_size=int(vocab_size))
        self._n = int(vocab_size)

    def tokenize(self, text: str) -> list[int]:
        ids = [int(x) for x in text.split(" ")]
        if ids and not 0 <= min(ids) <= max(ids) < self._n:
            raise ValueError(f"NullTokenizer ids must be in [0, {self._n}); got {min(ids)}..{max(ids)}")
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(i) for i in _as_list(ids))

    @property
    def vocab_size(self) -> int:
        return self._n + 1

    @property
    def eod(self) -> int:
        return self._n


def build_tokenizer(
    tokenizer_type: str,
    tokenizer_model: Optional[str] = None,
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
    vocab_size: Optional[int] = None,
) -> MileTokenizer:
    """Build a tokenizer by Megatron's ``--tokenizer-type`` name.

    Args:
        tokenizer_type: one of :data:`TOKENIZER_TYPES`.
        tokenizer_model: sentencepiece ``.model`` file, or ``tokenizer.json`` file / directory.
        vocab_file: GPT-2 ``vocab.json``.
        merge_file: GPT-2 ``merges.txt``.
        vocab_size: NullTokenizer's vocabulary size (without its EOD).
    """
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        if not tokenizer_model:
            raise ValueError("HuggingFaceTokenizer needs tokenizer_model (tokenizer.json or dir)")
        return HuggingFaceTokenizer(tokenizer_model)
    if tokenizer_type == "GPT2BPETokenizer":
        return GPT2BPETokenizer(vocab_file, merge_file)
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size)
    raise ValueError(
        f"unknown tokenizer_type {tokenizer_type!r}; valid types: {', '.join(TOKENIZER_TYPES)}"
    )
