"""Text tokenizers that turn strings into fixed-length int32 token arrays.

Both tokenizers share the special tokens below and the layout ``[BOS] tokens… [EOS] [PAD]…``:
sequences longer than the length are cut and still end with EOS, so the last non-padding token is
always EOS and the first is always BOS (what "first"/"last" pooling read).
"""

import re
from collections.abc import Sequence

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
TOKENIZERS = ("byte", "word")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
  """Lower-cases and splits into words and single punctuation marks.

  >>> split_words("The digit 7, slanted!")
  ['the', 'digit', '7', ',', 'slanted', '!']
  """
  return _WORD.findall(text.lower())


def build_vocabulary(texts: Sequence[str]) -> list[str]:
  """The special tokens followed by every word of `texts`, sorted (so the same texts always give
  the same ids)."""
  words = sorted({word for text in texts for word in split_words(text)})
  return list(SPECIAL_TOKENS) + words


def _pack(ids: list[int], length: int) -> np.ndarray:
  if length < 2:
    raise ValueError(f"text length must be at least 2 (BOS and EOS), got {length}.")
  ids = [BOS] + ids[: length - 2] + [EOS]
  return np.pad(np.asarray(ids, np.int32), (0, length - len(ids)), constant_values=PAD)


class WordTokenizer:
  """Maps words to ids of a fixed vocabulary; unknown words become UNK.

  >>> tokenizer = WordTokenizer(build_vocabulary(["a handwritten seven"]))
  >>> tokenizer.encode(["a handwritten eight"], length=6)
  array([[1, 4, 5, 3, 2, 0]], dtype=int32)
  """

  def __init__(self, vocabulary: Sequence[str]):
    if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}, got {tuple(vocabulary[:4])}.")
    self.vocabulary = list(vocabulary)
    self._ids = {word: i for i, word in enumerate(self.vocabulary)}

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)

  def encode(self, texts: Sequence[str], length: int) -> np.ndarray:
    """``int32[len(texts), length]`` token ids."""
    return np.stack([_pack([self._ids.get(w, UNK) for w in split_words(t)], length) for t in texts])


class ByteTokenizer:
  """UTF-8 bytes shifted past the special tokens: needs no vocabulary, never produces UNK.

  >>> ByteTokenizer().encode(["ab"], length=5)
  array([[  1, 101, 102,   2,   0]], dtype=int32)
  """

  vocab_size = 256 + len(SPECIAL_TOKENS)

  def encode(self, texts: Sequence[str], length: int) -> np.ndarray:
    """``int32[len(texts), length]`` token ids."""
    return np.stack([_pack([b + len(SPECIAL_TOKENS) for b in t.encode("utf-8")], length) for t in texts])


def make_tokenizer(kind: str, vocabulary: Sequence[str]) -> WordTokenizer | ByteTokenizer:
  """The tokenizer named by the data config's `tokenizer` field."""
  if kind == "word":
    return WordTokenizer(vocabulary)
  if kind == "byte":
    return ByteTokenizer()
  raise ValueError(f"Unknown tokenizer {kind!r}; valid choices: {list(TOKENIZERS)}.")
