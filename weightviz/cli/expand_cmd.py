"""`weightviz expand`: expanded weights from one layer to a later one (heatmaps and/or raw tensor)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import MODEL_HELP, app, check_output, count_option, err_console, load, with_device


@app.command("expand")
@with_device
def expand_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    src: str = typer.Argument(..., help="Source layer (its output channels are the inputs)."),
    dst: str = typer.Argument(..., help="Target layer, later in the forward pass."),
    unit: str = typer.Option(None, "--unit", "-u", help="dst unit(s): '5', '0:32', '3,7,9'. The figure shows the "
                             "first one. Default: unit 0 (figure) / all units (--save)."),
    top: int = count_option(16, "--top", "-k", help="Number of strongest input channels drawn."),
    output: Path = typer.Option(None, "--output", "-o", help="Figure: .png or .svg."),
    save: Path = typer.Option(None, "--save", help="Write the expanded weights [U, C_src, K, K] (and the "
                              "unit indices) to a .safetensors file."),
    input_size: int = count_option(None, "--input-size", help="Force the input side (default: the smallest "
                                   "that holds the receptive field)."),
    gate: float = typer.Option(0.5, "--gate", help="Constant that sigmoid gates (squeeze-excite) are frozen to."),
    token: int = typer.Option(None, "--token", "-t", min=0, help="Token layers (ViT, Swin): target token of DST by index "
                              "(0: the class token; default: the centre patch)."),
) -> None:
    """Expanded weights from SRC to DST: the linear map through everything in between, with ReLU-like
    activations taken as identity, max-pool as avg-pool, sigmoid gates as a constant.

    Prints the strongest input channels of the (first) unit; -o draws their K x K heatmaps on one shared
    scale with the article's colormap (red excitatory, blue inhibitory).

    Between token layers (ViT, Swin; norms and attention frozen at their image-set means) the weights are
    maps over SRC's tokens, drawn on its patch grid.

    Example: weightviz expand efficientnet_lite0 blocks.2.0 blocks.3.0 --unit 4 --top 12 -o expand.png
    """
    from ..errors import WeightvizError
    from ..expand import expanded_weights, receptive_field
    from ..figures import heatmap_grid
    from ..linearize import norms as _norms
    from ..models import fixed_input_size, get_module, layers, model_name, parse_units
    from ..models import tokens as _tokens

    if output is not None:
        check_output(output)
    if save is not None:
        check_output(save, (".safetensors",))
    m = load(model)
    get_module(m, src)
    get_module(m, dst)
    # token layers occur in models with norm / attention modules (others skip the shape probe)
    table = layers(m, input_size or fixed_input_size(m)) if _norms.needs_stats(m) else None
    shapes = {n: table[n].out_shape if table and n in table else None for n in (src, dst)}
    ones = {n: bool(table and n in table and table[n].conv1d) for n in (src, dst)}   # [C, L] maps: never tokens
    tokens = any(sh is not None and _tokens.layout(sh, ones[n]).is_token for n, sh in shapes.items())
    if tokens:
        rf, n_dst = None, _tokens.layout(shapes[dst]).channels
    else:
        with err_console.status(f"measuring the receptive field of {dst} over {src}", spinner="dots"):
            rf = receptive_field(m, dst, src, input_size=input_size)
        n_dst = rf.dst_shape[0]
    if unit is None:
        units = list(range(n_dst)) if save is not None else [0]
    else:
        units = parse_units(unit, n_dst, what=f"layer {dst!r}")
        if not units:
            raise WeightvizError(f"--unit {unit!r} selects no unit of {dst!r} ({n_dst} channels)")
    with err_console.status(f"expanding {len(units)} unit(s) of {dst}", spinner="dots"):
        E = expanded_weights(m, src, dst, units=units, input_size=input_size, gate=gate, token=token)
    u = units[0]
    w = E[0]                                              # [C_src, K, K], token layers: [C_src, N]
    if E.dim() == 3:   # a map over src's tokens: its patch tokens on the patch grid, prefix tokens left out
        lay = _tokens.layout(shapes[src])
        if lay.grid is None:
            raise WeightvizError(f"{src!r} has no patch grid ({shapes[src]}); use --save for the raw [U, C, N] map")
        w = w[:, lay.prefix:].reshape(w.shape[0], *lay.grid)
    norms = w.flatten(1).norm(dim=1)
    sums = w.flatten(1).sum(1)
    k = min(top, w.shape[0])
    order = norms.argsort(descending=True)[:k].tolist()
    kh, kw = w.shape[-2:]
    if rf is None:
        typer.echo(f"{src} -> {dst} unit {u}: expanded weights [{w.shape[0]} channels, {kh}x{kw} patch grid] "
                   f"(token layers; attention and norms frozen at their image-set means)")
    else:
        typer.echo(f"{src} -> {dst} unit {u}: expanded weights [{w.shape[0]} channels, {kh}x{kw}] "
                   f"(input {rf.input_size}px, field {kh}x{kw} of {src}, stride {rf.stride})")
    typer.echo(f"{'rank':>4}  {'channel':>7}  {'L2 norm':>9}  sign")
    for r, c in enumerate(order, 1):
        sign = "+ excitatory" if sums[c] > 0 else "- inhibitory" if sums[c] < 0 else "0"
        typer.echo(f"{r:>4}  {c:>7}  {float(norms[c]):>9.4g}  {sign}")
    if output is not None:
        labels = [f"ch {c} ({'+' if sums[c] > 0 else '-'})" for c in order]
        title = (f"{model_name(m)}: expanded weights {src} \u2192 {dst} unit {u}\n"
                 f"top {k} of {w.shape[0]} input channels by L2 norm, {kh}x{kw} each, shared scale")
        fig = heatmap_grid(w[order], labels=labels, title=title,
                           data={"model": model_name(m), "src": src, "dst": dst, "unit": u, "channels": order,
                                 "norms": [float(norms[c]) for c in order]})
        fig.save(output)
        typer.echo(f"wrote {output}")
    if save is not None:
        import torch

        from ..utils.io import save_tensors

        save_tensors({"expanded_weights": E, "units": torch.tensor(units)}, save)
        layout = "[units, C_src, N_tokens]" if E.dim() == 3 else "[units, C_src, K, K]"
        typer.echo(f"wrote {save} (expanded_weights {list(E.shape)} = {layout}, units)")
