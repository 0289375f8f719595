"""Healthy base programs: one small plain-PyTorch training program per model family.

A ``Program`` holds what a training script fixes: how the model is built (after
``torch.manual_seed(seed)``), the data, the loss, the optimizer, the batch size and the epoch budget,
plus the few switches a fault can flip (data order, ``zero_grad``, target scaling, model edits). Each
base trains in a few seconds on one CPU thread to clearly better than chance (checked by the runner:
``harness.healthy``).

Data are offline: scikit-learn's digits and breast cancer sets and deepdiag's ``teacher`` regression
generator through ``dd.data.load``, and two synthetic token tasks with a learnable rule
(``marker_tokens``: the class whose marker tokens occur most often; ``bigram_tokens``: the next token is
a fixed permutation of the current one 80 % of the time).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import deepdiag as dd


@dataclass(frozen=True)
class Data:
    """Train and validation tensors. task: "classification" (y: class ids), "regression"
    (y: (n, 1) floats) or "tokens" (y: (n, T) next-token ids, one class per position)."""
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    task: str
    n_classes: int | None


OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class Program:
    """One training program. ``edits`` are applied in order to the freshly built model (each returns
    the model, possibly wrapped). Targets fed to the loss are ``y * target_scale + target_shift``
    (regression); the metric is always in the base's units. ``max_steps`` caps optimizer steps."""
    name: str
    family: str
    build: Callable[[], nn.Module]
    data: Data
    loss_fn: Callable
    optimizer: tuple[str, tuple]  # (name in OPTIMIZERS, sorted keyword items)
    batch_size: int
    epochs: int
    max_steps: int | None = None
    edits: tuple = ()
    shuffle: bool = True
    zero_grad: bool = True
    target_scale: float = 1.0
    target_shift: float = 0.0
    predict: Callable[[Tensor], Tensor] | None = None  # output -> class ids; None: argmax
    operator: str | None = None

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.fresh()

    def fresh(self) -> nn.Module:
        """The model with its edits, drawn from the global RNG as it stands (``model`` seeds it first)."""
        model = self.build()
        for edit in self.edits:
            model = edit(model)
        return model

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        name, kw = self.optimizer
        return OPTIMIZERS[name](model.parameters(), **dict(kw))

    @property
    def metric(self) -> str:
        """"val_acc" (higher is better) or "val_mse" (lower is better, base units)."""
        return "val_mse" if self.data.task == "regression" else "val_acc"


def opt(name: str, **kw) -> tuple[str, tuple]:
    return name, tuple(sorted(kw.items()))


# ---- data ----

@cache
def sklearn_data(name: str, images: bool = False) -> Data:
    ds = dd.data.load(name, seed=0)
    shape = (-1, 1, 8, 8) if images else (len(ds.x_train[0]),)
    x = lambda t: t.reshape(-1, *shape[1:]) if images else t
    return Data(x(ds.x_train), ds.y_train, x(ds.x_val), ds.y_val, ds.task, ds.n_classes)


MARK_VOCAB, MARK_LEN, MARK_CLASSES = 32, 16, 4


@cache
def marker_tokens(n_train: int = 1000, n_val: int = 400, seed: int = 0) -> Data:
    """Sequences of MARK_LEN tokens from a vocabulary of 32. Tokens 4c..4c+3 mark class c (c < 4);
    16..31 are noise. Each sequence holds 2 markers of its class and 1 of another class at random
    positions, so the label is the class with the most markers (a bag-of-words rule, learnable by
    every sequence family; chance 25 %)."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    y = torch.randint(MARK_CLASSES, (n,), generator=g)
    x = torch.randint(16, MARK_VOCAB, (n, MARK_LEN), generator=g)
    pos = torch.rand(n, MARK_LEN, generator=g).argsort(dim=1)[:, :3]
    own = 4 * y[:, None] + torch.randint(4, (n, 2), generator=g)
    other = 4 * ((y + torch.randint(1, MARK_CLASSES, (n,), generator=g)) % MARK_CLASSES)
    other = other + torch.randint(4, (n,), generator=g)
    x.scatter_(1, pos, torch.cat([own, other[:, None]], dim=1))
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "classification", MARK_CLASSES)


LM_VOCAB, LM_LEN = 16, 17


@cache
def bigram_tokens(n_train: int = 800, n_val: int = 200, seed: int = 0) -> Data:
    """Sequences where token t+1 is perm[token t] with probability 0.8, else uniform: the best
    next-token accuracy is 0.8 + 0.2/16 = 0.81, chance 1/16. Inputs are tokens 0..T-2, targets 1..T-1."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    perm = torch.randperm(LM_VOCAB, generator=g)
    seq = torch.empty(n, LM_LEN, dtype=torch.long)
    seq[:, 0] = torch.randint(LM_VOCAB, (n,), generator=g)
    for t in range(1, LM_LEN):
        keep = torch.rand(n, generator=g) < 0.8
        seq[:, t] = torch.where(keep, perm[seq[:, t - 1]], torch.randint(LM_VOCAB, (n,), generator=g))
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "tokens", LM_VOCAB)


def token_cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy over every position: out (batch, T, vocab), y (batch, T)."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# ---- models ----

class ResidualBlock(nn.Module):
    """He et al. (2016) basic block: relu(x + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.act2(x + self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


class Recurrent(nn.Module):
    """Embedding -> LSTM/GRU -> the last hidden state -> Linear."""

    def __init__(self, cell: type, vocab: int, classes: int, emb: int = 32, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = cell(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))  # (batch, T, hidden)
        return self.head(out[:, -1])


class Encoder(nn.Module):
    """Token + learned position embeddings -> nn.TransformerEncoder -> mean over positions -> Linear."""

    def __init__(self, vocab: int, classes: int, d: int = 32, length: int = MARK_LEN):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x) + self.pos).mean(dim=1))


class MeanEmbedding(nn.Module):
    """Embedding -> mean over positions -> Linear -> ReLU -> Linear (fastText-like)."""

    def __init__(self, vocab: int, classes: int, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.hidden, self.act = nn.Linear(d, d), nn.ReLU()
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.act(self.hidden(self.embed(x).mean(dim=1))))


class TokenConv(nn.Module):
    """Embedding -> two Conv1d + ReLU -> max over positions -> Linear."""

    def __init__(self, vocab: int, classes: int, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.conv1, self.act1 = nn.Conv1d(d, d, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv1d(d, d, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.embed(x).transpose(1, 2)  # (batch, d, T)
        h = self.act2(self.conv2(self.act1(self.conv1(h))))
        return self.head(h.amax(dim=2))


class Logits(nn.Module):
    """A transformers model called on token ids, returning ``.logits`` (as a user's loop would)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(input_ids=x).logits


def mlp(sizes: list[int], act: type = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def cnn_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        ResidualBlock(16), ResidualBlock(16), ResidualBlock(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=MARK_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, type_vocab_size=1,
                     num_labels=MARK_CLASSES)
    return Logits(BertForSequenceClassification(cfg))


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=LM_VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=None, eos_token_id=None)
    return Logits(GPT2LMHeadModel(cfg))


def _bases() -> dict[str, Program]:
    digits, cancer, teacher = sklearn_data("digits"), sklearn_data("breast_cancer"), sklearn_data("teacher")
    images, marks, lm = sklearn_data("digits", images=True), marker_tokens(), bigram_tokens()
    ce = nn.CrossEntropyLoss()
    v, c = MARK_VOCAB, MARK_CLASSES
    sgd = opt("sgd", lr=0.05, momentum=0.9)
    p = [
        Program("mlp", "mlp", lambda: mlp([64, 64, 64, 64, 10]), digits, ce, sgd, 64, 8),
        Program("mlp_tanh", "mlp", lambda: mlp([30, 32, 32, 2], nn.Tanh), cancer, ce,
                opt("adam", lr=1e-3), 32, 10),
        Program("regression", "regression", lambda: mlp([10, 64, 64, 1]), teacher, nn.MSELoss(),
                opt("adam", lr=3e-3), 32, 10),
        Program("cnn_bn", "cnn", cnn_bn, images, ce, sgd, 64, 6),
        Program("resnet", "resnet", resnet, images, ce, sgd, 64, 6),
        Program("lstm", "rnn", lambda: Recurrent(nn.LSTM, v, c), marks, ce, opt("adam", lr=3e-3), 32, 6),
        Program("gru", "rnn", lambda: Recurrent(nn.GRU, v, c), marks, ce, opt("adam", lr=3e-3), 32, 6),
        Program("transformer", "transformer", lambda: Encoder(v, c), marks, ce, opt("adam", lr=1e-3), 32, 6),
        Program("bert", "transformer", bert, marks, ce, opt("adamw", lr=3e-3), 32, 10),
        Program("gpt2_lm", "transformer", gpt2, lm, token_cross_entropy, opt("adamw", lr=3e-3), 32, 6),
        Program("embedding", "embedding", lambda: MeanEmbedding(v, c), marks, ce, opt("adam", lr=3e-3), 32, 6),
        Program("conv1d", "cnn", lambda: TokenConv(v, c), marks, ce, opt("adam", lr=3e-3), 32, 6),
        Program("mlp_wide_sgd", "mlp", lambda: mlp([64, 128, 10]), digits, ce, opt("sgd", lr=0.1), 32, 5),
    ]
    return {b.name: b for b in p}


@cache
def bases() -> dict[str, Program]:
    """Every base program by name (built once; the data are shared, never modified in place)."""
    return _bases()
