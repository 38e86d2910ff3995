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
        ∂⟨u, h⟩/∂(layer output) for each call, shaped like the layer's output.
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
    cotangents : Tensor of shape (n, k)
        u, the direction on the model outputs h (for example ∇_h L of each row).

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
    try:
        with torch.enable_grad():
            outputs = adapter.outputs(theta.detach(), inputs)
            flat = [probe for probe_list in probes for probe in probe_list]
            gradients = (
                torch.autograd.grad((outputs * cotangents).sum(), flat, allow_unused=True)
                if flat
                else ()
            )
    finally:
        for handle in handles:
            handle.remove()
    gradients = iter(gradients)
    for tape, probe_list in zip(tapes, probes, strict=True):
        if tape.layer.module is None:  # the layer is the whole model: h = W a
            tape.inputs.append(inputs.detach())
            tape.output_gradients.append(cotangents.detach())
            continue
        if not probe_list:
            raise ValueError(
                f"The layer {tape.layer.name!r} was not called through its forward during the "
                "model's forward pass, so its inputs cannot be recorded."
            )
        for probe in probe_list:
            gradient = next(gradients)
            tape.output_gradients.append(torch.zeros_like(probe) if gradient is None else gradient)
    return tapes


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
