"""The network's depth axis: which measured tensors lie on its *main path*, found from the autograd graph.

Gradient flow "along depth" is the change of the back-propagated signal ∂L/∂h between successive
tensors h that *every* path from the input to the output passes through: the layers of a plain chain,
the residual stream between the blocks of a ResNet or transformer, the state between an embedding and
a recurrent layer. For such a tensor h the gradient of every parameter upstream factors through
∂L/∂h (chain rule), so ‖∂L/∂h‖ at successive cuts is the depth signal the seed's analysis is about
(‖∂L/∂h_l‖ ∝ a^(L−l) in the chain W = a·I).

Tensors *off* the main path are not depth: the query and key projections of an attention block feed
only the softmax's scores, whose gradient is near zero while attention is near-uniform (at init:
∂softmax/∂scores ≈ 0 for equal scores), so their ∂L/∂output is ~10⁻⁶ of the stream's without any
decay with depth; a residual branch's interior is scaled by the branch's own weights (std 0.02 in
BERT/GPT-2), not by depth.

In graph terms a main-path tensor is a *dominator*: in the backward graph rooted at the output's
``grad_fn``, node d dominates node n when every path from the root to n passes through d. The cuts
are the candidates (module inputs and outputs) whose node dominates every *source* (the measured
modules fed directly by data: no ``grad_fn`` on their input). Computed once, on the first forward
pass, with the Cooper–Harvey–Kennedy iteration (one pass suffices on a DAG in reverse postorder).
"""
from __future__ import annotations


def _graph(root) -> tuple[list, dict]:
    """(nodes in reverse postorder from `root`, predecessors of each node by id) of the backward graph."""
    order, seen, preds = [], {id(root)}, {id(root): []}
    stack = [(root, iter(root.next_functions))]
    while stack:  # iterative DFS: graphs of deep nets exceed Python's recursion limit
        node, it = stack[-1]
        for nxt, _ in it:
            if nxt is None:
                continue
            preds.setdefault(id(nxt), []).append(id(node))
            if id(nxt) not in seen:
                seen.add(id(nxt))
                stack.append((nxt, iter(getattr(nxt, "next_functions", ()))))
                break
        else:
            order.append(node)
            stack.pop()
    order.reverse()
    return order, preds


def dominators_of_sources(root, sources: list) -> set[int]:
    """Ids of the backward-graph nodes that dominate every node in `sources` (the root included), or
    an empty set when no source is reachable from `root`."""
    if root is None:
        return set()
    order, preds = _graph(root)
    rank = {id(n): i for i, n in enumerate(order)}
    idom = {id(root): id(root)}

    def intersect(a: int, b: int) -> int:
        while a != b:
            while rank[a] > rank[b]:
                a = idom[a]
            while rank[b] > rank[a]:
                b = idom[b]
        return a

    for n in order[1:]:  # reverse postorder: every predecessor of n is processed before n on a DAG
        ps = [p for p in preds[id(n)] if p in idom]
        if not ps:
            continue
        d = ps[0]
        for p in ps[1:]:
            d = intersect(d, p)
        idom[id(n)] = d
    reach = [id(s) for s in sources if s is not None and id(s) in idom]
    if not reach:
        return set()
    d = reach[0]
    for s in reach[1:]:
        d = intersect(d, s)
    chain = {d}
    while d != id(root):
        d = idom[d]
        chain.add(d)
    return chain
