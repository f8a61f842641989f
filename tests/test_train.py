import pytest
import torch

from edgelab import data, loop, models, train


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = models.student(widths=(8, 16), blocks=1)
    x, y = data.tensors("train", limit=256)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = loop.train_step(model, x, y, opt)
    for _ in range(30):
        last = loop.train_step(model, x, y, opt)
    assert last < 0.7 * first


def test_fit_is_reproducible_and_resumes_where_it_stopped(tmp_path):
    class Stop(Exception):
        pass

    def run(resume=None, stop_at=None):
        torch.manual_seed(0)
        model = models.student(widths=(4,), blocks=1)
        batches = data.loader("train", 64, flip=True, limit=512, seed=0)
        steps = [0]

        def after_step(_):
            steps[0] += 1
            if steps[0] == stop_at:
                raise Stop
        hist = train.fit(model, batches, 2, lr=0.05, device=torch.device("cpu"),
                         resume=resume, progress=False, after_step=after_step)
        return model, hist

    straight, hist = run()
    assert run()[1] == hist
    resume = tmp_path / "r.pt"
    try:
        run(resume, stop_at=8 + 3)  # 8 batches an epoch: killed during the second epoch
    except Stop:
        pass
    assert torch.load(resume, weights_only=True)["epoch"] == 1
    resumed, hist_resumed = run(resume)
    assert hist_resumed == hist
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_evaluate_returns_a_fraction_in_eval_mode():
    model = models.student(widths=(4,), blocks=1).train()
    acc = train.evaluate(model, data.loader("test", 500, limit=1000), torch.device("cpu"))
    assert 0.0 <= acc <= 1.0 and model.training


def test_finetune_steps_trains_in_place_and_leaves_the_model_on_the_cpu_in_eval_mode():
    torch.manual_seed(0)
    model = models.student(widths=(4,), blocks=1)
    before = model.fc.weight.detach().clone()
    out = train.finetune_steps(model, steps=2, lr=0.05, batch_size=16)
    assert out is model and not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert not torch.equal(before, model.fc.weight)


def test_evaluate_gives_the_same_accuracy_on_a_shuffled_loader():
    torch.manual_seed(0)
    model = models.student(widths=(8, 16), blocks=1)
    in_order = train.evaluate(model, data.loader("test", 100, shuffle=False, limit=400))
    shuffled = train.evaluate(model, data.loader("test", 100, shuffle=True, limit=400, seed=3))
    assert in_order == shuffled


def test_recalibrate_batchnorm_recomputes_stale_running_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01))
    batches = [(torch.randn(16, 1, 8, 8) * 3 + 2, None) for _ in range(5)]
    train.recalibrate_batchnorm(model, batches, steps=5)
    bn = model[1]
    with torch.no_grad():
        y = torch.cat([model[0](x) for x, _ in batches])
    assert torch.allclose(bn.running_mean, y.mean((0, 2, 3)), atol=1e-4)
    assert bn.momentum == 0.01 and not model.training


def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    x, y = torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))
    return model, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]


def test_the_loop_runs_steps_round_the_batches_and_calls_plain_functions():
    from edgelab import loop
    model, batches = _tiny()
    calls = []
    state = loop.run(model, batches, torch.optim.SGD(model.parameters(), lr=0.01), steps=7,
                     callbacks=[lambda m: calls.append(m)])
    assert state.step == 7 and len(state.losses) == 7 and len(state.history) == 1
    assert calls == [model] * 7
    with pytest.raises(ValueError, match="either epochs .* or steps"):
        loop.run(model, batches, torch.optim.SGD(model.parameters(), lr=0.01), epochs=1, steps=2)
    with pytest.raises(ValueError, match="batches are empty"):
        loop.run(model, [], torch.optim.SGD(model.parameters(), lr=0.01), steps=2)


def test_the_loop_leaves_no_gradients_behind():
    # the last step's gradients would cost one model's size at a notebook's memory peak
    model, batches = _tiny()
    loop.run(model, batches, torch.optim.SGD(model.parameters(), lr=0.01), steps=2)
    assert all(p.grad is None for p in model.parameters())


def test_freeze_batchnorm_stops_the_running_statistics_from_the_step_asked():
    from edgelab import loop
    model, batches = _tiny()
    seen = []

    class Watch(loop.Callback):
        def after_step(self, state):
            seen.append(model[1].running_mean.clone())
    loop.run(model, batches, torch.optim.SGD(model.parameters(), lr=0.01), epochs=2,
             callbacks=[loop.FreezeBatchNorm(0.5), Watch()])   # 6 steps: frozen from step 3
    assert not torch.equal(seen[0], seen[1]) and not model[1].training
    assert all(torch.equal(seen[2], s) for s in seen[3:])


def test_reapply_masks_keeps_pruned_weights_at_zero_through_momentum_and_decay():
    from edgelab import loop
    model, batches = _tiny()
    mask = torch.rand_like(model[3].weight) > 0.5
    with torch.no_grad():
        model[3].weight.mul_(mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loop.run(model, batches, opt, epochs=2, callbacks=[loop.ReapplyMasks({"3.weight": mask})])
    assert (model[3].weight[~mask] == 0).all() and (model[3].weight[mask] != 0).any()


def test_student_fitnets_ships_a_checkpoint_that_loads_into_the_plain_student(tmp_path,
                                                                             monkeypatch):
    from edgelab import paths
    monkeypatch.setattr(paths, "resume_dir", lambda: tmp_path / "resume")
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 0.0)   # 15k images: not the point
    card = train.train_recipe("student-fitnets", tmp_path / "fit", epochs=1, limit=256,
                              progress=False)
    assert card["training"]["hint"] == train.RECIPES["student-fitnets"]["hint"]
    plain = models.Student()
    plain.load_state_dict(models.load_checkpoint(tmp_path / "fit").state_dict())  # strict
    assert not any(m._forward_hooks for m in plain.modules())
