import pytest
import torch
import torch.nn as nn

from edgelab import data, evaluation, train


@pytest.fixture(autouse=True)
def _no_eval_cache(monkeypatch):
    """Every test here evaluates afresh, so a cached answer can never hide a change to
    ``correct``; the cache's own test turns it back on."""
    monkeypatch.setenv("EDGELAB_EVAL_CACHE", "0")


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


def test_the_fingerprint_follows_the_weights_and_the_structure():
    a = tiny_cnn()
    b = tiny_cnn()
    b.load_state_dict(a.state_dict())
    assert evaluation.fingerprint(a) == evaluation.fingerprint(b) is not None
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1e-6
    assert evaluation.fingerprint(b) != evaluation.fingerprint(a)
    c = tiny_cnn()
    c.load_state_dict(a.state_dict())
    c[0].padding = (0, 0)              # same weights, another computation
    assert evaluation.fingerprint(c) != evaluation.fingerprint(a)


def test_models_whose_weights_do_not_pin_their_answers_have_no_fingerprint():
    hooked = tiny_cnn()
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    patched = tiny_cnn()
    patched[1].forward = lambda x: x
    graph = torch.fx.symbolic_trace(tiny_cnn())

    class Mine(nn.Module):   # a class from outside torch and edgelab: its code is unknown
        def forward(self, x):
            return x
    assert all(evaluation.fingerprint(m) is None for m in (hooked, patched, graph, Mine()))


def test_the_same_weights_are_evaluated_once_then_answered_from_the_cache(monkeypatch, tmp_path):
    from edgelab import paths
    monkeypatch.setenv("EDGELAB_DATA", str(data.find_data_dir()))   # wherever the data was found
    monkeypatch.setattr(paths, "ROOT", tmp_path)   # build/cache/ in tmp_path
    monkeypatch.delenv("EDGELAB_EVAL_CACHE", raising=False)
    a, b = tiny_cnn(), tiny_cnn()
    b.load_state_dict(a.state_dict())
    first, hit1 = evaluation.cached_correct_mask(a, limit=128)
    second, hit2 = evaluation.cached_correct_mask(b, limit=128)
    assert (hit1, hit2) == (False, True) and torch.equal(first, second)
    fresh = evaluation.correct(a, data.loader("test", 64, shuffle=False, limit=128))
    assert torch.equal(second, fresh)
    _, other_limit = evaluation.cached_correct_mask(a, limit=64)
    assert not other_limit
    monkeypatch.setenv("EDGELAB_EVAL_CACHE", "0")
    assert evaluation.cached_correct_mask(a, limit=128)[1] is False


def test_a_tensor_subclass_in_the_state_dict_leaves_no_fingerprint():
    class Marked(torch.Tensor):   # stands for torchao's quantized weights: their own arithmetic
        pass
    m = tiny_cnn()
    m[4].register_buffer("scale", torch.ones(1).as_subclass(Marked))
    assert evaluation.fingerprint(m) is None
