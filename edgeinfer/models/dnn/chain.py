"""Turn a PyTorch model into a chain of split candidates.

An ``nn.Sequential`` is a chain of its children. Any other model is traced with ``torch.fx``; a *cut point* is
a place in the topologically ordered graph where exactly one tensor crosses (inside a residual block two
tensors cross, so no cut is offered there). The nodes between consecutive cut points become one ``Layer``
(an ``fx.GraphModule`` taking and returning one tensor), so ``chain.run(x, 0, s)`` then
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


@dataclass
class Layer:
    name: str
    module: nn.Module
    kind: str  # conv | linear | act | pool | norm | reshape | add | cat | other
    macs: int  # multiply-accumulates (conv/linear), element count for the other kinds; per sample
    out_shape: tuple[int, ...]  # per sample (batch dimension dropped)

    @property
    def out_bytes(self) -> int:
        """Bytes of the fp32 tensor leaving this layer, per sample."""
        n = 1
        for d in self.out_shape:
            n *= d
        return 4 * n


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

    @torch.no_grad()
    def run(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        end = len(self.layers) if end is None else end
        if not 0 <= start <= end <= len(self.layers):
            raise ChainError(f"bad segment [{start}, {end}) of a {len(self.layers)}-layer chain")
        for layer in self.layers[start:end]:
            x = layer.module(x)
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


def from_sequential(model: nn.Sequential, example: torch.Tensor, prefix: str = "") -> Chain:
    layers = []
    x = example
    with torch.no_grad():
        for name, child in model.named_children():
            x = child(x)
            if not isinstance(x, torch.Tensor):
                raise ChainError(f"layer {prefix}{name} returns {type(x).__name__}, not one tensor")
            kind = _module_kind(child)
            layers.append(Layer(prefix + name, child, kind, _macs(kind, child, x), tuple(x.shape[1:])))
    return Chain(layers, tuple(example.shape[1:]))


def from_fx(model: nn.Module, example: torch.Tensor, prefix: str = "") -> Chain:
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

    # cut after compute[i] is valid iff exactly one produced value is still needed later
    cuts = [(-1, inputs[0])]
    for i in range(len(compute) - 1):
        live = [n for n in (inputs[0], *compute[: i + 1]) if last_use(n) > i]
        if len(live) == 1 and "tensor_meta" in live[0].meta:
            cuts.append((i, live[0]))
    cuts.append((len(compute) - 1, output.args[0]))

    modules = dict(gm.named_modules())
    layers = []
    for (a, src), (b, dst) in zip(cuts, cuts[1:], strict=False):
        g = fx.Graph()
        env = {src: g.placeholder("x")}
        lookup = env.__getitem__
        for n in nodes:
            if n.op == "get_attr" and any(order.get(u, -2) in range(a + 1, b + 1) for u in n.users):
                env[n] = g.node_copy(n, lookup)
        for n in compute[a + 1 : b + 1]:
            env[n] = g.node_copy(n, lookup)
        g.output(env[dst])
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
        out_shape = tuple(dst.meta["tensor_meta"].shape[1:])
        layers.append(Layer(name, seg, _dominant(kinds), total, out_shape))
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


def to_chain(model: nn.Module, example: torch.Tensor, prefix: str = "") -> Chain:
    """A chain of split candidates for ``model`` (``example``: one batch of real input, batch size >= 1)."""
    model.eval()
    if isinstance(model, nn.Sequential):
        return from_sequential(model, example, prefix)
    return from_fx(model, example, prefix)
