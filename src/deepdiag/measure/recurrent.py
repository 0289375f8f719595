"""Inside a recurrent layer (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``): per-gate saturation and gradient flow
through time, from a step-by-step re-computation of the layer on the checkup batch.

torch runs these layers as one fused kernel, so no hook sees a gate or a time step. ``checkup`` keeps
the layer's input, initial state and the gradients arriving at its outputs (sequence, h_n, c_n), and
``recurrent_facts`` re-runs the textbook equations with the layer's own weights:

    LSTM  i, f, o = σ(z_i), σ(z_f), σ(z_o);  g = tanh(z_g);  c_t = f·c_{t−1} + i·g;  h_t = o·tanh(c_t)
    GRU   r, u = σ(z_r), σ(z_u);  n = tanh(z_n^x + r·z_n^h);  h_t = (1 − u)·n + u·h_{t−1}
    RNN   h_t = tanh(z) (or relu(z)),   z = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh

A gate's unit is *saturated* when |z| is past the same asymptote thresholds as ``saturated_units``
(|z| > 3 for tanh: tanh′ < 0.01; |z| > 5 for σ: σ′ < 0.0067) on more than half of the samples × time
steps. Gradient through time: back-propagating the arriving gradients through the re-computation gives
∂L/∂h_t for every step of the last layer (forward direction); ``time_ratio`` = ‖∂L/∂h_1‖/‖∂L/∂h_T‖.
Through T steps the state's Jacobian multiplies T times, so a ratio ≥ 100 is a recurrence that
amplifies (the RNN analogue of exploding gradients); a ratio < 1 is the usual decay of memory, which a
task with short dependencies does not need, and is reported only as evidence.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .sites import SIGMOID_Z, TANH_Z

GATES = {"LSTM": (("input", "sigmoid"), ("forget", "sigmoid"), ("cell", "tanh"), ("output", "sigmoid")),
         "GRU": (("reset", "sigmoid"), ("update", "sigmoid"), ("new", "tanh"))}


def _cell(kind: str, nonlin: str, x: Tensor, h, w_ih, w_hh, b_ih, b_hh):
    """One step: (new state, [(gate family, pre-activation)])."""
    gi = x @ w_ih.t() + (b_ih if b_ih is not None else 0)
    if kind == "LSTM":
        hh, c = h
        z = gi + hh @ w_hh.t() + (b_hh if b_hh is not None else 0)
        zi, zf, zg, zo = z.chunk(4, -1)
        c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
        return (torch.sigmoid(zo) * torch.tanh(c), c), [zi, zf, zg, zo]
    gh = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
    if kind == "GRU":
        xr, xu, xn = gi.chunk(3, -1)
        hr, hu, hn = gh.chunk(3, -1)
        zr, zu = xr + hr, xu + hu
        zn = xn + torch.sigmoid(zr) * hn
        u = torch.sigmoid(zu)
        return (1 - u) * torch.tanh(zn) + u * h, [zr, zu, zn]
    z = gi + gh
    return (torch.relu(z) if nonlin == "relu" else torch.tanh(z)), [z]


def recurrent_facts(m: nn.Module, d: dict) -> dict:
    """``gate_saturation`` and ``time_ratio`` of recurrent module `m` from what the recorder kept in `d`
    (its ``_rnn`` input/state and ``_rnn_grads``, removed here); {} when the layer cannot be re-computed
    (packed sequences, LSTM projections)."""
    x, hx = d.pop("_rnn", (None, None))
    grads = d.pop("_rnn_grads", {})
    kind = type(m).__name__ if isinstance(m, (nn.LSTM, nn.GRU)) else "RNN"
    if not isinstance(x, Tensor) or not x.is_floating_point() or getattr(m, "proj_size", 0):
        return {}
    if x.dim() == 2:  # unbatched (T, F)
        x = x.unsqueeze(1)
    elif m.batch_first:
        x = x.transpose(0, 1)
    T, B = x.shape[0], x.shape[1]
    H, L, D = m.hidden_size, m.num_layers, 2 if m.bidirectional else 1
    nonlin = getattr(m, "nonlinearity", "tanh")
    gates = GATES.get(kind, (("hidden", "relu" if nonlin == "relu" else "tanh"),))
    h0 = c0 = None
    if hx is not None:
        h0, c0 = hx if isinstance(hx, (tuple, list)) else (hx, None)
        h0 = h0.reshape(L * D, B, H).detach()
        c0 = c0.reshape(L * D, B, H).detach() if c0 is not None else None
    counts = {name: [] for name, _ in gates}
    with torch.enable_grad():
        inp, top, finals = x.detach(), None, []
        for layer in range(L):
            outs = []
            for k in range(D):
                sfx = f"_l{layer}" + ("_reverse" if k else "")
                w = [getattr(m, f"{n}{sfx}", None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                i0 = layer * D + k
                h = h0[i0] if h0 is not None else inp.new_zeros(B, H)
                if kind == "LSTM":
                    h = (h, c0[i0] if c0 is not None else inp.new_zeros(B, H))
                steps, zs = [], [[] for _ in gates]
                for t in (range(T - 1, -1, -1) if k else range(T)):
                    h, z = _cell(kind, nonlin, inp[t], h, *w)
                    steps.append(h[0] if kind == "LSTM" else h)
                    for j, zj in enumerate(z):
                        zs[j].append(zj.detach())
                if k:
                    steps.reverse()
                finals.append(h)
                outs.append(steps)
                for (name, fam), zj in zip(gates, zs):
                    if fam == "relu":
                        continue
                    z = torch.stack(zj)  # (T, B, H)
                    hit = z.abs() > (TANH_Z if fam == "tanh" else SIGMOID_Z)
                    counts[name].append((hit.float().mean((0, 1)) > 0.5).float())
            seq = [torch.cat([o[t] for o in outs], -1) for t in range(T)]
            inp = torch.stack(seq)
            if layer == L - 1:
                top = outs[0]
        out_seq = inp.transpose(0, 1) if m.batch_first and x.dim() == 3 else inp
        facts: dict = {}
        sat = tuple((name, float(torch.cat(c).mean())) for name, c in counts.items() if c)
        if sat:
            facts["gate_saturation"] = sat
        targets, g_out = [], []
        if grads.get(0) is not None and grads[0].shape == out_seq.shape:
            targets.append(out_seq)
            g_out.append(grads[0])
        hn = torch.stack([f[0] if kind == "LSTM" else f for f in finals])
        if grads.get(1) is not None and grads[1].numel() == hn.numel():
            targets.append(hn)
            g_out.append(grads[1].reshape(hn.shape))
        if kind == "LSTM" and grads.get(2) is not None:
            cn = torch.stack([f[1] for f in finals])
            if grads[2].numel() == cn.numel():
                targets.append(cn)
                g_out.append(grads[2].reshape(cn.shape))
        if targets and T >= 2:
            g = torch.autograd.grad(targets, [top[0], top[-1]], g_out, allow_unused=True)
            if g[0] is not None and g[1] is not None:
                first, last = float(g[0].double().norm()), float(g[1].double().norm())
                facts["time_ratio"] = first / last if last > 0 else (math.inf if first > 0 else None)
    return facts
