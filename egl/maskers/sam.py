"""SAM masker: Segment Anything's proposals (Kirillov et al., "Segment Anything", ICCV 2023,
arXiv 2304.02643) turned into one foreground mask per image, with no learning.

Backed by the SAM classes of Hugging Face ``transformers`` (an optional extra:
``pip install egl[sam]``): ``SamModel`` for SAM and SlimSAM checkpoints, ``SamHQModel`` for
SAM-HQ. Weights load from a local folder only; egl never downloads at run time.

What the masker does to a batch ``x: [B, 3, H, W]``:

1. Inputs are RGB in [0, 1]; normalised inputs are mapped back with ``input_mean`` /
   ``input_std``, then clamped to [0, 1].
2. SAM's own preprocessing, on tensors (``SamImageProcessor``'s steps): the longest side
   resized to the model's image size (1024 for SAM), ImageNet mean/std normalisation, zero
   padding at the bottom and right to a square.
3. Automatic mask generation from a point grid, as SAM's automatic mask generator: the
   centres of an ``n x n`` grid of cells (``points_per_side``), each point one positive
   prompt, three proposals per point (``multimask_output``) with their predicted IoU. The
   image encoder runs once per image; the prompts go through the prompt encoder and mask
   decoder ``points_per_batch`` points at a time, for every image of the batch at once.
4. One mask from the proposals (:func:`combine_proposals`), ``rule="union"`` (default):
   the soft union (pixel-wise max of probabilities) of the proposals whose predicted IoU is
   at least ``iou_threshold`` (0.88, the automatic generator's ``pred_iou_thresh``);
   ``rule="best"``: the proposal with the highest predicted IoU. Proposals covering more
   than ``max_area`` of the image (foreground pixels, logit > 0) are dropped first (default
   1.0: none). When no proposal passes, the union falls back to the best one, so the rule
   never returns an empty mask by construction.
5. SAM's post-processing: logits upsampled to the model's image size, padding cropped,
   resized to ``H x W``; then the sigmoid. Masks are rounded to float16, as cached.

Choices where SAM's generator does more: no stability-score filter, no NMS, no crops (they
separate masks; a union or a single best proposal does not need them). 16 points per side
by default (the generator uses 32: four times the decoder work).

SAM masks are fixed targets, so they are cached on disk (``cache_dir``): see
:mod:`egl.maskers._cache` for the key (image + configuration + model fingerprint) and the
atomic writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_choice, check_finite, check_int, check_shape, describe, fail
from egl._transfer import host_tensor, upload
from egl.maskers._cache import MaskCache, module_fingerprint
from egl.maskers.base import Masker

__all__ = ["SAMMasker", "combine_proposals", "load_sam", "ENV_WEIGHTS"]

ENV_WEIGHTS = "EGL_SAM_WEIGHTS"
_FN = "egl.maskers.SAMMasker"
_MEAN = (0.485, 0.456, 0.406)  # SAM's pixel mean / std (ImageNet's), for images in [0, 1]
_STD = (0.229, 0.224, 0.225)
_CLASSES = {"sam": "SamModel", "sam_hq": "SamHQModel"}
_HOW_TO_GET = (
    "Download a transformers SAM checkpoint once, by hand, e.g. `hf download facebook/sam-vit-base "
    "--local-dir ~/models/sam-vit-base` (older huggingface_hub: `huggingface-cli download ...`; SlimSAM "
    "and SAM-HQ checkpoints work too), then pass SAMMasker(weights='~/models/sam-vit-base') or set "
    f"{ENV_WEIGHTS}=~/models/sam-vit-base. egl never downloads weights at run time"
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        from egl.errors import MissingDependencyError

        raise MissingDependencyError(
            f"{_FN}: 'weights' expected the transformers package (egl's 'sam' extra) to load SAM, got "
            f"ImportError: {exc}. Run `pip install egl[sam]` (or `pip install 'transformers>=4.40'`)."
        ) from exc
    return transformers


def load_sam(weights: str | os.PathLike[str]) -> nn.Module:
    """Load a SAM model from a local transformers checkpoint folder, offline.

    ``model_type`` ``"sam"`` (SAM, SlimSAM) loads as ``SamModel``, ``"sam_hq"`` as ``SamHQModel``;
    both with ``from_pretrained(folder, local_files_only=True)``.

    Raises:
        InputError: the folder has no ``config.json``, or holds another kind of model.
        MissingDependencyError: transformers is not installed (``pip install egl[sam]``).
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise fail(_FN, "weights", "the path of a local SAM checkpoint folder", repr(weights)[:100], _HOW_TO_GET)
    path = Path(weights).expanduser()
    if not (path / "config.json").is_file():
        raise fail(_FN, "weights", "a local folder holding a transformers SAM checkpoint (config.json, "
                   "model.safetensors)", repr(str(weights)), _HOW_TO_GET)
    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:  # a damaged config.json
        raise fail(_FN, "weights", "a readable config.json", f"{str(path / 'config.json')!r} ({str(e)[:120]})",
                   "Download the checkpoint again (" + _HOW_TO_GET + ")") from e
    cls = getattr(tf, _CLASSES.get(config.model_type, ""), None)
    if cls is None:
        raise fail(_FN, "weights", f"a checkpoint of model_type {sorted(_CLASSES)} that transformers "
                   f"{tf.__version__} knows", f"model_type {config.model_type!r} in {str(path)!r}",
                   "Point to a SAM, SlimSAM or SAM-HQ checkpoint (or upgrade transformers)")
    try:
        return cls.from_pretrained(str(path), local_files_only=True)
    except OSError as e:  # weights missing or unreadable (an interrupted download)
        raise fail(_FN, "weights", "a folder with the model's weights (model.safetensors or pytorch_model.bin)",
                   f"{str(path)!r} ({str(e)[:120]})", "Download the checkpoint again (" + _HOW_TO_GET + ")") from e


# -- proposals to one mask -------------------------------------------------------------------------
def _reduce(logits: Tensor, iou: Tensor, iou_threshold: float, max_area: float,
            state: dict[str, Tensor] | None, valid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """Fold proposals ``logits: [B, P, h, w]``, ``iou: [B, P]`` into the running ``state``.

    Areas count the pixels of ``logits[..., :valid[0], :valid[1]]`` (the image, not its padding).
    """
    inside = logits if valid is None else logits[..., :valid[0], :valid[1]]
    small = (inside > 0).float().mean(dim=(-2, -1)) <= max_area
    kept = small & (iou >= iou_threshold)
    union = torch.where(kept[..., None, None], logits, torch.full_like(logits, -math.inf)).amax(1)
    # best proposal: not too large first, then by predicted IoU
    idx = torch.where(small.any(1), iou.masked_fill(~small, -math.inf).argmax(1), iou.argmax(1))
    rows = torch.arange(logits.shape[0], device=logits.device)
    new = {"union": union, "any": kept.any(1), "small": small[rows, idx], "iou": iou[rows, idx],
           "best": logits[rows, idx]}
    if state is None:
        return new
    better = (new["small"] & ~state["small"]) | ((new["small"] == state["small"]) & (new["iou"] > state["iou"]))
    return {"union": torch.maximum(state["union"], new["union"]), "any": state["any"] | new["any"],
            "small": torch.where(better, new["small"], state["small"]),
            "iou": torch.where(better, new["iou"], state["iou"]),
            "best": torch.where(better[:, None, None], new["best"], state["best"])}


def _finish(state: dict[str, Tensor], rule: str) -> Tensor:
    best = state["best"]
    out = best if rule == "best" else torch.where(state["any"][:, None, None], state["union"], best)
    return out.unsqueeze(1)


def combine_proposals(logits: Tensor, iou: Tensor, *, rule: str = "union", iou_threshold: float = 0.88,
                      max_area: float = 1.0) -> Tensor:
    """One mask's logits from SAM's proposals (the rule of :class:`SAMMasker`).

    ``"union"``: pixel-wise max of the logits of the proposals with ``iou >= iou_threshold``
    (the sigmoid of it is the max of their probabilities: a soft union); ``"best"``: the
    proposal with the highest ``iou``. Proposals whose area (fraction of logits > 0) exceeds
    ``max_area`` are dropped first; with nothing left, the best proposal stands in (and for
    ``"best"``, the best one of all when every proposal is too large).

    Args:
        logits: mask logits of P proposals per image. iou: their predicted IoU.
        rule: ``"union"`` or ``"best"``. iou_threshold: union threshold, in [0, 1].
        max_area: in (0, 1].

    Shape:
        logits: ``B P h w``; iou: ``B P``; returns ``B 1 h w`` (logits).

    Example:
        >>> logits, iou = torch.randn(2, 6, 8, 8), torch.rand(2, 6)
        >>> combine_proposals(logits, iou, rule="best").shape
        torch.Size([2, 1, 8, 8])
    """
    fn = "egl.maskers.combine_proposals"
    logits = check_shape(logits, "B P h w", fn, "logits")
    iou = check_shape(iou, "B P", fn, "iou")
    if tuple(iou.shape) != tuple(logits.shape[:2]):
        raise fail(fn, "iou", f"shape {list(logits.shape[:2])} (one score per proposal)", describe(iou),
                   "Pass the iou_scores that came with the logits")
    check_choice(rule, ("union", "best"), fn, "rule")
    return _finish(_reduce(logits, iou, *_thresholds(iou_threshold, max_area, fn), None), rule)


def _thresholds(iou_threshold: object, max_area: object, fn: str) -> tuple[float, float]:
    """``(iou_threshold, max_area)`` as floats, in [0, 1] and (0, 1] (a bool or NaN is refused)."""
    out = []
    for arg, value, lo_open, fix in (
            ("iou_threshold", iou_threshold, False, "Pass e.g. iou_threshold=0.88 (SAM's pred_iou_thresh)"),
            ("max_area", max_area, True, "Pass e.g. max_area=0.5 to drop proposals covering more than half "
             "the image, or 1.0 to keep every proposal")):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not (0 < value <= 1 if lo_open else 0 <= value <= 1)):  # NaN fails too
            expected = "a number in (0, 1] (a fraction of the image)" if lo_open else "a number in [0, 1]"
            raise fail(fn, arg, expected, repr(value)[:100], fix)
        out.append(float(value))
    return out[0], out[1]


def _cache(cache_dir: object, dataset: str | None) -> MaskCache:
    """The mask cache under ``cache_dir``, refused now when it cannot be a folder (a path that is,
    or lies under, an existing file failed only at the first write, with a raw OSError)."""
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise fail(_FN, "cache_dir", "a folder path (or None: no cache)", repr(cache_dir)[:100],
                   "Pass e.g. cache_dir='~/.cache/egl/sam'")
    cache = MaskCache(cache_dir, dataset)
    for path in (cache.dir, *cache.dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "an existing file" if path == cache.dir else f"a path under the file {str(path)!r}"
                raise fail(_FN, "cache_dir", "a folder (or a path where one can be created)",
                           f"{str(cache.dir)!r}, {what}",
                           "Pass a folder, e.g. cache_dir='~/.cache/egl/sam', or move the file away")
            break
    return cache


def _unit_stats(value: float | Sequence[float] | None, arg: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    vals = (value,) * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else tuple(value)
    if len(vals) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise fail(_FN, arg, "a number or 3 numbers (one per RGB channel)", repr(value),
                   "Pass the mean/std the data was normalised with, e.g. (0.485, 0.456, 0.406)")
    if arg == "input_std" and min(vals) <= 0:
        raise fail(_FN, arg, "positive numbers", repr(value), "Pass the std the data was normalised with")
    return tuple(float(v) for v in vals)


class SAMMasker(Masker):
    """Segment Anything as a frozen masker: point-grid proposals, one rule, a disk cache.

    Args:
        weights: a local transformers SAM checkpoint folder (SAM, SlimSAM, SAM-HQ), loaded with
            ``local_files_only=True``; None reads the folder from ``$EGL_SAM_WEIGHTS``.
        model: an already-built ``SamModel`` / ``SamHQModel`` instead of ``weights``.
        points_per_side: the prompt grid is ``points_per_side ** 2`` points (16).
        rule: ``"union"`` (default) or ``"best"`` (see :func:`combine_proposals`).
        iou_threshold: predicted IoU a proposal needs to join the union, in [0, 1] (0.88).
        max_area: proposals covering more of the image than this fraction are dropped, in
            (0, 1] (1.0: none).
        input_mean, input_std: the normalisation the inputs carry, undone before SAM's own
            (None: inputs are RGB in [0, 1]).
        points_per_batch: points per mask-decoder call, per image (64; memory only).
        image_batch_size: images per image-encoder call (8; memory only).
        cache_dir: the folder where masks are cached (None: no cache); created on first write.
            An existing file there is refused at construction.
        dataset: a subfolder of ``cache_dir`` per data set (None: ``cache_dir`` itself).

    The SAM model is frozen, kept in eval mode and held outside the module tree: it has no
    trainable parameters, is not part of ``state_dict()`` (checkpoints stay small), and
    ``.to()`` / ``.cuda()`` move it along.

    Shape:
        x: ``B 3 H W``, RGB in [0, 1] (or normalised, with ``input_mean``/``input_std``);
        returns ``B 1 H W`` in [0, 1], float32, on ``x``'s device.

    Raises:
        InputError: no weights (the message says how to get them), bad arguments or inputs.
        MissingDependencyError: transformers is missing (``pip install egl[sam]``).

    Example:
        >>> # masker = SAMMasker(weights="~/models/sam-vit-base", cache_dir="~/.cache/egl/sam",
        >>> #                    dataset="waterbirds", input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
        >>> # recipe = egl.recipes.align(model, masker=masker)  # from egl import recipes
    """

    name = "sam"
    trainable = False
    needs_mask = False
    _sam: nn.Module

    def __init__(self, weights: str | os.PathLike[str] | None = None, *, model: nn.Module | None = None,
                 points_per_side: int = 16, rule: str = "union", iou_threshold: float = 0.88,
                 max_area: float = 1.0, input_mean: float | Sequence[float] | None = None,
                 input_std: float | Sequence[float] | None = None, points_per_batch: int = 64,
                 image_batch_size: int = 8, cache_dir: str | os.PathLike[str] | None = None,
                 dataset: str | None = None) -> None:
        super().__init__()
        check_choice(rule, ("union", "best"), _FN, "rule")
        self.points_per_side = check_int(points_per_side, _FN, "points_per_side", low=1)
        self.points_per_batch = check_int(points_per_batch, _FN, "points_per_batch", low=1)
        self.image_batch_size = check_int(image_batch_size, _FN, "image_batch_size", low=1)
        self.rule = rule
        self.iou_threshold, self.max_area = _thresholds(iou_threshold, max_area, _FN)
        self.input_mean = _unit_stats(input_mean, "input_mean")
        self.input_std = _unit_stats(input_std, "input_std")
        if (self.input_mean is None) != (self.input_std is None):
            raise fail(_FN, "input_std" if self.input_std is None else "input_mean", "to come with "
                       "'input_mean'" if self.input_std is None else "to come with 'input_std'", "None",
                       "Pass both input_mean and input_std, or neither")
        if dataset is not None and (not isinstance(dataset, str) or not dataset):
            raise fail(_FN, "dataset", "a non-empty name", repr(dataset), "Pass e.g. dataset='waterbirds'")
        self.cache = None if cache_dir is None else _cache(cache_dir, dataset)
        if isinstance(weights, nn.Module) and model is None:  # SAMMasker(sam_model)
            weights, model = None, weights
        if model is not None and weights is not None:
            raise fail(_FN, "model", "None when 'weights' is given", type(model).__name__, "Pass one of the two")
        if model is None:
            weights = weights if weights is not None else os.environ.get(ENV_WEIGHTS) or None
            if weights is None:
                raise fail(_FN, "weights", f"a local SAM checkpoint folder (or ${ENV_WEIGHTS})", "None", _HOW_TO_GET)
            model = load_sam(weights)
        for attr in ("get_image_embeddings", "config"):
            if not hasattr(model, attr):
                raise fail(_FN, "model", "a transformers SamModel or SamHQModel", type(model).__name__,
                           "Build one with transformers.SamModel(SamConfig(...)) or pass 'weights'")
        model.eval().requires_grad_(False)
        object.__setattr__(self, "_sam", model)  # outside the module tree: no parameters, no state_dict
        self._fingerprint: str | None = None
        self._fingerprinted: tuple[tuple[int, int], ...] = ()  # the weights it was computed from

    @property
    def model(self) -> nn.Module:
        """The frozen SAM model."""
        return self._sam

    def _apply(self, fn: Any, recurse: bool = True) -> "SAMMasker":  # .to(), .cuda(), .half() reach SAM
        super()._apply(fn, recurse)
        if recurse:
            self._sam._apply(fn)
            self._fingerprint = None  # .half() changes the masks: a new cache key
        return self

    def train(self, mode: bool = True) -> "SAMMasker":
        super().train(mode)
        self._sam.eval()  # SAM stays in eval mode
        return self

    def extra_repr(self) -> str:
        cache = "None" if self.cache is None else repr(str(self.cache.dir))
        return (f"model={type(self._sam).__name__}, points_per_side={self.points_per_side}, rule={self.rule!r}, "
                f"iou_threshold={self.iou_threshold}, max_area={self.max_area}, cache_dir={cache}")

    def config(self) -> dict[str, Any]:
        """The settings that change the masks (part of every cache key)."""
        return {"points_per_side": self.points_per_side, "rule": self.rule, "iou_threshold": self.iou_threshold,
                "max_area": self.max_area, "input_mean": self.input_mean, "input_std": self.input_std}

    def fingerprint(self) -> str:
        """sha256 of the model's class, configuration and weights: computed again when a weight
        tensor is replaced or changed in place (``load_state_dict``, an optimiser, ``.to()``), as
        its identity and version counter tell, so a cache never serves masks of older weights."""
        weights = tuple((id(t), t._version) for t in (*self._sam.parameters(), *self._sam.buffers()))
        if self._fingerprint is None or weights != self._fingerprinted:
            cfg = self._sam.config
            extra = cfg.to_json_string() if hasattr(cfg, "to_json_string") else repr(cfg)
            self._fingerprint = module_fingerprint(self._sam, extra)
            self._fingerprinted = weights
        return self._fingerprint

    def _context(self) -> bytes:
        return json.dumps({"masker": "sam", "config": self.config(), "model": self.fingerprint()},
                          sort_keys=True).encode()

    # -- forward ---------------------------------------------------------------------------------
    def _to_unit(self, x: Tensor, fn: str) -> Tensor:
        """``x`` as RGB in [0, 1]: un-normalised, checked loosely, clamped."""
        x = x.float()
        if self.input_mean is not None and self.input_std is not None:
            mean = host_tensor(self.input_mean, x.device, torch.float32).view(1, 3, 1, 1)
            std = host_tensor(self.input_std, x.device, torch.float32).view(1, 3, 1, 1)
            x = x * std + mean
        lo, hi = float(x.min()), float(x.max())
        if lo < -0.5 or hi > 1.5:  # slack for resampling overshoot; normalised images go far beyond
            raise fail(fn, "x", "RGB images in [0, 1] (after undoing input_mean/input_std)",
                       f"values in [{lo:.3g}, {hi:.3g}]", "For mean/std-normalised data pass SAMMasker("
                       "input_mean=..., input_std=...), e.g. ImageNet's (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)")
        return x.clamp(0.0, 1.0)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        fn = "egl.maskers.sam"
        x = check_shape(x, "B C H W", fn, "x")
        if x.shape[1] != 3:
            raise fail(fn, "x", "an RGB (3-channel) image", f"{x.shape[1]} channels", "Pass RGB images")
        check_finite(x, fn, "x")
        b, _, h, w = x.shape
        x01 = self._to_unit(x.detach(), fn)
        out = torch.empty(b, 1, h, w, device=x.device, dtype=torch.float32)
        todo, keys = list(range(b)), [""] * b
        if self.cache is not None:
            context, todo = self._context(), []
            x_cpu = x.detach().float().cpu()  # keys follow the tensor as given (its normalisation is in context)
            for i in range(b):
                keys[i] = MaskCache.key(x_cpu[i], context)
                hit = self.cache.load(keys[i], (1, h, w))
                if hit is None:
                    todo.append(i)
                else:
                    out[i] = upload(hit, x.device, torch.float32)
        for s in range(0, len(todo), self.image_batch_size):
            idx = todo[s:s + self.image_batch_size]
            masks = self._compute(x01[idx])
            out[idx] = upload(masks, x.device, torch.float32)
            if self.cache is not None:
                for j, i in enumerate(idx):
                    self.cache.save(keys[i], masks[j])
        return out

    def _compute(self, x01: Tensor) -> Tensor:
        """SAM masks of RGB images in [0, 1]: ``[n, 3, H, W] -> [n, 1, H, W]`` float16, computed
        in SAM's own dtype whatever autocast the caller runs under (``fit(precision="bf16")``):
        the masks, and so the cache, do not depend on the caller (bf16 autocast moved them by
        up to 0.21)."""
        p = next(self._sam.parameters())
        with torch.no_grad(), torch.autocast(p.device.type, enabled=False):
            return self._compute_exact(x01)

    def _compute_exact(self, x01: Tensor) -> Tensor:
        sam = self._sam
        p = next(sam.parameters())
        x01 = x01.to(p.device, torch.float32)
        n, _, h, w = x01.shape
        size = int(sam.config.vision_config.image_size)
        scale = size / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)  # SamImageProcessor's resized shape
        px = x01 if (nh, nw) == (h, w) else F.interpolate(x01, (nh, nw), mode="bilinear", align_corners=False,
                                                           antialias=True)
        mean, std = (host_tensor(v, px.device, px.dtype).view(1, 3, 1, 1) for v in (_MEAN, _STD))
        px = (px - mean) / std
        px = F.pad(px, (0, size - nw, 0, size - nh))
        emb = sam.get_image_embeddings(px.to(p.dtype))
        extra = {}
        if isinstance(emb, tuple):  # SAM-HQ: the decoder also reads intermediate ViT features
            emb, extra["intermediate_embeddings"] = emb
        k = self.points_per_side
        c = (torch.arange(k, device=p.device, dtype=torch.float32) + 0.5) / k
        gy, gx = torch.meshgrid(c * nh, c * nw, indexing="ij")
        points = torch.stack([gx, gy], dim=-1).reshape(1, k * k, 1, 2).expand(n, -1, -1, -1)
        state: dict[str, Tensor] | None = None
        for s in range(0, k * k, self.points_per_batch):
            pts = points[:, s:s + self.points_per_batch]
            labels = torch.ones(pts.shape[:3], dtype=torch.long, device=p.device)
            res = sam(image_embeddings=emb, input_points=pts.to(p.dtype), input_labels=labels,
                      multimask_output=True, **extra)
            logits = res.pred_masks.flatten(1, 2).float()  # [n, points * 3, L, L]
            low = logits.shape[-1]
            valid = (math.ceil(nh * low / size), math.ceil(nw * low / size))  # areas leave the padding out
            state = _reduce(logits, res.iou_scores.flatten(1).float(), self.iou_threshold, self.max_area,
                            state, valid)
        assert state is not None
        # SamImageProcessor.post_process_masks: up to the padded input, crop the padding, resize
        logit = F.interpolate(_finish(state, self.rule), (size, size), mode="bilinear", align_corners=False)
        logit = F.interpolate(logit[..., :nh, :nw], (h, w), mode="bilinear", align_corners=False)
        return torch.sigmoid(logit).half()

    def precompute(self, data: Iterable[Any], *, batch_size: int = 16) -> int:
        """Fill the cache for every image of ``data``; returns the number of images seen.

        ``data`` yields image tensors ``[3, H, W]`` or samples ``(image, ...)`` / ``{"image": ...}``
        (a map-style dataset or any iterable), in the form the training loop will pass them:
        the same size, normalisation and deterministic transforms, or the keys will differ.
        """
        if self.cache is None:
            raise fail(_FN, "cache_dir", "a directory to precompute into", "None", "Build with cache_dir=...")
        check_int(batch_size, _FN, "batch_size", low=1)
        seen, buf = 0, []
        fn = "egl.maskers.SAMMasker.precompute"
        for item in data:
            img = item["image"] if isinstance(item, dict) else item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(img, torch.Tensor) or img.dim() != 3:  # a DataLoader yields batches [B, 3, H, W]
                raise fail(fn, "data", "items holding one image [3, H, W] each (a dataset, not a DataLoader: "
                           "precompute batches them itself)", f"an item with {describe(img)}",
                           "Pass the dataset, e.g. masker.precompute(loader.dataset, batch_size=16)")
            if buf and img.shape != buf[0].shape:
                raise fail(fn, "data", f"images of one size (the first was {list(buf[0].shape)})",
                           f"one of {list(img.shape)}", "Resize the images as the training loop will see them")
            buf.append(img)
            if len(buf) == batch_size:
                self(torch.stack(buf))
                seen, buf = seen + len(buf), []
        if buf:
            self(torch.stack(buf))
            seen += len(buf)
        return seen
