"""Dense numpy truth of the Kronecker-factored curvatures (K-FAC, EK-FAC), one example and one
output-Hessian factor row at a time, for tests/test_kfac.py and tests/test_engine_contracts.py.

Conventions (sklearn_influence/_engine/_kronecker.py): W̃ = [W, b] (out, in+1), row-major;
A = (1/N) Σ_i w_i Σ_t ā āᵀ; S = Σ_i w_i Σ_r Σ_t g gᵀ / (T Σ_i w_i); G_{i,r} = √w_i Σ_t g āᵀ.
"""

import numpy as np
import torch
import torch.nn.functional as F

from sklearn_influence._engine._layers import layer_inputs_and_output_gradients


def layer_positions(layer):
    """θ positions of W̃ (out, in+1), built from the layer's slices."""
    out = layer.weight_shape[0]
    grid = np.arange(layer.weight.start, layer.weight.stop).reshape(out, -1)
    if layer.bias is not None:
        grid = np.column_stack([grid, np.arange(layer.bias.start, layer.bias.stop)])
    return grid


def _patches(layer, a, g):
    """(positions, in+1) activations and (positions, out) output gradients of one example."""
    out = layer.weight_shape[0]
    if layer.kind == "conv2d":
        conv = layer.conv
        a = F.unfold(
            a.unsqueeze(0),
            tuple(layer.weight_shape[2:]),
            dilation=conv["dilation"],
            padding=conv["padding"],
            stride=conv["stride"],
        )[0].T
        g = g.reshape(out, -1).T
    else:
        a, g = a.reshape(-1, a.shape[-1]), g.reshape(-1, out)
    a, g = a.numpy(), g.numpy()
    if layer.bias is not None:
        a = np.column_stack([a, np.ones(len(a))])
    return a, g


def kronecker_truth(adapter, theta, inputs, weights=None):
    """Per layer: positions, A, S, the per-(example, row) gradients G and the exact GN block."""
    n = len(inputs)
    w = np.ones(n) if weights is None else weights.numpy()
    layers = None
    for i in range(n):
        x = inputs[i : i + 1]
        with torch.no_grad():
            factor = adapter.loss.hessian_factor(adapter.outputs(theta, x))[0]
        for r in range(len(factor)):
            tapes = layer_inputs_and_output_gradients(adapter, theta, x, factor[r : r + 1])
            if layers is None:
                layers = [
                    {"layer": t.layer, "index": layer_positions(t.layer), "A": 0.0, "S": 0.0,
                     "G": []}
                    for t in tapes
                ]  # fmt: skip
            for entry, tape in zip(layers, tapes, strict=True):
                a, g = _patches(tape.layer, tape.inputs[0][0], tape.output_gradients[0][0])
                if r == 0:
                    entry["A"] = entry["A"] + w[i] * a.T @ a
                entry["S"] = entry["S"] + w[i] * g.T @ g
                entry["T"] = len(a)
                entry["G"].append(np.sqrt(w[i]) * g.T @ a)
    for entry in layers:
        entry["A"] = entry["A"] / n
        entry["S"] = entry["S"] / (entry["T"] * w.sum())
        G = np.stack(entry["G"])
        entry["G"] = G
        flat = G.reshape(len(G), -1)
        entry["block"] = flat.T @ flat / n
    return layers


def _bases(entry, D):
    """Eigenbases (folded when S = s·I and D depends only on the column, as documented)."""
    S, A = entry["S"], entry["A"]
    s = np.mean(np.diag(S))
    folded = (
        s > 0
        and np.allclose(S, s * np.eye(len(S)), rtol=0, atol=1e-12 * s)
        and np.all(D == D[:1])
        and np.any(D != 0)
    )
    if folded:
        S, A = np.eye(len(S)), s * A + np.diag(D[0])
    (lS, QS), (lA, QA) = np.linalg.eigh(S), np.linalg.eigh(A)
    return np.clip(lS, 0, None), QS, np.clip(lA, 0, None), QA, folded


def factored_truth(kind, adapter, theta, inputs, weights=None):
    """The dense (p, p) K-FAC or EK-FAC matrix (layers covering θ; no fallback here)."""
    regularizer = adapter.regularizer_diagonal().numpy()
    p = theta.numel()
    matrix = np.zeros((p, p))
    for entry in kronecker_truth(adapter, theta, inputs, weights):
        index = entry["index"]
        D = regularizer[index]
        lS, QS, lA, QA, folded = _bases(entry, D)
        projected = (QS**2).T @ D @ QA**2
        if kind == "kfac":
            values = np.outer(lS, lA) + (0.0 if folded else projected)
        else:
            rotated = np.einsum("oj,noc,ck->njk", QS, entry["G"], QA)
            values = (rotated**2).sum(0) / len(inputs) + projected
        basis = np.kron(QS, QA)
        flat = index.reshape(-1)
        matrix[np.ix_(flat, flat)] = basis @ np.diag(values.reshape(-1)) @ basis.T
    return matrix
