"""Tokenizers: layout, truncation, unknown words, bytes."""

import numpy as np
import pytest

from mmjax.data import tokenizers


def test_word_tokenizer_layout_and_unknown_words():
  vocabulary = tokenizers.build_vocabulary(["a bold seven", "the digit 7"])
  tokenizer = tokenizers.WordTokenizer(vocabulary)
  ids = tokenizer.encode(["The digit 7", "a purple seven"], length=6)
  words = {w: i for i, w in enumerate(vocabulary)}
  np.testing.assert_array_equal(ids[0], [1, words["the"], words["digit"], words["7"], 2, 0])
  np.testing.assert_array_equal(ids[1], [1, words["a"], tokenizers.UNK, words["seven"], 2, 0])
  assert tokenizer.vocab_size == len(vocabulary) == 4 + 6


def test_long_texts_are_cut_but_keep_eos():
  tokenizer = tokenizers.ByteTokenizer()
  ids = tokenizer.encode(["abcdefgh"], length=4)
  np.testing.assert_array_equal(ids, [[tokenizers.BOS, 101, 102, tokenizers.EOS]])


def test_byte_tokenizer_handles_any_text():
  ids = tokenizers.ByteTokenizer().encode(["é"], length=5)
  assert ids.dtype == np.int32 and ids.max() < tokenizers.ByteTokenizer.vocab_size
  np.testing.assert_array_equal(ids[0, 1:3], np.frombuffer("é".encode(), np.uint8) + 4)


def test_vocabulary_is_deterministic_and_validated():
  assert tokenizers.build_vocabulary(["b a", "c"]) == tokenizers.build_vocabulary(["c", "a b"])
  with pytest.raises(ValueError, match="vocabulary must start with"):
    tokenizers.WordTokenizer(["a", "b"])
  with pytest.raises(ValueError, match=r"Unknown tokenizer 'bpe'; valid choices: \['byte', 'word'\]"):
    tokenizers.make_tokenizer("bpe", [])
