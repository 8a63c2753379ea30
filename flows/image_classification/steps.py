"""Image classification on scikit-learn's bundled 8x8 digits: pure computation steps.

Pipeline (step name -> consumes):

    digits(augment, seed)
      -> preprocessed(digits, test_size, seed)
      -> classifier(preprocessed, C, gamma)
      -> predictions(classifier, preprocessed, batch_size)

``digits`` adds ``augment`` copies of every image shifted by one pixel in a
random direction.  ``preprocessed`` splits the *original* images (stratified
by label) so that shifted copies of a test image never reach training, and
tests on originals only.  The data are bundled with scikit-learn
(``load_digits``); nothing is downloaded.

Default parameters: augment=4 (~9k images).  Small test parameters:
``augment=0, test_size=0.5`` (~1.8k images, whole pipeline ~0.5 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import confusion_matrix, precision_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

__all__ = ["digits", "preprocessed", "classifier", "predictions"]

_SHIFTS = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])


def _shift(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Shift each 8x8 image by (dy, dx) pixels with zero fill."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    rows = np.arange(8)[None, :, None] + 1 - dy[:, None, None]
    cols = np.arange(8)[None, None, :] + 1 - dx[:, None, None]
    return padded[np.arange(len(images))[:, None, None], rows, cols]


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # (n, 8, 8) float, 0..16
    labels: np.ndarray  # (n,)
    origin: np.ndarray  # (n,) index of the original image each sample derives from
    augmented: np.ndarray  # (n,) bool

    def key_metrics(self) -> dict[str, float]:
        return {"n_images": float(len(self.labels)), "n_original": float((~self.augmented).sum())}


def digits(augment: int = 4, seed: int = 3) -> Digits:
    """Load the bundled digits and add ``augment`` randomly shifted copies of each image."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    n = len(data.target)
    images, origin = [data.images], [np.arange(n)]
    for _ in range(augment):
        d = _SHIFTS[rng.integers(0, len(_SHIFTS), n)]
        images.append(_shift(data.images, d[:, 0], d[:, 1]))
        origin.append(np.arange(n))
    origin_all = np.concatenate(origin)
    return Digits(np.concatenate(images), data.target[origin_all], origin_all, np.repeat(np.arange(augment + 1) > 0, n))


@dataclass(frozen=True)
class Preprocessed:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_origin: np.ndarray
    test_origin: np.ndarray
    scaler: StandardScaler

    def key_metrics(self) -> dict[str, float]:
        return {"n_train": float(len(self.y_train)), "n_test": float(len(self.y_test))}


def preprocessed(digits: Digits, test_size: float = 0.25, seed: int = 3) -> Preprocessed:
    """Stratified split of original images; augmented copies follow their original into train only."""
    originals = np.flatnonzero(~digits.augmented)
    train_o, test_o = train_test_split(
        digits.origin[originals], test_size=test_size, stratify=digits.labels[originals], random_state=seed
    )
    train = np.isin(digits.origin, train_o)
    test = originals[np.isin(digits.origin[originals], test_o)]
    flat = digits.images.reshape(len(digits.labels), -1)
    scaler = StandardScaler().fit(flat[train])
    return Preprocessed(
        scaler.transform(flat[train]),
        digits.labels[train],
        scaler.transform(flat[test]),
        digits.labels[test],
        digits.origin[train],
        digits.origin[test],
        scaler,
    )


@dataclass(frozen=True)
class Classifier:
    model: SVC
    train_accuracy: float
    n_support: int

    def key_metrics(self) -> dict[str, float]:
        return {"train_accuracy": self.train_accuracy, "n_support_vectors": float(self.n_support)}


def classifier(preprocessed: Preprocessed, C: float = 10.0, gamma: float = 0.01) -> Classifier:
    """RBF support-vector classifier on the standardised pixels."""
    model = SVC(C=C, gamma=gamma, kernel="rbf").fit(preprocessed.x_train, preprocessed.y_train)
    acc = float((model.predict(preprocessed.x_train) == preprocessed.y_train).mean())
    return Classifier(model, acc, int(model.n_support_.sum()))


@dataclass(frozen=True)
class Predictions:
    y_pred: np.ndarray
    accuracy: float
    precision_per_class: dict[int, float]
    confusion: np.ndarray
    n_batches: int

    def key_metrics(self) -> dict[str, float]:
        prec = list(self.precision_per_class.values())
        return {
            "accuracy": self.accuracy,
            "macro_precision": float(np.mean(prec)),
            "min_class_precision": float(np.min(prec)),
            "n_batches": float(self.n_batches),
        }


def predictions(classifier: Classifier, preprocessed: Preprocessed, batch_size: int = 64) -> Predictions:
    """Batch inference over the test set; accuracy, per-class precision and confusion matrix."""
    x, y = preprocessed.x_test, preprocessed.y_test
    batches = [classifier.model.predict(x[i : i + batch_size]) for i in range(0, len(y), batch_size)]
    y_pred = np.concatenate(batches)
    labels = np.arange(10)
    prec = precision_score(y, y_pred, labels=labels, average=None, zero_division=0)
    return Predictions(
        y_pred,
        float((y_pred == y).mean()),
        {int(k): float(p) for k, p in zip(labels, prec, strict=True)},
        confusion_matrix(y, y_pred, labels=labels),
        len(batches),
    )
