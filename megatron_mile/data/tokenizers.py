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

Very long texts (over :data:`LONG_TEXT_CHARS` characters) are encoded in pieces, which bounds
the library's memory (sentencepiece takes ~45 bytes per character of one call), where the pieces
provably give the ids of the whole text: cuts fall only before a space that has an ASCII letter
or digit on its left and an ASCII letter on its right (:func:`safe_pieces`), and only tokenizers
whose pre-tokenisation always splits there and whose normalisation leaves those characters
alone are encoded this way (``exact_cuts``, decided from the model's own settings); others
encode the whole text in one call.
"""

from __future__ import annotations

import abc
import json
import os
import re
from collections import OrderedDict
from typing import Iterator, Optional, Sequence

TOKENIZER_TYPES = (
    "SentencePieceTokenizer",
    "HuggingFaceTokenizer",
    "GPT2BPETokenizer",
    "NullTokenizer",
)

# Tokens that conventionally end a document, in order of preference, for tokenizer.json files
# that come without a tokenizer_config.json naming the eos token.
_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", "<|eot_id|>")

LONG_TEXT_CHARS = 1 << 20
"""Texts longer than this are encoded in pieces of at least this many characters (when exact)."""
# A space between an ASCII letter/digit and an ASCII letter: every supported pre-tokeniser starts
# a new word there, and every supported normaliser maps these three characters to themselves.
_SAFE_CUT = re.compile(r"(?<=[A-Za-z0-9]) (?=[A-Za-z])")


def safe_pieces(text: str, piece_chars: int) -> Iterator[str]:
    """``text`` cut into pieces of at least ``piece_chars`` characters, each cut just before a
    space matching :data:`_SAFE_CUT` (one piece when there is no such space)."""
    start = 0
    while len(text) - start > piece_chars:
        cut = _SAFE_CUT.search(text, start + piece_chars)
        if cut is None:
            break
        yield text[start:cut.start()]
        start = cut.start()
    yield text[start:]


class MileTokenizer(abc.ABC):
    """Interface shared by all tokenizers returned from :func:`build_tokenizer`."""

    exact_cuts = False
    """Whether :func:`safe_pieces` encoded one by one give the ids of the whole text."""
    long_text_chars = LONG_TEXT_CHARS

    def __init__(self, files: Sequence[str] = (), **identifiers) -> None:
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__)] + [(k, str(v)) for k, v in identifiers.items()]
        )
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)
        self._files = [os.path.abspath(f) for f in files]

    def metadata(self) -> dict:
        """What a dataset's manifest records about the tokenizer that made it: ``type``,
        ``vocab_size``, ``eod``, ``path`` (absolute), ``sha256`` (of the files' bytes in order)."""
        from megatron_mile.data.manifest import sha256_files

        meta = {"type": type(self).__name__, "vocab_size": self.vocab_size, "eod": self.eod,
                "path": self._files[0] if self._files else None,
                "sha256": sha256_files(self._files) if self._files else None}
        if len(self._files) > 1:
            meta["merge_file"] = self._files[1]
        return meta

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[tokenize(t) for t in texts]``, faster where the library encodes batches natively."""
        return [self.tokenize(t) for t in texts]

    def tokenize_arrays(self, texts: Sequence[str]) -> list:
        """Like :meth:`tokenize_batch` but one integer numpy array per text; very long texts
        are encoded in exact pieces (module docstring).

        The preprocessing workers use this: where the library can hand back a buffer
        (sentencepiece >= 0.2.1) no Python int is ever created, which is ~10% of the encode time.
        """
        limit = self.long_text_chars
        if not self.exact_cuts or all(len(t) <= limit for t in texts):
            return self._encode_arrays(texts)
        import numpy as np

        out = []
        for text in texts:
            if len(text) <= limit:
                out.extend(self._encode_arrays([text]))
            else:
                pieces = [self._encode_arrays([p])[0].astype(np.int32)
                          for p in safe_pieces(text, limit)]
                out.append(np.concatenate(pieces))
        return out

    def _encode_arrays(self, texts: Sequence[str]) -> list:
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
        super().__init__(files=[model_file], tokenizer_path=[model_file])
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        except Exception as e:  # noqa: BLE001 - the library raises RuntimeError/OSError
            raise ValueError(f"{model_file}: not a sentencepiece model ({_first_line(e)})") from None
        self.exact_cuts = _sentencepiece_cuts_exact(self._sp)
        try:  # int32 buffers straight from C++; older sentencepiece releases lack it
            self._numpy_out = self._sp.encode("a", return_type="numpy").dtype.kind == "i"
        except (TypeError, ValueError, AttributeError):
            self._numpy_out = False

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode_as_ids(text)

    # No tokenize_batch override: sentencepiece's list API (even with num_threads=1) measured
    # ~15% slower than one call per text.

    def _encode_arrays(self, texts: Sequence[str]) -> list:
        if self._numpy_out:
            encode = self._sp.encode
            return [encode(t, return_type="numpy") for t in texts]
        return super()._encode_arrays(texts)

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


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# Normalisation rules that map ASCII letters, digits and the space to themselves (the _cf ones
# lower-case letters, which stay letters).
_SP_NORMALIZERS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")


def _sentencepiece_cuts_exact(sp) -> bool:
    """Whether the model provably encodes a text as the concatenation of its safe pieces.

    It must be a BPE (or word/char) model: a unigram model's Viterbi search sums scores over the
    whole text, and the floating-point rounding of that sum breaks near-ties differently when the
    text is cut (measured: a run of dashes segmented differently). It must split words at
    whitespace with the space as a prefix, so no piece spans a cut; a
    piece's leading space must become exactly the one "▁" it is in the whole text (the space
    is stripped and the dummy prefix added back, or kept and no dummy prefix added); and no
    user-defined symbol may contain whitespace."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # needs protobuf
        return False
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    model_type = sentencepiece_model_pb2.TrainerSpec
    if (trainer.model_type not in (model_type.BPE, model_type.WORD, model_type.CHAR)
            or not trainer.split_by_whitespace or trainer.treat_whitespace_as_suffix
            or norm.name not in _SP_NORMALIZERS
            or (norm.add_dummy_prefix and not norm.remove_extra_whitespaces)):
        return False
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    return not any(p.type == user_defined and (" " in p.piece or "▁" in p.piece)
                   for p in proto.pieces)


# tokenizer.json parts under which the safe pieces are exact (see _hf_cuts_exact).
_HF_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"}


def _hf_cuts_exact(config: dict) -> bool:
    """Whether a tokenizer.json provably encodes a text as the concatenation of its safe pieces.

    The pre-tokeniser must start a word at every safe cut: GPT-2's byte-level regex (a space
    before a letter opens a word, a letter or digit before it closes one) or Metaspace with
    splitting (a piece's leading space is its "▁", so nothing is prepended). Normalisers may
    only be Unicode normal forms and lower-casing (identity on the ASCII characters around a cut;
    any other normaliser, e.g. one that strips, disqualifies), and no added token may hold a space
    (added tokens are matched before pre-tokenisation, so one could span a cut)."""
    norm = config.get("normalizer")
    parts = [] if norm is None else norm.get("normalizers", [norm]) if norm.get(
        "type") == "Sequence" else [norm]
    if any(p.get("type") not in _HF_NORMALIZERS for p in parts):
        return False
    pre = config.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        exact = pre.get("use_regex", True)
    elif pre.get("type") == "Metaspace":
        exact = pre.get("split", True)
    else:
        exact = False
    return bool(exact) and not any(any(c.isspace() for c in t.get("content", " "))
                                   for t in config.get("added_tokens") or [])


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


def _hf_json_file(path: str) -> str:
    return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


class HuggingFaceTokenizer(_RustTokenizer):
    def __init__(self, path: str) -> None:
        tokenizers = _import_tokenizers()
        self._init_args = {"path": path}
        json_file = _hf_json_file(path)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"HuggingFaceTokenizer needs a local tokenizer.json file or a directory holding "
                f"one (no hub downloads); not found: {json_file!r}"
            )
        super().__init__(files=[json_file], tokenizer_path=[path])
        try:
            with open(json_file, encoding="utf-8") as f:
                config = json.load(f)
            self._tok = tokenizers.Tokenizer.from_file(json_file)
        except Exception as e:  # noqa: BLE001 - JSON errors and the library's own Exception
            raise ValueError(f"{json_file}: not a Hugging Face tokenizer.json "
                             f"({_first_line(e)})") from None
        self.exact_cuts = _hf_cuts_exact(config)
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
        super().__init__(files=[vocab_file, merge_file], tokenizer_path=[vocab_file, merge_file])
        # Byte-level BPE exactly as GPT-2: its regex pre-split, no prefix space, no normaliser,
        # and no special tokens (Megatron's GPT2 tokenizer splits "<|endoftext|>" in text too).
        try:
            with open(vocab_file, encoding="utf-8") as f:
                self._vocab_len = len(json.load(f))
        except ValueError as e:
            raise ValueError(f"{vocab_file}: not a GPT-2 vocab.json ({_first_line(e)})") from None
        try:
            self._tok = tokenizers.Tokenizer(models.BPE.from_file(vocab_file, merge_file))
        except Exception as e:  # noqa: BLE001 - the library raises its own Exception
            raise ValueError(f"{merge_file}: not GPT-2 merges for {vocab_file} "
                             f"({_first_line(e)})") from None
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        self.exact_cuts = True  # GPT-2's regex pre-split, no normaliser, no added tokens
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
        ids = [int(x) for x in text.split(" ")] if text else []  # an empty text is an empty document
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


def tokenizer_files(tokenizer_type: str, tokenizer_model: Optional[str] = None,
                    vocab_file: Optional[str] = None, merge_file: Optional[str] = None) -> list[str]:
    """The files whose bytes define the tokenizer (what ``metadata()["sha256"]`` hashes)."""
    if tokenizer_type == "SentencePieceTokenizer":
        return [tokenizer_model]
    if tokenizer_type == "HuggingFaceTokenizer":
        return [_hf_json_file(tokenizer_model)]
    if tokenizer_type == "GPT2BPETokenizer":
        return [vocab_file, merge_file]
    return []


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
