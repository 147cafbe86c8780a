"""Datasets and batching for the experiments of Jaderberg et al. 2016 (Decoupled Neural Interfaces).

    Sec. 3.1 (recurrent):    Copy / Repeat Copy (copy_tasks.py), character-level Penn Treebank (ptb.py)
    Sec. 3.3 (feed-forward): MNIST (mnist.py, shipped with the package), CIFAR-10 (cifar10.py, bring your own file)

`BatchIterator` (batching.py) serves seeded, resumable mini-batches over any (x, y) arrays.
"""

from .batching import BatchIterator
from .cifar10 import CIFAR10, load_cifar10
from .common import Split
from .copy_tasks import SequenceBatch, copy_task, repeat_copy_task
from .mnist import MNIST, ChecksumError, IdxFormatError, load_mnist, read_idx, write_idx
from .ptb import BPTTIterator, CharCorpus, CharVocab, load_ptb_chars

__all__ = [
    "BatchIterator",
    "BPTTIterator",
    "CharCorpus",
    "CharVocab",
    "ChecksumError",
    "CIFAR10",
    "IdxFormatError",
    "MNIST",
    "SequenceBatch",
    "Split",
    "copy_task",
    "load_cifar10",
    "load_mnist",
    "load_ptb_chars",
    "read_idx",
    "repeat_copy_task",
    "write_idx",
]
