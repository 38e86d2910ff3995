"""Layer inputs and output gradients for the layers of ``adapter.layer_structure()``.

For a layer out = W a (+ b) and an output cotangent u (n, k) on the model outputs h, the
gradient of ⟨u, h⟩ with respect to W is Σ_b g_b a_bᵀ, with a_b the layer's input and
g_b = ∂⟨u, h⟩/∂out_b the gradient at its output (summed over positions for convolutions,
after unfolding the input with :func:`unfold_conv_inputs`). These per-example factors are
what Kronecker-factored curvatures (K-FAC, EK-FAC) are built from.

They are recorded with forward hooks on the adapter's modules during one forward pass of
``adapter.outputs``: each hook stores the layer's input and adds a zero "probe" tensor to its
output, whose gradient is the output gradient.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class LayerTape:
    """What one forward/backward pass recorded for one layer.

    Attributes
    ----------
    layer : Layer
    inputs : list of Tensor
        The layer's input for each call of the layer in the forward pass (usually one),
        shape (n, ..., in) for a linear layer, (n, C, H, W) for a convolution.
    output_gradients : list of Tensor
        ∂⟨u, h⟩/∂(layer output) for each call, shaped like the layer's output; with r
        cotangents per row, their n·r rows are example-major (row i·r + j).
    """

    layer: object
    inputs: list = field(default_factory=list)
    output_gradients: list = field(default_factory=list)


def layer_inputs_and_output_gradients(adapter, theta, inputs, cotangents):
    """Inputs and output gradients of every layer of ``adapter.layer_structure()``.

    Parameters
    ----------
    adapter : ModelAdapter
    theta : Tensor of shape (p,)
    inputs : Tensor
        A batch of inputs as the adapter encodes them.
    cotangents : Tensor of shape (n, k) or (n, r, k)
        u, the direction on the model outputs h (for example ∇_h L of each row); with
        shape (n, r, k), r directions per row (one forward pass, r backward passes).

    Returns
    -------
    tapes : list of LayerTape
        One per layer, in the order of ``layer_structure().layers``.

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._layers import layer_inputs_and_output_gradients
    >>> X, y = torch.randn(10, 3).numpy(), torch.randn(10).numpy()
    >>> adapter = make_adapter(Ridge().fit(X, y), 10, torch.device("cpu"))
    >>> theta, inputs = adapter.parameters(), adapter.inputs(X)
    >>> u = torch.ones(10, 1, dtype=theta.dtype)
    >>> (tape,) = layer_inputs_and_output_gradients(adapter, theta, inputs, u)
    >>> gradient = torch.func.grad(lambda t: (adapter.outputs(t, inputs) * u).sum())(theta)
    >>> bool(torch.allclose(tape.output_gradients[0].T @ tape.inputs[0], gradient.reshape(1, 4)))
    True
    """
    structure = adapter.layer_structure()
    tapes = [LayerTape(layer) for layer in structure.layers]
    probes = [[] for _ in tapes]
    handles = []

    def recorder(tape, probe_list):
        def hook(module, args, output):
            tape.inputs.append(args[0].detach())
            probe = torch.zeros_like(output, requires_grad=True)
            probe_list.append(probe)
            return output + probe

        return hook

    for tape, probe_list in zip(tapes, probes, strict=True):
        if tape.layer.module is not None:
            handles.append(tape.layer.module.register_forward_hook(recorder(tape, probe_list)))
    several = cotangents.dim() == 3
    columns = [cotangents[:, j] for j in range(cotangents.shape[1])] if several else [cotangents]
    try:
        with torch.enable_grad():
            outputs = adapter.outputs(theta.detach(), inputs)
            flat = [probe for probe_list in probes for probe in probe_list]
            # one forward pass, one backward pass per cotangent column (the graph is kept
            # between them): r columns cost one forward instead of r on a repeated batch
            passes = [
                torch.autograd.grad(
                    (outputs * column).sum(),
                    flat,
                    allow_unused=True,
                    retain_graph=j < len(columns) - 1,
                )
                if flat
                else ()
                for j, column in enumerate(columns)
            ]
    finally:
        for handle in handles:
            handle.remove()
    for tape, probe_list in zip(tapes, probes, strict=True):
        if tape.layer.module is None:  # the layer is the whole model: h = W a
            tape.inputs.append(inputs.detach())
            tape.output_gradients.append(_example_major(columns, several))
            continue
        if not probe_list:
            raise ValueError(
                f"The layer {tape.layer.name!r} was not called through its forward during the "
                "model's forward pass, so its inputs cannot be recorded."
            )
    position = 0
    for tape, probe_list in zip(tapes, probes, strict=True):
        for probe in probe_list:
            per_pass = [
                torch.zeros_like(probe) if gradients[position] is None else gradients[position]
                for gradients in passes
            ]
            tape.output_gradients.append(_example_major(per_pass, several))
            position += 1
    return tapes


def _example_major(per_pass, several):
    """One pass's tensor as is; with several cotangent columns, rows i·r + j (example-major)."""
    if not several:
        return per_pass[0].detach()
    return torch.stack(per_pass, 1).flatten(0, 1).detach()


def unfold_conv_inputs(layer, inputs):
    """Patches of a ``"conv2d"`` layer's input, shape (n, C·kh·kw, L), L output positions.

    With them the convolution is a linear map per position: out[:, :, l] = W_mat patch[:, :, l]
    (W_mat = weight.reshape(out, -1), ``groups=1``), so the weight gradient is
    Σ_b g_b patch_bᵀ with g_b the output gradient reshaped to (out, L).
    """
    if layer.kind != "conv2d":
        raise ValueError(f"unfold_conv_inputs needs a conv2d layer, got {layer.kind!r}.")
    kernel = tuple(layer.weight_shape[2:])
    conv = layer.conv
    padding = conv["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        else:  # "same" (stride 1): symmetric only when every dilation·(k − 1) is even
            totals = [d * (k - 1) for d, k in zip(_pair(conv["dilation"]), kernel, strict=True)]
            if any(total % 2 for total in totals):
                raise ValueError(
                    f"The layer {layer.name!r} uses padding='same' with an even kernel, which "
                    "pads asymmetrically; unfold cannot reproduce it."
                )
            padding = tuple(total // 2 for total in totals)
    module = layer.module
    if module is not None and getattr(module, "padding_mode", "zeros") != "zeros":
        raise ValueError(
            f"The layer {layer.name!r} uses padding_mode={module.padding_mode!r}; only 'zeros' "
            "can be unfolded."
        )
    return F.unfold(
        inputs, kernel, dilation=conv["dilation"], padding=padding, stride=conv["stride"]
    )


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


# -- per-example gradients kept factored ------------------------------------------------------
#
# For a network whose every trainable parameter lies in an nn.Linear or nn.Conv2d layer, the
# per-example gradient of layer l is G_i = Σ_t g_{i,t} ā_{i,t}ᵀ (output gradient ⊗ input,
# one forward and one backward pass over a whole batch). Scores ⟨P_q, ∇L_i⟩ and gradient norms
# then come from these factors without ever forming the (n, p) per-example gradients: for
# T = 1 position, ⟨P_q, g_i ā_iᵀ⟩ = g_iᵀ (P_q ā_i), one matrix product per layer.


def _layer_usable(layer):
    """Whether the factored per-example gradient of ``layer`` is exact (see the section)."""
    if layer.module is None:
        return False
    if layer.kind != "conv2d":
        return True
    conv, module = layer.conv, layer.module
    padding = conv["padding"]
    return (
        conv.get("groups", 1) == 1
        and getattr(module, "padding_mode", "zeros") == "zeros"
        and (not isinstance(padding, str) or padding == "valid")
    )


def factored_gradient_layers(adapter, theta):
    """The layers of ``adapter`` when its per-example gradients can be kept factored, else None.

    That is when every trainable parameter lies in a usable ``nn.Linear``/``nn.Conv2d``
    layer (no uncovered parameter, convolutions with ``groups=1`` and zero padding that
    :func:`unfold_conv_inputs` reproduces) and the factored gradients of two rows equal the
    autodiff ones — a check that also catches what the layer structure cannot see (a weight
    shared with another module, a layer whose output is used in another way). Models linear
    in θ (``linear_layout``) have their own closed form and are left to it.

    Returns the tuple of layers or None; see :func:`factored_scores`.
    """
    from .._adapters._base import ModelAdapter

    if getattr(adapter, "linear_layout", False):
        return None
    if type(adapter).layer_structure is ModelAdapter.layer_structure:
        return None  # the adapter does not describe its layers
    structure = adapter.layer_structure()
    layers = structure.layers
    if structure.uncovered or not layers or not all(_layer_usable(layer) for layer in layers):
        return None
    covered = sum(
        (layer.weight.stop - layer.weight.start)
        + (0 if layer.bias is None else layer.bias.stop - layer.bias.start)
        for layer in layers
    )
    if covered != theta.numel():
        return None
    return layers


def check_factored_gradients(adapter, theta, layers, inputs, targets):
    """Whether the factored per-example gradients of ``inputs`` equal the autodiff ones."""
    from ._gradients import per_example_gradients

    expected = per_example_gradients(adapter, theta, inputs, targets)
    factors = layer_gradient_factors(adapter, theta, inputs, targets, layers)
    rebuilt = torch.zeros_like(expected)
    for layer, (a, g) in zip(layers, factors, strict=True):
        weight = g.transpose(1, 2) @ a  # (n, out, in)
        rebuilt[:, layer.weight] = weight.reshape(len(a), -1)
        if layer.bias is not None:
            rebuilt[:, layer.bias] = g.sum(1)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    tolerance = 1e3 * torch.finfo(theta.dtype).eps * max(scale, 1e-30)
    return bool((rebuilt - expected).abs().max() <= tolerance) if expected.numel() else True


def layer_gradient_factors(adapter, theta, inputs, targets, layers):
    """Per layer, (a, g): inputs (n, T, in) and loss output gradients (n, T, out) per example.

    One forward pass with hooks and one backward pass of Σ_i L_i over the batch: in eval
    mode each row's outputs depend on that row only, so the layer output gradient of the
    sum at row i is that of L_i. Convolution inputs are unfolded into patches (T positions).
    """
    from ._gradients import output_gradients

    with torch.no_grad():
        cotangents = output_gradients(adapter, theta.detach(), inputs, targets)
    tapes = layer_inputs_and_output_gradients(adapter, theta, inputs, cotangents)
    return [tape_positions(layer, tape) for layer, tape in zip(layers, tapes, strict=True)]


def tape_positions(layer, tape):
    """A layer's recorded inputs and output gradients as (n, T, in) and (n', T, out).

    T counts the positions that share the layer's weight: a convolution's patches (inputs
    unfolded), a linear layer's leading dimensions beyond the batch (e.g. tokens), 1 for a
    plain batch of vectors; the calls of a layer used several times are concatenated along T.
    """
    activations, gradients = [], []
    for a, g in zip(tape.inputs, tape.output_gradients, strict=True):
        if layer.kind == "conv2d":
            a = unfold_conv_inputs(layer, a).transpose(1, 2)
            g = g.flatten(2).transpose(1, 2)
        else:
            a = a.reshape(a.shape[0], -1, a.shape[-1])
            g = g.reshape(g.shape[0], -1, g.shape[-1])
        activations.append(a)
        gradients.append(g)
    return torch.cat(activations, 1), torch.cat(gradients, 1)


def prepare_factored_queries(layers, preconditioned):
    """Each layer's slice of the rows P_q, once per call: (weight (m·out, in), bias (m, out))."""
    m = len(preconditioned)
    prepared = []
    for layer in layers:
        out = layer.weight_shape[0]
        weight = preconditioned[:, layer.weight].reshape(m * out, -1).contiguous()
        bias = None if layer.bias is None else preconditioned[:, layer.bias].contiguous()
        prepared.append((weight, bias))
    return prepared


def factored_scores(prepared, factors):
    """⟨P_q, ∇L_i⟩ for every query row q and example i, shape (m, n), from the factors.

    ``prepared`` comes from :func:`prepare_factored_queries`, ``factors`` from
    :func:`layer_gradient_factors` (same layers, same order). Memory: one (n, m, out)
    product per layer.
    """
    total = None
    for (weight, bias), (a, g) in zip(prepared, factors, strict=True):
        a, g = a.to(weight.dtype), g.to(weight.dtype)
        n, positions, out = g.shape
        m = weight.shape[0] // out
        if positions == 1:
            # g_iᵀ (P_q a_i + b_q): (n, in) @ (in, m·out), then a batched dot with g_i
            projected = (a[:, 0] @ weight.T).reshape(n, m, out)
            if bias is not None:
                projected += bias
            scores = (projected @ g[:, 0].unsqueeze(2)).squeeze(2).T  # (m, n)
        else:
            gradients = (g.transpose(1, 2) @ a).reshape(n, -1)  # (n, out·in)
            scores = weight.reshape(m, -1) @ gradients.T
            if bias is not None:
                scores += bias @ g.sum(1).T
        total = scores if total is None else total + scores
    return total


def factored_gradient_sum_and_norms(layers, factors):
    """(Σ_i ∇L_i as a (p,) tensor, ‖∇L_i‖ per example) from the factors, without forming them."""
    p = sum(
        (layer.weight.stop - layer.weight.start)
        + (0 if layer.bias is None else layer.bias.stop - layer.bias.start)
        for layer in layers
    )
    a0 = factors[0][0]
    total = a0.new_zeros(p)
    squares = a0.new_zeros(len(a0))
    for layer, (a, g) in zip(layers, factors, strict=True):
        positions = g.shape[1]
        weight = g.reshape(-1, g.shape[-1]).T @ a.reshape(-1, a.shape[-1])
        total[layer.weight] = weight.reshape(-1)
        if positions == 1:
            squares += (g[:, 0] ** 2).sum(1) * (a[:, 0] ** 2).sum(1)
        else:
            squares += ((g.transpose(1, 2) @ a) ** 2).sum((1, 2))
        if layer.bias is not None:
            bias = g.sum(1)
            total[layer.bias] = bias.sum(0)
            squares += (bias**2).sum(1)
    return total, squares.sqrt()
