"""Turn a PyTorch model into a chain of split candidates.

An ``nn.Sequential`` is a chain of its children; a child that is itself made of modules (a residual block, a
nested ``nn.Sequential``) is opened into its own layers. Any other model is traced with ``torch.fx``; a *cut
point* is a place in the topologically ordered graph, and the tensors *live* there are those produced before
it and used after it. By default a cut is offered only where exactly one tensor is live (inside a residual
block the block's input is live too, so the whole block becomes one layer). With ``dag=True`` every place is a
cut and carries every live tensor, as DADS does: the state crossing such a cut is a tuple of tensors (the
block's input and the branch computed so far), and its size on the wire is the sum of their sizes.

The nodes between consecutive cut points become one ``Layer`` (an ``fx.GraphModule`` taking the tensors live
at its start and returning those live at its end: one tensor, or a tuple), so ``chain.run(x, 0, s)`` then
``chain.run(h, s, len(chain))`` equals ``model(x)`` for every cut ``s``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

_KINDS = {
    nn.Conv2d: "conv",
    nn.Conv1d: "conv",
    nn.Linear: "linear",
    nn.ReLU: "act",
    nn.ReLU6: "act",
    nn.GELU: "act",
    nn.SiLU: "act",
    nn.Sigmoid: "act",
    nn.Tanh: "act",
    nn.MaxPool2d: "pool",
    nn.AvgPool2d: "pool",
    nn.AdaptiveAvgPool2d: "pool",
    nn.AdaptiveMaxPool2d: "pool",
    nn.BatchNorm2d: "norm",
    nn.BatchNorm1d: "norm",
    nn.LayerNorm: "norm",
    nn.Flatten: "reshape",
    nn.Dropout: "reshape",
    nn.Identity: "reshape",
}
_FN_KINDS = {
    torch.relu: "act",
    torch.nn.functional.relu: "act",
    torch.flatten: "reshape",
    operator.add: "add",
    torch.add: "add",
    torch.cat: "cat",
}


class ChainError(ValueError):
    pass


State = torch.Tensor | tuple[torch.Tensor, ...]  # what crosses a cut: one tensor, or every live tensor


@dataclass
class Layer:
    name: str
    module: nn.Module
    kind: str  # conv | linear | act | pool | norm | reshape | add | cat | other
    macs: int  # multiply-accumulates (conv/linear), element count for the other kinds; per sample
    out_shape: tuple[int, ...]  # per sample (batch dimension dropped); of the last tensor if several cross
    # every tensor crossing the cut after this layer, in the order the next layer takes them, when there are
    # several (a DAG cut inside a residual block); empty when only ``out_shape`` crosses
    out_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def crossing(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of every tensor leaving this layer (one, or several at a DAG cut)."""
        return self.out_shapes or (self.out_shape,)

    @property
    def out_bytes(self) -> int:
        """Bytes of the fp32 tensors leaving this layer, per sample."""
        total = 0
        for shape in self.crossing:
            n = 1
            for d in shape:
                n *= d
            total += 4 * n
        return total

    def run(self, x: State) -> State:
        return self.module(*x) if isinstance(x, tuple) else self.module(x)


@dataclass
class Chain:
    layers: list[Layer]
    in_shape: tuple[int, ...]  # per sample
    names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def in_bytes(self) -> int:
        n = 1
        for d in self.in_shape:
            n *= d
        return 4 * n

    def cut_bytes(self, s: int) -> int:
        """fp32 bytes crossing cut ``s`` (0 = the input, len = the output)."""
        return self.in_bytes if s == 0 else self.layers[s - 1].out_bytes

    def cut_shapes(self, s: int) -> tuple[tuple[int, ...], ...]:
        """Shapes of the tensors crossing cut ``s`` (one, except at DAG cuts inside residual blocks)."""
        return (self.in_shape,) if s == 0 else self.layers[s - 1].crossing

    @torch.no_grad()
    def run(self, x: State, start: int = 0, end: int | None = None) -> State:
        """Layers ``[start, end)`` on ``x``, the state crossing cut ``start`` (a tuple at a DAG cut)."""
        end = len(self.layers) if end is None else end
        if not 0 <= start <= end <= len(self.layers):
            raise ChainError(f"bad segment [{start}, {end}) of a {len(self.layers)}-layer chain")
        for layer in self.layers[start:end]:
            x = layer.run(x)
        return x


def _module_kind(m: nn.Module) -> str:
    for cls, kind in _KINDS.items():
        if isinstance(m, cls):
            return kind
    return "other"


def _macs(kind: str, m: nn.Module | None, out: torch.Tensor) -> int:
    per_sample = out[0].numel() if out.dim() > 0 else 1
    if kind == "conv" and isinstance(m, nn.Conv1d | nn.Conv2d):
        k = 1
        for d in m.kernel_size:
            k *= d
        return per_sample * (m.in_channels // m.groups) * k
    if kind == "linear" and isinstance(m, nn.Linear):
        return per_sample * m.in_features
    return per_sample


def _composite(m: nn.Module) -> bool:
    """A module made of other modules (a block), as opposed to one operator (a conv, an activation)."""
    return _module_kind(m) == "other" and next(m.children(), None) is not None


def from_sequential(
    model: nn.Sequential, example: torch.Tensor, prefix: str = "", dag: bool = False
) -> Chain:
    layers = []
    x = example
    with torch.no_grad():
        for name, child in model.named_children():
            if _composite(child):
                sub = to_chain(child, x, prefix=f"{prefix}{name}.", dag=dag)
                layers += sub.layers
                x = sub.run(x)
                continue
            x = child(x)
            if not isinstance(x, torch.Tensor):
                raise ChainError(f"layer {prefix}{name} returns {type(x).__name__}, not one tensor")
            kind = _module_kind(child)
            layers.append(Layer(prefix + name, child, kind, _macs(kind, child, x), tuple(x.shape[1:])))
    return Chain(layers, tuple(example.shape[1:]))


def _is_tensor(n: fx.Node) -> bool:
    return hasattr(n.meta.get("tensor_meta"), "shape")


def from_fx(model: nn.Module, example: torch.Tensor, prefix: str = "", dag: bool = False) -> Chain:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        raise ChainError(f"torch.fx cannot trace {type(model).__name__}: {exc}") from exc
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ChainError(f"the model must take exactly one tensor input, it takes {len(inputs)}")
    try:
        ShapeProp(gm).propagate(example)
    except Exception as exc:
        raise ChainError(f"running {type(model).__name__} on the example input failed: {exc}") from exc
    output = next(n for n in nodes if n.op == "output")
    if not isinstance(output.args[0], fx.Node):
        raise ChainError("the model must return exactly one tensor")
    compute = [n for n in nodes if n.op in ("call_module", "call_function", "call_method")]
    order = {n: i for i, n in enumerate(compute)}
    order[inputs[0]] = -1

    def last_use(n: fx.Node) -> int:
        return max((order.get(u, len(compute)) for u in n.users), default=-1)

    # a cut after compute[i] carries the values produced up to i that are still needed later: offered when
    # they are all tensors, and (unless dag) when there is exactly one
    cuts: list[tuple[int, tuple[fx.Node, ...]]] = [(-1, (inputs[0],))]
    for i in range(len(compute) - 1):
        live = tuple(n for n in (inputs[0], *compute[: i + 1]) if last_use(n) > i)
        if live and all(_is_tensor(n) for n in live) and (len(live) == 1 or dag):
            cuts.append((i, live))
    cuts.append((len(compute) - 1, (output.args[0],)))

    modules = dict(gm.named_modules())
    layers = []
    for (a, src), (b, dst) in zip(cuts, cuts[1:], strict=False):
        g = fx.Graph()
        env = {n: g.placeholder(f"x{j}") for j, n in enumerate(src)}
        lookup = env.__getitem__
        for n in nodes:
            if n.op == "get_attr" and any(order.get(u, -2) in range(a + 1, b + 1) for u in n.users):
                env[n] = g.node_copy(n, lookup)
        for n in compute[a + 1 : b + 1]:
            env[n] = g.node_copy(n, lookup)
        g.output(env[dst[0]] if len(dst) == 1 else tuple(env[n] for n in dst))
        seg = fx.GraphModule(gm, g)
        body = compute[a + 1 : b + 1]
        kinds, total = [], 0
        for n in body:
            m = modules.get(n.target) if n.op == "call_module" else None
            kind = _node_kind(n, m)
            kinds.append(kind)
            tm = n.meta.get("tensor_meta")
            shape = tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else (1,)
            total += _macs(kind, m, torch.empty(shape, device="meta"))
        name = prefix + body[-1].name  # fx node names are unique
        shapes = tuple(tuple(n.meta["tensor_meta"].shape[1:]) for n in dst)
        extra = shapes if len(shapes) > 1 else ()
        layers.append(Layer(name, seg, _dominant(kinds), total, shapes[-1], extra))
    return Chain(layers, tuple(example.shape[1:]))


def _node_kind(n: fx.Node, m: nn.Module | None) -> str:
    if m is not None:
        return _module_kind(m)
    if n.op == "call_method":
        return "reshape" if n.target in ("view", "reshape", "flatten", "permute") else "other"
    return _FN_KINDS.get(n.target, "other")


def _dominant(kinds: list[str]) -> str:
    """The kind that costs most in a multi-node layer."""
    for k in ("conv", "linear", "pool", "norm", "add", "cat", "act", "reshape"):
        if k in kinds:
            return k
    return "other"


def to_chain(model: nn.Module, example: torch.Tensor, prefix: str = "", dag: bool = False) -> Chain:
    """A chain of split candidates for ``model`` (``example``: one batch of real input, batch size >= 1).

    ``dag``: also cut inside residual blocks, carrying every live tensor across (see the module docstring)."""
    model.eval()
    if isinstance(model, nn.Sequential):
        return from_sequential(model, example, prefix, dag)
    return from_fx(model, example, prefix, dag)
