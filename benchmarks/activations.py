"""Activations autograd keeps for the backward, per recipe phase, as a ratio to an ERM step.

    python benchmarks/activations.py                    # resnet18 (os16), batch 8 x 224 px
    python benchmarks/activations.py --batch 4 --size 128

Counts the bytes of every tensor saved for the backward (parameters excluded, each storage
once) while a phase computes its loss: a hardware-independent measure of the activation memory
that dominates peak memory at training resolution. Rows: ERM, ALIGN's two phases with the
masker's activations recomputed (the default for the learned masker), kept, and kept whole
(``recompute_bn=False``: BatchNorm outputs kept too), and the parts of ALIGN's masker phase on
their own (the masker, either way; the classifier on the masked pair).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.graph import saved_tensors_hooks

sys.path.insert(0, os.path.dirname(__file__))
from _common import table  # noqa: E402


def saved_bytes(fn: Callable[[], Any], exclude: set[int]) -> tuple[Any, int]:
    """``fn()`` and the bytes of the tensors autograd saved while it ran."""
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude and ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def main() -> None:
    import timm

    import egl
    from egl.losses.masker_dist import masked_pair_logits
    from egl.recipes.base import frozen
    from egl.recipes.batch import as_batch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.arange(a.batch) % 5
    mask = torch.zeros(a.batch, 1, a.size, a.size)
    mask[..., a.size // 4: 3 * a.size // 4, a.size // 4: 3 * a.size // 4] = 1
    batch = as_batch({"image": x, "label": y, "mask": mask, "domain": y % 2}, "benchmarks.activations")

    def phases(name: str, **kw: Any) -> dict[str, int]:
        model = timm.create_model(a.arch, pretrained=False, num_classes=5, output_stride=16)
        recipe = egl.create("recipe", name, model, **kw).train()
        params = {q.untyped_storage().data_ptr() for q in recipe.parameters()}
        out = {}
        for phase in recipe.active_phases(10**6):
            terms, n = saved_bytes(lambda: phase.compute(batch, 10**6), params)
            terms["total"].backward()
            out[phase.name] = n
        return out

    erm = phases("erm")["classifier"]
    rows = [{"what": "erm step", "MB": erm / 1e6, "x erm": 1.0}]
    variants = (("align (masker recomputed: the default)", {}),
                ("align, masker kept (masker_checkpoint=False)", {"masker_checkpoint": False}),
                ("align, masker kept whole (and recompute_bn=False)",
                 {"masker_checkpoint": False, "masker": lambda: egl.create("masker", "learned", recompute_bn=False)}))
    for label, kw in variants:
        kw = {k: v() if callable(v) else v for k, v in kw.items()}
        for ph, n in phases("align", warmup_steps=0, **kw).items():
            rows.append({"what": f"{label}: {ph} phase", "MB": n / 1e6, "x erm": n / erm})
    model = timm.create_model(a.arch, pretrained=False, num_classes=5, output_stride=16).train()
    for recompute_bn in (True, False):
        masker = egl.create("masker", "learned", recompute_bn=recompute_bn).train()
        params = {q.untyped_storage().data_ptr() for q in [*model.parameters(), *masker.parameters()]}
        m, n = saved_bytes(lambda: masker(x), params)
        rows.append({"what": f"  of which the masker (recompute_bn={recompute_bn})", "MB": n / 1e6, "x erm": n / erm})
    with frozen(model):
        _, n = saved_bytes(lambda: masked_pair_logits(model, x, m), params)
    rows.append({"what": "  of which the classifier on the masked pair", "MB": n / 1e6, "x erm": n / erm})
    print(f"# activations kept for the backward: {a.arch} (os16), batch {a.batch} x {a.size}px, fp32")
    print(table(rows, ["what", "MB", "x erm"]))


if __name__ == "__main__":
    main()
