import pytest
import torch
import torch.nn as nn

from edgelab import data, evaluation, train


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def test_accuracy_batch_by_batch_equals_accuracy_on_the_whole_tensor():
    m = tiny_cnn()
    x, y = data.tensors("test", limit=300)
    acc, n = evaluation.accuracy(m, limit=300)
    assert n == 300 and abs(acc - evaluation.accuracy_on(m, x, y)) < 1e-6


def test_train_evaluate_and_measures_accuracy_are_one_evaluation():
    m = tiny_cnn()
    acc, n = evaluation.accuracy(m, limit=256)
    assert train.evaluate(m, data.loader("test", 64, shuffle=False, limit=256)) == pytest.approx(acc)
    # a shuffled loader pairs each batch's labels with its own predictions
    shuffled = data.loader("test", 64, shuffle=True, limit=256, seed=3)
    assert evaluation.correct(m, shuffled).float().mean().item() == pytest.approx(acc)


def test_correct_leaves_a_training_model_in_training_mode_and_an_eval_model_in_eval():
    m = tiny_cnn().train()
    batches = [(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))]
    assert evaluation.correct(m, batches, inference=False).shape == (2,) and m.training
    evaluation.correct(m.eval(), batches)
    assert not m.training


def test_correct_refuses_empty_batches():
    with pytest.raises(ValueError, match="no images"):
        evaluation.correct(tiny_cnn(), [])
