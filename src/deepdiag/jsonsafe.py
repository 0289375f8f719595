"""One policy for turning measured values into JSON, used by every writer (findings, the store, study results,
probes, figure specs).

JSON has no NaN or Infinity, and a reader in another language must not choke on them, so:

- a non-finite float (NaN, +Inf, -Inf) becomes ``null``: "no finite value was measured";
- numpy and torch scalars become Python numbers (``.item()``), arrays and tensors become nested lists;
- tuples become lists and mapping keys become strings;
- anything else that json cannot encode becomes its ``str()``.

>>> dumps({"loss": float("nan"), "acc": np.float32(0.5)})
'{"acc": 0.5, "loss": null}'
"""
from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types under the policy above (a new object; `value` is not changed)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return json_safe(value.tolist())
    return str(value)


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of ``json_safe(value)``, keys sorted, NaN refused (none can remain)."""
    return json.dumps(json_safe(value), sort_keys=True, allow_nan=False, **kwargs)
