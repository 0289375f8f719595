"""L2 penalty against its formula and against SGD weight decay; inverted dropout."""
import pytest
import torch
from torch import nn

import deepdiag as dd


def test_l2_penalty_equals_formula_weights_only():
    model = dd.mlp(5, 3, width=7, depth=2, norm="layer")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    weights = [model.hidden[0].linear.weight, model.hidden[1].linear.weight, model.out.weight]
    expected = 0.7 / (2 * 50) * sum((w ** 2).sum() for w in weights)
    torch.testing.assert_close(dd.l2_penalty(model, lam=0.7, n=50), expected)


def test_l2_penalty_ignores_biases_and_norm_params():
    model = dd.mlp(5, 3, width=7, depth=2, norm="batch")
    before = dd.l2_penalty(model, 1.0, 10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(100.0)
    torch.testing.assert_close(dd.l2_penalty(model, 1.0, 10), before)


def _toy_data(n=40, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return type("Toy", (), {"x_train": x, "y_train": y, "task": "classification"})()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_l2_equals_sgd_weight_decay_on_weights(momentum):
    data, lam = _toy_data(), 2.0
    n = len(data.x_train)
    a = dd.mlp(6, 3, width=16, depth=2, seed=1).double()
    b = dd.mlp(6, 3, width=16, depth=2, seed=1).double()
    common = dict(optimizer="sgd", lr=0.05, momentum=momentum, batch_size=8, epochs=4, seed=0, eval_train=False)
    ha = dd.fit(a, data, l2=lam, **common)
    hb = dd.fit(b, data, weight_decay=lam / n, **common)
    assert ha.steps == hb.steps == 20
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    # and the penalty really acted: without it the weights differ
    c = dd.mlp(6, 3, width=16, depth=2, seed=1).double()
    dd.fit(c, data, **common)
    assert (c.out.weight - a.out.weight).abs().max() > 1e-3
    # biases are not decayed: the bias of the no-penalty run matches the L2 run only through the weights,
    # so check directly that weight decay leaves a zero-gradient bias untouched
    d = nn.Linear(3, 1).double()
    nn.init.zeros_(d.weight); nn.init.constant_(d.bias, 1.0)
    opt = dd.train.make_optimizer(d, dd.TrainConfig(lr=0.1, weight_decay=0.5))
    d.bias.grad = torch.zeros_like(d.bias); d.weight.grad = torch.zeros_like(d.weight)
    opt.step()
    assert d.bias.item() == 1.0


def test_dropout_eval_is_deterministic_and_equals_dropout_free_net():
    with_drop = dd.mlp(20, 5, width=64, depth=3, dropout=0.5, seed=0).eval()
    without = dd.mlp(20, 5, width=64, depth=3, dropout=0.0, seed=0).eval()
    x = torch.randn(16, 20)
    torch.testing.assert_close(with_drop(x), with_drop(x), rtol=0, atol=0)
    torch.testing.assert_close(with_drop(x), without(x))


def test_inverted_dropout_keeps_expectation():
    torch.manual_seed(0)
    p = 0.4
    model = dd.mlp(20, 5, width=64, depth=1, dropout=p, activation="relu", seed=0)
    x = torch.randn(1, 20)
    h_eval = model.hidden[0].eval()(x)
    block = model.hidden[0].train()
    samples = torch.stack([block(x) for _ in range(4000)])  # (4000, 1, 64)
    torch.testing.assert_close(samples.mean(0), h_eval, atol=0.05 * h_eval.abs().max().item(), rtol=0)
    zero_share = (samples == 0).float().mean().item()
    active_share = (h_eval > 0).float().mean().item()
    assert abs(zero_share - (1 - active_share * (1 - p))) < 0.02


@pytest.mark.parametrize("kwargs, name", [(dict(lam=-1.0, n=10), "lam"), (dict(lam=1.0, n=0), "n")])
def test_l2_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dd.l2_penalty(nn.Linear(2, 2), **kwargs)


def test_a_tied_weight_is_one_weight():
    """GPT-2 style tying (the output layer reuses the embedding's matrix): counted once by L2 and held once
    by the optimizer (torch warns of duplicate parameters in a group, and steps them twice)."""
    import warnings

    from torch import nn

    from deepdiag.regularization import weight_parameters
    from deepdiag.train import TrainConfig, make_optimizer

    emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    assert len(weight_parameters(model)) == 1
    assert float(dd.l2_penalty(model, 2.0, 1)) == pytest.approx(float((emb.weight ** 2).sum()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_optimizer(model, TrainConfig(weight_decay=0.1))
