"""Slow, loop-based oracles written from the papers' definitions (float64, plain Python)."""

import math

import numpy as np


def windows(shape, k, s, p):
    """Yield (output index, list of input indices) for each window over ``shape``."""
    nd = len(shape)
    outs = [(shape[i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(nd)]
    for o in np.ndindex(*outs):
        members = []
        for off in np.ndindex(*k):
            idx = tuple(o[i] * s[i] - p[i] + off[i] for i in range(nd))
            if all(0 <= idx[i] < shape[i] for i in range(nd)):
                members.append(idx)
        yield o, members


def pool(x, fn, k=None, s=None, p=None):
    """Apply ``fn(values, channel)`` over each window of x [N, C, *spatial] (numpy)."""
    x = np.asarray(x, dtype=np.float64)
    spatial = x.shape[2:]
    if k is None:
        k, s, p = spatial, (1,) * len(spatial), (0,) * len(spatial)
    s = s or k
    p = p or (0,) * len(k)
    wins = list(windows(spatial, k, s, p))
    out_shape = tuple(max(o[i] for o, _ in wins) + 1 for i in range(len(k)))
    y = np.zeros(x.shape[:2] + out_shape)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for o, members in wins:
                y[(n, c) + o] = fn([x[(n, c) + m] for m in members], c)
    return y


def lse(values, r):
    # the definition, with the max subtracted to stay finite in float64
    m = max(values)
    return m + math.log(sum(math.exp(r * (v - m)) for v in values) / len(values)) / r


def softpool(values):
    m = max(values)
    w = [math.exp(v - m) for v in values]
    return sum(wi * v for wi, v in zip(w, values)) / sum(w)


def wildcat(values, kmax, kmin, alpha):
    ordered = sorted(values, reverse=True)
    y = sum(ordered[:kmax]) / kmax
    if kmin:
        y += alpha * sum(ordered[-kmin:]) / kmin
    return y


def stochastic_expectation(values):
    total = sum(values)
    return 0.0 if total == 0 else sum(v * v for v in values) / total


def kmax(values, k):
    """The k largest of ``values`` (a list) in their order, as (values, positions): NaN ranks
    above +inf, -0.0 equals 0.0, and of values tied at the k-th, the earliest positions win."""
    def rank(i):
        v = values[i]
        return (0, 0.0, i) if math.isnan(v) else (1, -v, i)

    keep = sorted(sorted(range(len(values)), key=rank)[:k])
    return [values[i] for i in keep], keep


def stable_order(values):
    """Positions of ``values`` in stable descending order: larger first, equal values in
    their order of position."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def sort_pool(values, weights):
    """Σ_j w_j · (j-th largest value), over the first len(weights) ranks."""
    order = stable_order(values)
    return sum(w * values[i] for w, i in zip(weights, order))


def sort_pool_grads(x, weights, g, k=None, s=None):
    """Gradients of Σ g · sort_pool(x) by loops: ``(dx, dw)`` for x [N, C, H, W] and
    weights [k] (shared) or [C, k]; the gradient of each rank goes to the position that the
    stable order puts there. Global pooling when ``k`` is None (g then [N, C])."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    spatial = x.shape[2:]
    if k is None:
        k, s = spatial, (1, 1)
    s = s or k
    g = np.asarray(g, dtype=np.float64).reshape(x.shape[:2] + (-1,))
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            wc = w if w.ndim == 1 else w[c]
            for flat, (_, members) in enumerate(windows(spatial, k, s, (0, 0))):
                values = [x[(n, c) + m] for m in members]
                gv = g[n, c, flat]
                for j, i in enumerate(stable_order(values)[: len(wc)]):
                    dx[(n, c) + members[i]] += gv * wc[j]
                    if w.ndim == 1:
                        dw[j] += gv * values[i]
                    else:
                        dw[c, j] += gv * values[i]
    return dx, dw
