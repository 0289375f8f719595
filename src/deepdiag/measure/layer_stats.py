"""Host-side per-layer records (``LayerStats``) from the device measurements of a ``Recorder`` and the
modules' weights: the input of the layer rules."""
from __future__ import annotations

import math

from torch import Tensor, nn

from .records import LAYER_FIELDS, UNIT_FAMILIES, LayerStats
from .sites import Site, matrix_params, read_weight
from .weights import column_symmetry, recognise_init, row_symmetry, weight_of, weight_summary

SYMMETRIC = 1e-3  # rows this close are worth comparing the outgoing weights of (the rule's tolerance is 1e-4)


def _f(v):
    if v is None:
        return None
    if isinstance(v, Tensor):
        v = v.double().item() if v.numel() == 1 else v
    return float(v)


def build_layer_stats(sites: list[Site], meas: dict[int, dict]) -> list[LayerStats]:
    """One ``LayerStats`` per site in forward order, numbers as Python floats (None where not measured).

    `meas[i]` holds host values for site i: act_mean, act_norm, numel, in_norm, in_numel, signal_norm,
    signal_numel, unit_count (per-unit list), positions, grad_norm, unit_spread, act_absmax. Weight
    information (std, recognised init, symmetry of rows and of the next layer's columns, bias mean) is
    read from the modules now. Unit statistics inferred at a weight layer's input are moved onto the
    row of the layer that produced those units (the previous weight layer).
    """
    rows, by_name = [], {}
    weight_sites = [s for s in sites if s.kind == "weight"]
    for s in sites:
        m = meas.get(s.index, {})
        r = dict.fromkeys(LAYER_FIELDS)
        r.update(name=s.name, type=s.type, kind=s.kind, units=s.units, fan_in=s.fan_in, fan_out=s.fan_out,
                 family=s.family if s.kind == "activation" else None,
                 is_model_input=s.is_model_input, source=s.extra.get("source"))
        if m.get("act_norm") is not None:
            r["act_rms"] = _f(m["act_norm"]) / math.sqrt(max(1, m["numel"]))
        if m.get("act_mean") is not None and m.get("act_norm") is not None:
            mean, sq = _f(m["act_mean"]), _f(m["act_norm"]) ** 2 / max(1, m["numel"])
            var = sq - mean * mean
            r["act_mean"] = mean
            r["act_std"] = math.sqrt(max(var, 0.0)) if math.isfinite(var) else var
        for k in ("batch_spread", "in_batch_spread"):
            if m.get(k) is not None:
                r[k] = _f(m[k])
        if m.get("deriv_norm") is not None:
            r["deriv_rms"] = _f(m["deriv_norm"]) / math.sqrt(max(1, m["numel"]))
        if m.get("in_norm") is not None:
            r["in_rms"] = _f(m["in_norm"]) / math.sqrt(max(1, m["in_numel"]))
        if m.get("signal_norm") is not None:
            r["signal_norm"] = _f(m["signal_norm"]) / math.sqrt(max(1, m["signal_numel"]))
        if m.get("path_norm") is not None and s.path is not None:
            r["path_signal"] = _f(m["path_norm"]) / math.sqrt(max(1, m.get("path_numel", 1)))
            r["path_side"] = s.path
        elif s.path == "out" and r["signal_norm"] is not None:  # one hook serves both
            r["path_signal"], r["path_side"] = r["signal_norm"], "out"
        for k in ("attention_peak", "time_ratio", "gate_saturation"):
            if m.get(k) is not None:
                r[k] = m[k] if k == "gate_saturation" else _f(m[k])
        if s.kind == "recurrent":
            r["stacked"] = int(getattr(s.module, "num_layers", 1))
        if s.kind in ("embedding", "recurrent", "attention"):
            ps = matrix_params(s.module, s.kind)
            if ps:
                summaries = [weight_summary(p) for p in ps]  # (std, norm) each, read once
                r["weight_norm"] = math.sqrt(sum(norm ** 2 for _, norm in summaries))
                r["weight_std"] = summaries[0][0]
            if m.get("grad_norm") is not None:
                r["grad_norm"] = _f(m["grad_norm"])
                r["grad_rel"] = r["grad_norm"] / r["weight_norm"] if r.get("weight_norm") else None
        if m.get("unit_spread") is not None:
            amax = _f(m["act_absmax"])
            r["unit_spread"] = 0.0 if amax == 0 else _f(m["unit_spread"]) / amax
        w = weight_of(s)
        if w is not None and s.kind == "weight":
            r["weight_std"], r["weight_norm"] = weight_summary(read_weight(s.module))
            r["init_scheme"], r["init_std"] = recognise_init(w, r["weight_std"])
            b = getattr(s.module, "bias", None)
            b = b if isinstance(b, Tensor) else None
            r["bias_mean"] = float(b.detach().double().mean()) if b is not None else None
            r["sym_rows"] = row_symmetry(w, b) if w.shape[0] > 1 else None
            later = [t for t in weight_sites if t.index > s.index]
            if later:
                nxt = later[0]
                nw = weight_of(nxt)
                r["next_layer"] = nxt.name
                if nw is not None and nw.dim() >= 2 and nw.shape[1] == w.shape[0] and not isinstance(nxt.module, nn.Bilinear) \
                        and r["sym_rows"] is not None and r["sym_rows"] <= SYMMETRIC:
                    r["sym_next"] = column_symmetry(nw)  # only read when the rows are identical (one pass saved)
            if m.get("grad_norm") is not None:
                r["grad_norm"] = _f(m["grad_norm"])
                r["grad_rel"] = r["grad_norm"] / r["weight_norm"] if r["weight_norm"] > 0 else math.inf
        rows.append(r)
        by_name[s.name] = r
    for s in sites:  # unit statistics: on the activation row, or on the producer of inferred units
        m = meas.get(s.index, {})
        fam = s.family
        if m.get("unit_count") is None or fam not in UNIT_FAMILIES:
            continue
        target = by_name[s.name] if s.kind == "activation" else by_name.get(s.producer)
        if target is None:
            continue
        if s.kind != "activation":
            target["family"] = f"{fam} (functional)"
            target["inferred_family"] = fam
        counts = [float(c) for c in m["unit_count"]]
        P = max(1, int(m["positions"]))
        n = len(counts)
        total = sum(counts) / (P * n) if n else 0.0
        target["positions"] = P
        target["units"] = n
        if fam == "relu":
            dead = [i for i, c in enumerate(counts) if c == 0]
            target["frac_zero"] = None if m.get("indicator") else 1.0 - total
            target["frac_dead"] = len(dead) / n if n else 0.0
            target["dead"] = len(dead)
        else:
            sat = [i for i, c in enumerate(counts) if c / P > 0.5]
            target["frac_saturated"] = total
            target["frac_saturated_units"] = len(sat) / n if n else 0.0
            target["saturated"] = len(sat)
    return [LayerStats(**r) for r in rows]
