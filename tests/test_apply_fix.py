"""dd.apply_fix: every key of FIX_KEYS held to its documented meaning on models of several families (MLP,
CNN with BatchNorm and a residual block, LSTM, nn.TransformerEncoder, transformers BERT and GPT-2), and
dd.fit's clip / warm-up / monitor / token-output additions."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import deepdiag as dd
from deepdiag import surgery
from deepdiag.findings import FIX_KEYS
from deepdiag.fixes import (
    DATA_KEYS,
    MODEL_KEYS,
    TRAIN_KEYS,
    FixChanges,
    fix_data,
    make_loss,
)
from deepdiag.init import scheme_std

# ---- seeded model factories (each returns (model, inputs)) ------------------------------------------------

def mlp(softmax=False):
    layers = [nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
              nn.Linear(64, 5)]
    return nn.Sequential(*layers, *([nn.Softmax(dim=-1)] if softmax else [])), torch.randn(128, 16)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()

    def forward(self, x):
        return x + self.act(self.bn(self.conv(x)))


def cnn():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), ResBlock(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return model, torch.randn(16, 3, 8, 8)


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.act, self.head = nn.LSTM(6, 12, batch_first=True), nn.ReLU(), nn.Linear(12, 3)

    def forward(self, x):  # x: (batch, T, 6)
        out, _ = self.lstm(x)
        return self.head(self.act(out[:, -1]))


def lstm():
    return LSTMNet(), torch.randn(8, 5, 6)


class EncoderNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x: (batch, T, 6)
        return self.head(self.enc(self.inp(x)).mean(1))


def encoder():
    return EncoderNet(), torch.randn(4, 5, 6)


def bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg), torch.randint(0, 40, (4, 7))


def gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg), torch.randint(0, 40, (4, 7))


FAMILIES = {"mlp": mlp, "cnn": cnn, "lstm": lstm, "encoder": encoder, "bert": bert, "gpt2": gpt2}


def build(name):
    torch.manual_seed(0)
    return FAMILIES[name]()


def run(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def snapshot(model):
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}, \
        [p.requires_grad for p in model.parameters()]


def assert_same(model, snap):
    text, state, grads = snap
    assert repr(model) == text
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert [p.requires_grad for p in model.parameters()] == grads


def std_of(w):
    return float(w.detach().float().std(unbiased=False))


# ---- the table --------------------------------------------------------------------------------------------

def test_fix_keys_table_is_complete_and_partitioned():
    """Every key has (type, meaning) text; apply_fix knows each key as exactly one of model/train/data/loss."""
    assert all(isinstance(t, str) and isinstance(m, str) and len(m) > 20 for t, m in FIX_KEYS.values())
    groups = [*MODEL_KEYS, *TRAIN_KEYS, *DATA_KEYS, "loss"]
    assert sorted(groups) == sorted(FIX_KEYS) and len(groups) == len(set(groups))


def test_apply_fix_is_exported_lazily():
    from deepdiag.fixes import apply_fix
    assert "apply_fix" in dd.__all__ and dd.apply_fix is apply_fix


# ---- activation -------------------------------------------------------------------------------------------

HIDDEN = (nn.ReLU, nn.GELU, nn.Tanh)


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_replaces_every_activation_module(family):
    model, x = build(family)
    snap = snapshot(model)
    fixed, changes = dd.apply_fix(model, {"activation": "leaky_relu"})
    assert_same(model, snap)
    acts = [m for m in fixed.modules() if surgery.is_activation(m)]
    assert acts and all(isinstance(m, nn.LeakyReLU) for m in acts), [type(m).__name__ for m in acts]
    assert not any(isinstance(m, HIDDEN) for m in fixed.modules())
    out = run(fixed, x)
    assert out.shape == run(model, x).shape
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in fixed.parameters() if p.dim() >= 2 and p.requires_grad)
    assert any("activation modules are now leaky_relu" in a for a in changes.applied)
    if family == "lstm":
        assert any(u.startswith("lstm") for u in changes.unreached)


def test_transformer_encoder_activation_is_used_on_the_fast_path():
    """The replaced activation is what the eval-mode, no-grad forward computes: with activation_relu_or_gelu
    left at 1, torch's fused path would apply its built-in relu instead."""
    model, x = build("encoder")
    fixed, _ = dd.apply_fix(model, {"activation": "tanh"})
    layer = fixed.enc.layers[0]
    assert isinstance(layer.activation, nn.Tanh) and layer.activation_relu_or_gelu == 0
    fixed.eval()
    with torch.no_grad():
        fast = fixed(x)
    slow = fixed(x).detach()  # autograd on: the module path
    torch.testing.assert_close(fast, slow)
    with torch.no_grad():
        assert not torch.allclose(fast, model.eval()(x), atol=1e-4)


def test_activation_leaves_the_output_activation_and_names_functional_calls():
    model, x = mlp(softmax=True)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return F.relu(self.fc(x))

    fixed, changes = dd.apply_fix(model, {"activation": "tanh"})
    assert isinstance(fixed[-1], nn.Softmax) and isinstance(fixed[1], nn.Tanh)
    sigmoid_out = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    fixed, _ = dd.apply_fix(sigmoid_out, {"activation": "tanh"})
    assert isinstance(fixed[1], nn.Tanh) and isinstance(fixed[3], nn.Sigmoid)
    _, changes = dd.apply_fix(nn.Sequential(Functional(), nn.Linear(4, 2)), {"activation": "tanh"})
    assert any("Functional.forward calls relu" in u for u in changes.unreached)
    assert any("no activation module" in s for s in changes.skipped)


# ---- replace_output, out_features, unfreeze ----------------------------------------------------------------

def test_replace_output_drops_the_softmax():
    model, x = mlp(softmax=True)
    fixed, changes = dd.apply_fix(model, {"replace_output": "identity"})
    assert isinstance(fixed[-1], nn.Identity) and isinstance(model[-1], nn.Softmax)
    torch.testing.assert_close(fixed(x), model[:-1](x))  # raw logits
    assert sum(isinstance(m, nn.ReLU) for m in fixed.modules()) == 3  # hidden activations stay
    _, changes = dd.apply_fix(mlp()[0], {"replace_output": "identity"})
    assert changes.skipped and not changes.applied


@pytest.mark.parametrize("family", ["mlp", "cnn", "lstm", "encoder", "bert", "gpt2"])
def test_out_features_resizes_the_output_layer(family):
    model, x = build(family)
    before = run(model, x).shape
    fixed, changes = dd.apply_fix(model, {"out_features": 7})
    out = run(fixed, x)
    assert out.shape == (*before[:-1], 7) and run(model, x).shape == before
    assert changes.applied[0].startswith("out_features")


def test_unfreeze_named_layers_and_all():
    model, _ = mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    model[6].weight.requires_grad_(True)
    opt = torch.optim.SGD([model[6].weight], lr=0.1)
    fixed, changes = dd.apply_fix(model, {"unfreeze": ["0", "2.weight"]}, optimizer=opt)
    assert [n for n, p in fixed.named_parameters() if p.requires_grad] == ["0.weight", "0.bias", "2.weight",
                                                                          "6.weight"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if n != "6.weight")  # original
    held = {id(p) for g in changes.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in fixed.parameters() if p.requires_grad}  # the optimizer gets them
    fixed, _ = dd.apply_fix(model, {"unfreeze": True})
    assert all(p.requires_grad for p in fixed.parameters())
    with pytest.raises(ValueError, match="unfreeze.*'nope'"):
        dd.apply_fix(model, {"unfreeze": ["nope"]})


def test_unfreeze_the_root_modules_own_parameters_by_its_class_name():
    """deepdiag names the root module by its class (a model owning a parameter directly, such as a
    learned position table): the frozen-layers finding's fix names it so, and only its own
    parameters thaw."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(4, 8))
            self.head = nn.Linear(8, 2)

    model = Net().requires_grad_(False)
    fixed, _ = dd.apply_fix(model, {"unfreeze": ["Net"]})
    assert [n for n, p in fixed.named_parameters() if p.requires_grad] == ["pos"]


# ---- norm and residual -------------------------------------------------------------------------------------

def outputs_of(model, types, x):
    seen = []
    handles = [m.register_forward_hook(lambda _m, _i, o: seen.append(o.detach()))
               for m in model.modules() if isinstance(m, types)]
    model.train()
    run(model, x)
    for h in handles:
        h.remove()
    return seen


def test_norm_batch_normalises_every_hidden_layer_of_an_mlp():
    model, x = mlp()
    fixed, changes = dd.apply_fix(model, {"norm": "batch"})
    outs = outputs_of(fixed, nn.BatchNorm1d, x * 5 + 3)
    assert len(outs) == 3  # three hidden layers, not the output layer
    for o in outs:  # (batch, features): per feature mean 0, std 1 over the batch
        torch.testing.assert_close(o.mean(0), torch.zeros(o.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(o.std(0, unbiased=False), torch.ones(o.shape[1]), atol=1e-3, rtol=0)
    assert isinstance(fixed[-1], nn.Linear) and fixed[-1].out_features == 5


def test_norm_on_a_cnn_skips_layers_already_normalised():
    model, x = cnn()
    fixed, changes = dd.apply_fix(model, {"norm": "batch"}, inputs=x)
    outs = outputs_of(fixed, nn.BatchNorm2d, x)
    assert len(outs) == 3  # the existing two and one new after the second conv (conv 1 and ResBlock have one)
    new = fixed.get_submodule("3_norm")
    assert isinstance(new, nn.BatchNorm2d) and new.num_features == 8
    o = outputs_of(fixed, type(new), x)[1]  # (batch, C, H, W): per channel 0/1
    torch.testing.assert_close(o.mean((0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    fixed, _ = dd.apply_fix(model, {"norm": "layer"}, inputs=x)
    assert sum(isinstance(m, nn.GroupNorm) for m in fixed.modules()) == 1  # where no norm was
    assert run(fixed, x).shape == (16, 4)


@pytest.mark.parametrize("family", ["encoder", "bert", "gpt2"])
def test_norm_layer_on_transformers(family):
    model, x = build(family)
    fixed, changes = dd.apply_fix(model, {"norm": "layer"}, inputs=x)
    new = [m for n, m in fixed.named_modules() if n.endswith(".norm") and isinstance(m, nn.LayerNorm)]
    assert new, changes
    for o in outputs_of(fixed, nn.LayerNorm, x):  # every LayerNorm output: per position mean 0, std ~1
        torch.testing.assert_close(o.mean(-1), torch.zeros(o.shape[:-1]), atol=1e-4, rtol=0)
    run(fixed, x).float().mean().backward()
    if family == "encoder":
        assert any("out_proj" in u for u in changes.unreached)


def test_norm_batch_on_positions_normalises_each_feature():
    """After a Linear applied to (batch, T, C), BatchNorm normalises each feature over batch and positions."""
    model, x = build("encoder")
    fixed, changes = dd.apply_fix(model, {"norm": "batch"}, inputs=x)
    outs = outputs_of(fixed, surgery.FeatureBatchNorm, x * 3 + 1)
    assert len(outs) == 5  # inp, linear1 and linear2 of both layers (not out_proj, not the head)
    for o in outs:  # (batch, T, C)
        torch.testing.assert_close(o.mean((0, 1)), torch.zeros(o.shape[-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(o.std((0, 1), unbiased=False), torch.ones(o.shape[-1]), atol=1e-3, rtol=0)


def test_residual_computes_x_plus_block_of_x():
    """The fixed MLP computes h1 = relu(W0 x); h2 = h1 + relu(W2 h1); h3 = h2 + relu(W4 h2); W6 h3."""
    model, x = mlp()
    fixed, changes = dd.apply_fix(model, {"residual": True})
    m = model
    h1 = m[1](m[0](x))
    h2 = h1 + m[3](m[2](h1))
    h3 = h2 + m[5](m[4](h2))
    torch.testing.assert_close(fixed(x), m[6](h3))
    assert sum(isinstance(r, surgery.Residual) for r in fixed.modules()) == 2


def test_residual_wraps_norm_with_the_block_and_never_the_output_layer():
    square = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))
    fixed, changes = dd.apply_fix(square, {"residual": True})
    assert isinstance(fixed[0], surgery.Residual) and len(fixed[0].block) == 3 and isinstance(fixed[1], nn.Linear)
    model, x = cnn()
    fixed, changes = dd.apply_fix(model, {"residual": True})
    assert [n for n, m in fixed.named_modules() if isinstance(m, surgery.Residual)] == ["3"]
    assert any(u.startswith("5.conv") for u in changes.unreached)  # the ResBlock's conv: not in a Sequential
    fixed.eval(), model.eval()
    h = model[:3](x)
    torch.testing.assert_close(fixed(x), model[5:](h + model[4](model[3](h))))


# ---- init --------------------------------------------------------------------------------------------------

def check_scheme(mats, scheme, tol):
    for mat in mats:
        for b in mat.blocks():
            fan_in, fan_out = surgery._block_fans(b)
            want = scheme_std(scheme, fan_in, fan_out)
            assert abs(std_of(b) / want - 1) < tol, (mat.name, std_of(b), want)


@pytest.mark.parametrize("family,scheme", [("mlp", "he"), ("cnn", "xavier"), ("lstm", "xavier"),
                                           ("encoder", "lecun"), ("bert", "he"), ("gpt2", "he")])
def test_init_gives_the_schemes_std(family, scheme):
    """Std of every computing weight (per gate, per q/k/v block; a Conv1D read as (out, in)) within 25 % of
    scheme_std (the smallest block has 96 weights: relative sampling error of a std ≈ 1/√192 = 7 %), biases
    zero, embeddings and norms untouched."""
    model, x = build(family)
    fixed, changes = dd.apply_fix(model, {"init": scheme})
    mats, biases = surgery.matrices(fixed)
    check_scheme(mats, scheme, 0.25)
    assert all(float(b.detach().abs().max()) == 0.0 for b in biases)
    keep = (nn.Embedding, nn.LayerNorm, nn.BatchNorm2d)
    for (n, m), (_, m0) in zip(fixed.named_modules(), model.named_modules()):
        if isinstance(m, keep):
            assert all(torch.equal(p, p0) for p, p0 in zip(m.parameters(), m0.parameters())), n
    if family == "lstm":  # each gate its own (fan_in, fan_out) = (6, 12), not the stacked (6, 48)
        w = fixed.lstm.weight_ih_l0
        assert w.shape == (48, 6) and abs(std_of(w) / math.sqrt(2 / 18) - 1) < 0.15
    if family == "gpt2":  # a Conv1D of shape (in=16, out=48): He uses fan_in 16, not 48
        w = fixed.transformer.h[0].attn.c_attn.weight
        assert w.shape == (16, 48) and abs(std_of(w) / math.sqrt(2 / 16) - 1) < 0.15


def test_init_at_the_same_scale_is_skipped_not_redrawn():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    fixed, changes = dd.apply_fix(model, {"init": "he"})  # torch's default init: std 1/√(3·fan_in), not He
    assert changes.applied and not changes.skipped
    again, changes2 = dd.apply_fix(fixed, {"init": "he"})
    assert changes2.skipped and "already" in changes2.skipped[0] and not changes2.applied
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), fixed.parameters()))
    _, changes3 = dd.apply_fix(fixed, {"init": "lecun"})  # lecun's std is He's / √2: a real change
    assert changes3.applied and not changes3.skipped


def test_init_at_the_same_scale_still_zeroes_a_shifted_bias_and_resets_norm_layers():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    at_scale, _ = dd.apply_fix(model, {"init": "he"})
    with torch.no_grad():
        at_scale[0].bias.fill_(-5.0)  # the weights keep He's scale; the units are silenced on purpose
    fixed, changes = dd.apply_fix(at_scale, {"init": "he"})
    assert not changes.skipped and float(fixed[0].bias.detach().abs().max()) == 0.0
    with torch.no_grad():
        at_scale[0].bias.zero_()
        at_scale[1].bias.fill_(-10.0)  # BatchNorm's shift: a weight redraw alone leaves every ReLU dead
    fixed, changes = dd.apply_fix(at_scale, {"init": "he"})
    assert torch.equal(fixed[1].bias, torch.zeros(64)) and torch.equal(fixed[1].weight, torch.ones(64))
    assert any("1.bias" in line for line in changes.applied)


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_lsuv_gives_unit_output_variance_per_layer(family):
    model, x = build(family)
    fixed, changes = dd.apply_fix(model, {"init": "lsuv"}, inputs=x)
    fixed.eval()
    weights = (nn.Linear, nn.Conv2d)
    seen = []
    handles = [m.register_forward_hook(lambda _m, _i, o: seen.append(float(o.var(unbiased=False))))
               for m in fixed.modules() if isinstance(m, weights)]
    with torch.no_grad():
        fixed(x)
    for h in handles:
        h.remove()
    assert len(seen) == sum(isinstance(m, weights) for m in fixed.modules())
    assert all(abs(v - 1) < surgery.LSUV_TOL for v in seen), seen
    with pytest.raises(ValueError, match="lsuv.*inputs"):
        dd.apply_fix(model, {"init": "lsuv"})


# ---- the original is never changed -------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_the_original_model_is_unchanged(family):
    model, x = build(family)
    for p in list(model.parameters())[:2]:
        p.requires_grad_(False)
    snap = snapshot(model)
    fix = {"activation": "gelu", "norm": "layer", "residual": True, "out_features": 6, "unfreeze": True,
           "init": "orthogonal"}
    fixed, changes = dd.apply_fix(model, fix, inputs=x)
    assert_same(model, snap)
    run(fixed, x).float().mean().backward()


# ---- training keys -------------------------------------------------------------------------------------------

def test_training_keys_change_the_config_exactly():
    cfg = dd.TrainConfig(lr=0.1, momentum=0.9, epochs=5)
    fix = {"lr_factor": 0.1, "batch_size": 32, "clip_grad_norm": 1.0, "warmup_steps": 10, "weight_decay": 1e-4,
           "optimizer": "adam", "epochs": 3}
    _, changes = dd.apply_fix(mlp()[0], fix, config=cfg)
    assert changes.train == {"lr": pytest.approx(0.01), "batch_size": 32, "clip_grad_norm": 1.0,
                             "warmup_steps": 10, "weight_decay": 1e-4, "optimizer": "adam", "epochs": 3}
    want = dd.TrainConfig(lr=0.1 * 0.1, momentum=0.9, epochs=3, batch_size=32, clip_grad_norm=1.0,
                          warmup_steps=10, weight_decay=1e-4, optimizer="adam")
    assert changes.config == want and cfg.lr == 0.1
    _, alone = dd.apply_fix(mlp()[0], {"lr_factor": 0.5})
    assert alone.train == {"lr_factor": 0.5} and alone.config is None and alone.optimizer is None


@pytest.mark.parametrize("make,kept", [
    (lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9, nesterov=True), {"momentum": 0.9, "nesterov": True}),
    (lambda ps: torch.optim.Adam(ps, lr=0.2, betas=(0.8, 0.95), eps=1e-6), {"betas": (0.8, 0.95), "eps": 1e-6}),
], ids=["sgd", "adam"])
def test_a_copied_optimizer_keeps_its_class_and_hyper_parameters(make, kept):
    model, _ = mlp()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = make([{"params": decay, "weight_decay": 1e-3}, {"params": rest, "weight_decay": 0.0}])
    fixed, changes = dd.apply_fix(model, {"lr_factor": 0.5, "weight_decay": 1e-2}, optimizer=opt)
    new = changes.optimizer
    assert type(new) is type(opt) and changes.train == {"lr": pytest.approx(0.1), "weight_decay": 1e-2}
    assert [len(g["params"]) for g in new.param_groups] == [4, 4]
    assert {id(p) for g in new.param_groups for p in g["params"]} == {id(p) for p in fixed.parameters()}
    for g in new.param_groups:
        assert g["lr"] == pytest.approx(0.1) and all(g[k] == v for k, v in kept.items())
    assert [g["weight_decay"] for g in new.param_groups] == [1e-2, 0.0]  # biases keep no decay
    assert opt.param_groups[0]["lr"] == 0.2  # the given optimizer is left alone
    _, switched = dd.apply_fix(model, {"optimizer": "adamw"}, optimizer=opt)
    assert type(switched.optimizer) is torch.optim.AdamW
    assert [g["lr"] for g in switched.optimizer.param_groups] == [0.2, 0.2]


def test_loss_key_and_make_loss():
    _, changes = dd.apply_fix(mlp()[0], {"loss": "bce_with_logits"})
    assert changes.loss == "bce_with_logits" and changes.to_dict()["loss"] == "bce_with_logits"
    logits, ids = torch.randn(6, 1), torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(make_loss("bce_with_logits")(logits, ids),
                               F.binary_cross_entropy_with_logits(logits[:, 0], ids.float()))
    soft = torch.rand(6, 1)  # float targets of the logits' shape
    torch.testing.assert_close(make_loss("bce_with_logits")(logits, soft),
                               F.binary_cross_entropy_with_logits(logits, soft))
    assert isinstance(make_loss("cross_entropy"), nn.CrossEntropyLoss) and isinstance(make_loss("mse"), nn.MSELoss)
    with pytest.raises(ValueError, match="loss"):
        make_loss("hinge")


# ---- data keys ----------------------------------------------------------------------------------------------

def data(n=200, d=5, classes=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) * torch.arange(1, d + 1) + 10 * torch.arange(d)
    y = torch.randint(0, 2, (n,), generator=g) if classes else torch.randn(n, 1, generator=g) * 30 + 7
    return SimpleNamespace(x_train=x[:150], y_train=y[:150], x_val=x[150:], y_val=y[150:])


def test_standardize_inputs_uses_the_training_statistics():
    ds = data()
    _, changes = dd.apply_fix(mlp()[0], {"standardize_inputs": True})
    new = fix_data(ds, changes)
    torch.testing.assert_close(new.x_train.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(new.x_train.std(0, unbiased=False), torch.ones(5), atol=1e-5, rtol=0)
    mean, std = ds.x_train.mean(0), ds.x_train.std(0, unbiased=False)
    torch.testing.assert_close(new.x_val, (ds.x_val - mean) / std)
    assert new.y_train is ds.y_train and ds.x_train.mean() > 1  # the original is untouched
    img = SimpleNamespace(x_train=torch.randn(20, 3, 4, 4) * torch.tensor([1.0, 5, 9]).view(1, 3, 1, 1) + 4,
                          y_train=torch.zeros(20, dtype=torch.long))
    out = fix_data(img, {"standardize_inputs": True}).x_train
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)


def test_target_keys():
    reg = data(classes=False)
    new = fix_data(reg, {"standardize_targets": True})
    torch.testing.assert_close(new.y_train.mean(0), torch.zeros(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(new.y_train.std(0, unbiased=False), torch.ones(1), atol=1e-5, rtol=0)
    mean, std = reg.y_train.mean(0), reg.y_train.std(0, unbiased=False)
    torch.testing.assert_close(new.y_val, (reg.y_val - mean) / std)
    pm = SimpleNamespace(x_train=torch.zeros(4, 1), y_train=torch.tensor([-1.0, 1, 1, -1]),
                         x_val=torch.zeros(2, 1), y_val=torch.tensor([1.0, -1]))
    new = fix_data(pm, {"target_range": [0, 1]})
    assert new.y_train.tolist() == [0, 1, 1, 0] and new.y_val.tolist() == [1, 0]
    with pytest.raises(ValueError, match="standardize_targets"):
        fix_data(data(), {"standardize_targets": True})  # class ids


def test_changes_to_dict_is_json_safe():
    import json
    opt = torch.optim.SGD(mlp()[0].parameters(), lr=0.1)
    _, changes = dd.apply_fix(mlp()[0], {"init": "he", "lr": 0.01, "standardize_inputs": True},
                              config=dd.TrainConfig(), optimizer=opt)
    d = json.loads(json.dumps(changes.to_dict()))
    assert d["optimizer"] == "SGD" and d["config"]["lr"] == 0.01 and d["data"] == {"standardize_inputs": True}
    assert isinstance(changes, FixChanges)


# ---- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fix,error,key", [
    ({"learning_rate": 0.1}, ValueError, "learning_rate"),
    ({"init": "glorious"}, ValueError, "init"),
    ({"activation": "swish"}, ValueError, "activation"),
    ({"norm": "group"}, ValueError, "norm"),
    ({"residual": "yes"}, TypeError, "residual"),
    ({"replace_output": "softmax"}, ValueError, "replace_output"),
    ({"out_features": 0}, ValueError, "out_features"),
    ({"out_features": 2.5}, TypeError, "out_features"),
    ({"unfreeze": "fc1"}, TypeError, "unfreeze"),
    ({"lr": 0}, ValueError, "lr"),
    ({"lr_factor": "x"}, TypeError, "lr_factor"),
    ({"lr": 0.1, "lr_factor": 2}, ValueError, "lr_factor"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"clip_grad_norm": -1.0}, ValueError, "clip_grad_norm"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"loss": "hinge"}, ValueError, "loss"),
    ({"standardize_inputs": 1}, TypeError, "standardize_inputs"),
    ({"target_range": [1, 0]}, ValueError, "target_range"),
    ({"target_range": [0, 1, 2]}, TypeError, "target_range"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_fix_values_name_the_key(fix, error, key):
    with pytest.raises(error, match=key):
        dd.apply_fix(mlp()[0], fix)


def test_bad_arguments():
    with pytest.raises(TypeError, match="fix"):
        dd.apply_fix(mlp()[0], [("init", "he")])
    with pytest.raises(TypeError, match="model"):
        dd.apply_fix("model", {"init": "he"})
    with pytest.raises(TypeError, match="optimizer"):
        dd.apply_fix(mlp()[0], {"lr": 0.1}, optimizer="sgd")


# ---- dd.fit: clipping, warm-up, monitor, token outputs ---------------------------------------------------------

def raw_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g) * 100  # large inputs: large gradients
    return SimpleNamespace(x_train=x, y_train=(x[:, 0] > 0).long())


class StepSpy:
    """Global optimizer pre-step hook: the gradient norm and lr each step sees."""

    def __enter__(self):
        self.norms, self.lrs = [], []

        def hook(opt, args, kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            self.lrs.append(opt.param_groups[0]["lr"])
        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_clips_the_gradient_norm():
    with StepSpy() as clipped:
        dd.fit(small(), raw_data(), epochs=2, batch_size=16, clip_grad_norm=0.5, eval_train=False)
    with StepSpy() as free:
        dd.fit(small(), raw_data(), epochs=2, batch_size=16, eval_train=False)
    assert len(clipped.norms) == 8 and max(clipped.norms) <= 0.5 * (1 + 1e-5)
    assert max(free.norms) > 0.5  # the control: clipping had something to do


def test_fit_warms_the_lr_up_linearly():
    with StepSpy() as spy:
        dd.fit(small(), raw_data(), epochs=2, batch_size=16, lr=0.4, warmup_steps=5, eval_train=False)
    assert spy.lrs == pytest.approx([0.08, 0.16, 0.24, 0.32, 0.4, 0.4, 0.4, 0.4])
    with StepSpy() as none:
        dd.fit(small(), raw_data(), epochs=1, batch_size=16, lr=0.4, eval_train=False)
    assert none.lrs == [0.4] * 4


def test_fit_feeds_the_monitor():
    class Recorder:
        def __init__(self):
            self.losses, self.epochs = [], []

        def step(self, loss):
            self.losses.append(float(loss))

        def epoch(self, **kw):
            self.epochs.append(kw)

    rec = Recorder()
    ds = raw_data()
    ds.x_val, ds.y_val = ds.x_train[:8], ds.y_train[:8]
    hist = dd.fit(small(), ds, epochs=3, batch_size=16, lr=1e-3, monitor=rec)
    assert len(rec.losses) == hist.steps == 12
    assert sum(rec.losses[:4]) / 4 == pytest.approx(hist.batch_loss[0])
    assert [e["train_loss"] for e in rec.epochs] == hist.train_loss
    assert [e["val_acc"] for e in rec.epochs] == hist.val_acc and set(rec.epochs[0]) == {
        "train_loss", "val_loss", "train_acc", "val_acc"}


def test_fit_hands_its_optimizer_to_a_monitor_told_none():
    model = small()
    with dd.Monitor(model) as mon:
        dd.fit(model, raw_data(), epochs=1, batch_size=16, lr=0.02, weight_decay=0.3, monitor=mon)
        assert mon.optimizer.param_groups[0]["weight_decay"] == 0.3 and mon.optimizer.param_groups[0]["lr"] == 0.02
    own = torch.optim.SGD(model.parameters(), lr=0.5)
    with dd.Monitor(model, optimizer=own) as mon:
        dd.fit(model, raw_data(), epochs=1, batch_size=16, lr=0.02, monitor=mon)
        assert mon.optimizer is own  # one the user gave is kept


def test_fit_takes_token_outputs_with_a_loss():
    """(batch, T, vocab) outputs with (batch, T) targets: accuracy over every position."""
    torch.manual_seed(0)
    vocab = 7
    model = nn.Sequential(nn.Embedding(vocab, 8), nn.Linear(8, vocab))
    x = torch.randint(0, vocab, (32, 5))
    ds = SimpleNamespace(x_train=x, y_train=(x + 1) % vocab)
    loss = lambda out, y: F.cross_entropy(out.reshape(-1, vocab), y.reshape(-1))
    hist = dd.fit(model, ds, epochs=2, lr=0.5, batch_size=8, loss_fn=loss)
    with torch.no_grad():
        acc = (model(x).argmax(-1) == ds.y_train).float().mean()
    assert hist.train_acc[-1] == pytest.approx(float(acc))  # a fraction of the 160 positions, not of 32 rows
    with pytest.raises(ValueError, match="loss_fn"):
        dd.fit(model, ds, epochs=1)


def test_the_cross_entropy_a_fix_names_reads_classes_on_the_last_dimension():
    """A (batch, T, vocab) token output against (batch, T) ids: classes on the last dimension (dd.fit's
    convention), where torch's CrossEntropyLoss would read dimension 1; images (N, C, H, W) keep torch's."""
    from deepdiag.fixes import make_loss

    loss = make_loss("cross_entropy")
    torch.manual_seed(0)
    tokens, ids = torch.randn(4, 5, 7), torch.randint(7, (4, 5))
    assert float(loss(tokens, ids)) == pytest.approx(float(F.cross_entropy(tokens.reshape(-1, 7), ids.reshape(-1))))
    images, masks = torch.randn(2, 3, 4, 4), torch.randint(3, (2, 4, 4))
    assert float(loss(images, masks)) == pytest.approx(float(F.cross_entropy(images, masks)))
    square, ids = torch.randn(4, 7, 7), torch.randint(7, (4, 7))  # T = vocab: both layouts fit, the last wins
    assert float(loss(square, ids)) == pytest.approx(float(F.cross_entropy(square.reshape(-1, 7), ids.reshape(-1))))


def test_the_models_own_activation_modules_are_found_by_measurement_and_swapped():
    """A custom Exp module between layers is a nonlinear elementwise map: swapped. A scaling, a softmax
    (not elementwise) and the activation after the output layer are not."""

    class Exp(nn.Module):
        def forward(self, x):
            return torch.exp(x)

    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    class Soft(nn.Module):
        def forward(self, x):
            return torch.softmax(x, -1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Exp(), nn.Linear(8, 8), Scale(), Soft(), nn.Linear(8, 3), Exp())
    x = torch.randn(16, 4)
    assert surgery.custom_activations(model, x) == ["1"]
    fixed, changes = dd.apply_fix(model, {"activation": "relu"}, inputs=x)
    assert [type(m).__name__ for m in fixed] == ["Linear", "ReLU", "Linear", "Scale", "Soft", "Linear", "Exp"]
    assert surgery.custom_activations(model, None) == []  # not measurable without a batch
    # stacked: the first exp overflows, so the later ones see inf and NaN (inf − inf in the next layer);
    # each is still the same elementwise map, probed at unit scale where its input is not finite
    deep = nn.Sequential(nn.Linear(4, 8), Exp(), nn.Linear(8, 8), Exp(), nn.Linear(8, 8), Exp(), nn.Linear(8, 3))
    with torch.no_grad():
        deep[0].weight.mul_(1000)
    assert surgery.custom_activations(deep, x) == ["1", "3", "5"]


def test_swapping_activations_runs_the_model_forward_once():
    """swap_activations asks three questions of the forward order (the output's activation, the model's own
    activations, the identity slots of a linear model): one recorded pass answers all of them. A linear
    model with a custom module (a scaling, not an activation) needs all three."""

    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    model = nn.Sequential(nn.Linear(4, 8), nn.Identity(), nn.Linear(8, 3), Scale())
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    assert surgery.swap_activations(model, "relu", torch.randn(5, 4)) == (1, [])
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "Scale"] and len(calls) == 1


def test_init_default_redraws_each_layer_as_its_library_does_and_is_measured():
    """init='default': PyTorch's reset_parameters (Linear, LSTM, attention) back after a custom init; a
    model already at that scale is left alone and the note says so."""
    torch.manual_seed(0)
    zeroed = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    for p in zeroed.parameters():
        nn.init.zeros_(p)
    fixed, changes = dd.apply_fix(zeroed, {"init": "default"})
    bound = 1 / math.sqrt(10)  # U(±1/√fan_in) for the first layer's weight and bias
    w = fixed[0].weight.detach()
    assert float(w.abs().max()) <= bound and float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.15)
    assert float(fixed[0].bias.detach().abs().max()) > 0 and not changes.skipped
    _, same = dd.apply_fix(nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1)), {"init": "default"})
    assert not same.applied and "already have the default scale" in same.skipped[0]
    lstm = nn.LSTM(8, 16)
    for p in lstm.parameters():
        nn.init.normal_(p, 0.0, 3.0)
    fixed, _ = dd.apply_fix(lstm, {"init": "default"})
    assert all(float(p.detach().abs().max()) <= 1 / math.sqrt(16) for p in fixed.parameters())  # U(±1/√hidden)
