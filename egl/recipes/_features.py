"""The classifier's features (the input of its last linear layer, DomainBed's ``featurizer``
output) read during the model's own forward pass, for recipes that match feature
distributions (CORAL, MMD)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from egl._check import describe, fail

__all__ = ["classifier_head", "logits_and_features"]


def classifier_head(model: nn.Module, name: str | None, fn: str) -> nn.Module:
    """The module whose input are the features: ``model.get_classifier()`` (timm) when ``name``
    is None, else the submodule called ``name`` (a key of ``model.named_modules()``)."""
    fix = "Pass classifier='<name>', the module of model.named_modules() whose input are the features (e.g. 'fc')"
    if name is None:
        get = getattr(model, "get_classifier", None)
        if not callable(get):
            raise fail(fn, "classifier", "a model with get_classifier() (timm), or the name of its classifier module",
                       f"a {type(model).__name__} without get_classifier()", fix)
        head = get()
        if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
            raise fail(fn, "classifier", "a model whose get_classifier() is its last layer",
                       f"get_classifier() = {describe(head)} (a model built with num_classes=0?)", fix)
        return head
    modules = dict(model.named_modules())
    if not isinstance(name, str) or name not in modules or name == "":
        some = [n for n in modules if n][-5:]
        raise fail(fn, "classifier", f"the name of a submodule of the model (its last ones: {some})", repr(name), fix)
    return modules[name]


def logits_and_features(run: Callable[[], Tensor], head: nn.Module, fn: str) -> tuple[Tensor, Tensor]:
    """``run()``'s logits and the input ``head`` received during it, as ``[B, D]``.

    ``head`` must be called exactly once by ``run``, its first tensor argument (positional or
    keyword) holding one feature vector per image: ``[B, D]``, or ``[B, D, 1, 1]`` (a 1x1
    convolution head after pooling). An unpooled map (``[B, C, H, W]`` with ``H W > 1``, a
    ViT's ``[B, N, D]`` tokens) is refused: its flattened covariance would be ``(C H W)²``.
    """
    seen: list[object] = []

    def keep(_module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        seen.append(next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None))

    handle = head.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        logits = run()
    finally:
        handle.remove()
    fix = "Pass classifier='<name>': the module the model calls once, on its pooled features, to make the logits"
    if len(seen) != 1 or not isinstance(seen[0], Tensor):
        got = f"{len(seen)} calls" if len(seen) != 1 else f"one call without a tensor argument ({describe(seen[0])})"
        raise fail(fn, "classifier", f"a {type(head).__name__} called once per forward pass on a tensor", got, fix)
    feats = seen[0]
    b = logits.shape[0]
    pooled = feats.dim() == 2 or (feats.dim() == 4 and feats.shape[2] * feats.shape[3] == 1)
    if not pooled or feats.shape[0] != b:
        hint = " (an unpooled map or tokens?)" if feats.shape[0] == b else f" (not one row per image of the {b})"
        raise fail(fn, "classifier", f"a module whose input holds one feature vector per image ([{b}, D], or "
                   f"[{b}, D, 1, 1])", describe(feats) + hint,
                   fix + " (timm models: leave classifier=None, the model's get_classifier())")
    return logits, feats.flatten(1)
