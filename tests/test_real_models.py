"""Ordinary architectures built from a config (no downloaded weights): healthy ones stay silent at
checkup, broken ones are caught, and every weight-bearing module is measured (coverage)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.measure.records import LayerStats
from deepdiag.rules.layers import gradient_flow

V, T, B = 200, 12, 32


class SeqClassifier(nn.Module):
    """Embedding → RNN/LSTM/GRU → Linear on the last step (or on h_n)."""

    def __init__(self, cell: str, std: float | None = None, use_state: bool = False, layers: int = 1):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](32, 64, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(64, 2)
        self.use_state = use_state
        if std is not None:
            for n, p in self.rnn.named_parameters():
                if "weight" in n:
                    nn.init.normal_(p, 0.0, std)

    def forward(self, x):
        out, h = self.rnn(self.emb(x))
        if self.use_state:
            return self.fc((h[0] if isinstance(h, tuple) else h)[-1])
        return self.fc(out[:, -1])


class Encoder(nn.Module):
    def __init__(self, layers: int = 2):
        super().__init__()
        self.emb = nn.Embedding(V, 64)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), layers)
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        return self.fc(self.enc(self.emb(x)).mean(1))


class GPT(nn.Module):
    def __init__(self, init_range: float = 0.02):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.m = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=V,
                                            initializer_range=init_range, bos_token_id=0, eos_token_id=0))

    def forward(self, x):
        return self.m(input_ids=x).logits.reshape(-1, V)


class Llama(nn.Module):
    """A transformers Llama (RMSNorm, SwiGLU, rotary positions, grouped KV heads) from a config."""

    def __init__(self, init_range: float = 0.02):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.m = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                              initializer_range=init_range, bos_token_id=None, eos_token_id=None,
                                              pad_token_id=None))

    def forward(self, x):
        return self.m(input_ids=x).logits.reshape(-1, V)


def bert(layers: int):
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
                                                    intermediate_size=128, vocab_size=V))


def build(name: str):
    torch.manual_seed(0)
    x, y2 = torch.randint(0, V, (B, T)), torch.randint(0, 2, (B,))
    if name.startswith("bert"):
        return bert(int(name[-1])), x, y2
    if name == "gpt2":
        return GPT(), x, x.reshape(-1)
    if name == "gpt2_init_1":
        return GPT(1.0), x, x.reshape(-1)
    if name == "llama":
        return Llama(), x, x.reshape(-1)
    if name == "encoder":
        return Encoder(), x, y2
    if name == "lstm_std_3":
        return SeqClassifier("lstm", std=3.0), x, y2
    if name.endswith("x3"):  # three stacked layers, PyTorch's default init (or weights std 1e-3: "_tiny")
        cell = name.split("x")[0].split("_")[0]
        return SeqClassifier(cell, std=1e-3 if "tiny" in name else None, layers=3), x, y2
    cell, _, state = name.partition("_")
    return SeqClassifier(cell, use_state=bool(state)), x, y2


CASES = {  # name: codes at warning or worse that must be found (empty: a healthy control, silent)
    "bert2": set(), "bert4": set(), "gpt2": set(), "encoder": set(), "lstm": set(), "lstm_state": set(),
    "gru": set(), "rnn": set(), "lstmx3": set(), "grux3": set(), "llama": set(),
    "lstm_tinyx3": {"vanishing_gradients"},
    "lstm_std_3": {"saturated_units", "exploding_gradients"},
    "gpt2_init_1": {"exploding_gradients"},
}


@pytest.mark.parametrize("name", CASES)
def test_real_architectures(name):
    report = dd.checkup(*build(name))
    found = report.codes("warning")
    assert CASES[name] <= found if CASES[name] else not found, [str(f) for f in report.findings]
    assert report.coverage.fraction == 1.0 and not report.coverage.not_measured
    json.dumps(report.to_dict(), allow_nan=False)


def test_lstm_gates_and_time_are_measured():
    report = dd.checkup(*build("lstm_std_3"))
    row = next(r for r in report.rows if r.name == "rnn")
    assert dict(row.gate_saturation) == {"input": 1.0, "forget": 1.0, "cell": 1.0, "output": 1.0}
    assert row.time_ratio > 100
    healthy = next(r for r in dd.checkup(*build("lstm")).rows if r.name == "rnn")
    assert max(dict(healthy.gate_saturation).values()) < 0.5 and healthy.time_ratio < 100


def test_attention_collapse_is_saturation():
    model, x, y = build("encoder")
    with torch.no_grad():
        for layer in model.enc.layers:
            layer.self_attn.in_proj_weight.mul_(30.0)  # scores ~900× larger: softmax onto one key
    report = dd.checkup(model, x, y)
    peaks = [r.attention_peak for r in report.rows if r.type == "MultiheadAttention"]
    assert peaks and min(peaks) > 0.9
    assert "saturated_units" in report.codes("warning")
    healthy = [r.attention_peak for r in dd.checkup(*build("encoder")).rows if r.type == "MultiheadAttention"]
    assert max(healthy) < 0.5


def test_bert_queries_off_the_main_path_are_not_depth():
    report = dd.checkup(*build("bert2"))
    q = next(r for r in report.rows if r.name.endswith("layer.0.attention.self.query"))
    assert q.signal_norm < 1e-4 * max(r.signal_norm or 0 for r in report.rows)  # tiny: near-uniform attention
    assert q.path_side is None or q.path_side == "in"  # its *output* is not on the main path
    names = [r.name for r in report.rows if r.path_signal is not None]
    assert any("LayerNorm" in n for n in names) and names[-1] == "classifier"


def test_function_used_weight_is_covered_by_its_parameter():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.raw = nn.Linear(8, 3)  # used as a matrix, never called
            self.unused = nn.Linear(8, 8)

        def forward(self, x):
            return torch.relu(self.fc(x)) @ self.raw.weight.t()

    report = dd.checkup(Functional(), torch.randn(32, 8))
    c = report.coverage
    assert (c.weight_modules, c.measured, c.by_parameter, c.not_measured) == (3, 1, ("raw",), ("unused",))
    row = next(r for r in report.rows if r.name == "raw")
    assert row.kind == "parameter" and row.grad_norm > 0


def _row(name, path=None, signal=None, kind="weight"):
    return LayerStats(name=name, kind=kind, path_signal=path, path_side="out" if path is not None else None,
                      signal_norm=signal, weight_norm=1.0)


def test_gradient_flow_reads_only_the_main_path():
    """Sibling rows off the path with tiny signals (attention queries) do not count; a 10⁶× growth
    between two path positions does, even when the last position is back to normal (a final LayerNorm)."""
    rows = [_row("ln0", 1.0, kind="norm"), _row("q", None, 1e-6), _row("k", None, 1e-6), _row("ln1", 1.0, kind="norm"),
            _row("head", 0.5, 0.5)]
    assert gradient_flow(rows) == []
    grown = [_row("ln0", 1e4, kind="norm"), _row("ln1", 1e2, kind="norm"), _row("ln2", 1.0, kind="norm"),
             _row("head", 1.0, 1.0)]
    f = gradient_flow(grown)
    assert [x.code for x in f] == ["exploding_gradients"] and f[0].evidence["ratio"] == pytest.approx(1e4)


def test_gated_recurrent_layers_take_their_gates_share_of_the_decay():
    """Three stacked recurrent layers between an embedding and a head: of a 300× decay toward the input,
    an LSTM's gates take 4³ = 64× at init (¼ per layer), leaving 4.7×: silent; of 10⁴×, 156× is left:
    reported, with both numbers (and as an error only beyond 10⁴× left). A GRU's gates take 2³ = 8×; a
    plain RNN has none. The recurrent layer's position may be its input (its gates then sit after it)."""
    def rows(decay, cell="LSTM", side="out"):
        before = 1.0 / decay
        return [LayerStats(name="emb", kind="embedding", path_signal=before, path_side="out", weight_norm=1.0),
                LayerStats(name="rnn", type=cell, kind="recurrent", stacked=3, path_side=side, weight_norm=1.0,
                           path_signal=1.0 if side == "out" else before),
                LayerStats(name="norm", kind="norm", path_signal=1.0, path_side="out"),
                LayerStats(name="head", kind="weight", path_signal=1.0, path_side="out", signal_norm=1.0,
                           weight_norm=1.0)]

    def codes(found):
        return [(f.code, f.severity) for f in found]

    for side in ("out", "in"):
        assert gradient_flow(rows(300, side=side)) == []
        f = gradient_flow(rows(1e4, side=side))
        assert codes(f) == [("vanishing_gradients", "warning")]
        assert f[0].evidence["ratio"] == pytest.approx(1e-4)
        assert f[0].evidence["gate_gain"] == pytest.approx(0.25 ** 3)
        assert f[0].evidence["ratio_beyond_gates"] == pytest.approx(1e-4 / 0.25 ** 3)
    assert codes(gradient_flow(rows(1e7))) == [("vanishing_gradients", "error")]
    assert gradient_flow(rows(300, "GRU")) == []
    assert codes(gradient_flow(rows(1e3, "GRU"))) == [("vanishing_gradients", "warning")]
    assert codes(gradient_flow(rows(300, "RNN"))) == [("vanishing_gradients", "warning")]


def test_rms_norm_layers_are_depth_positions():
    """transformers' LlamaRMSNorm (and torch's nn.RMSNorm) are normalisation sites: the residual stream
    at every block's norms is on the main path (without them Llama's only positions were the embedding
    and the head, and gradient flow through its blocks went unjudged)."""
    from deepdiag.rules.layers import depth_positions

    report = dd.checkup(*build("llama"))
    names = [r.name for r, _ in depth_positions(report.rows)]
    assert sum("post_attention_layernorm" in n for n in names) == 3 and names[-2].endswith("m.model.norm"), names
    plain = nn.Sequential(nn.Linear(8, 16), nn.RMSNorm(16), nn.ReLU(), nn.Linear(16, 2))
    rows = dd.checkup(plain, torch.randn(32, 8), torch.randint(0, 2, (32,))).rows
    assert next(r for r in rows if r.name == "1").kind == "norm"
