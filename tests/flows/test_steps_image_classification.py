"""Image-classification steps on the bundled digits with small parameters."""

import numpy as np
import pytest

from flows.image_classification import steps as S


@pytest.fixture(scope="module")
def chain():
    d = S.digits(augment=1, seed=2)
    p = S.preprocessed(d, test_size=0.5, seed=2)
    c = S.classifier(p)
    return d, p, c, S.predictions(c, p, batch_size=100)


def test_shift_moves_pixels_with_zero_fill():
    img = np.zeros((2, 8, 8))
    img[:, 0, 7] = 1.0
    out = S._shift(img, np.array([1, -1]), np.array([0, 1]))
    assert out[0, 1, 7] == 1.0 and out[0].sum() == 1.0  # down one row
    assert out[1].sum() == 0.0  # pushed off the edge


def test_digits_augmentation(chain):
    d = chain[0]
    assert d.images.shape == (2 * 1797, 8, 8)
    assert d.augmented.sum() == 1797
    assert np.array_equal(d.labels, d.labels[~d.augmented][d.origin])  # copies keep their label
    assert not np.array_equal(d.images[d.augmented], d.images[~d.augmented])
    assert np.array_equal(S.digits(augment=1, seed=2).images, d.images)
    assert not np.array_equal(S.digits(augment=1, seed=3).images, d.images)


def test_split_is_stratified_and_leak_free(chain):
    d, p = chain[:2]
    assert not set(p.train_origin) & set(p.test_origin)  # no shifted copy of a test image in training
    assert len(p.y_test) == len(set(p.test_origin))  # test set holds originals only
    assert len(p.y_train) + len(p.y_test) == len(d.labels) - len(p.y_test)
    share = np.bincount(p.y_test, minlength=10) / len(p.y_test)
    assert np.abs(share - 0.1).max() < 0.02
    assert abs(p.x_train.mean()) < 1e-6  # scaler fitted on train
    other = S.preprocessed(d, test_size=0.5, seed=3)
    assert set(other.test_origin) != set(p.test_origin)


def test_classifier_and_batched_predictions(chain):
    _, p, c, pred = chain
    assert c.train_accuracy > 0.98
    assert pred.accuracy > 0.96 and pred.key_metrics()["accuracy"] == pred.accuracy
    assert pred.n_batches == int(np.ceil(len(p.y_test) / 100))
    assert pred.confusion.shape == (10, 10) and pred.confusion.sum() == len(p.y_test)
    assert np.trace(pred.confusion) / pred.confusion.sum() == pytest.approx(pred.accuracy)
    assert min(pred.precision_per_class.values()) > 0.85
    # batching does not change the answer
    assert np.array_equal(S.predictions(c, p, batch_size=7).y_pred, pred.y_pred)


def test_bad_model_scores_low(chain):
    p = chain[1]
    weak = S.classifier(p, C=1e-3, gamma=10.0)
    assert S.predictions(weak, p).accuracy < 0.5
