"""ALIGN (Hong et al., "ALIGN: ...", AAAI 2026, arXiv 2511.06944): a masker and a classifier
trained in alternation.

* Masker phase (classifier frozen, in eval mode, its BatchNorm statistics untouched):
  ``L_mask = MSE(p_y(x⊙M) − p_y(x⊙(1−M)), 1) + λ1·mean|M| + λ2·smoothness(M)``, λ1 = 10, λ2 = 1.
* Classifier phase (masker frozen, masks detached):
  ``L_clf = CE + λ3·BCE(GradCAM_y(x), M(x)) + λ4·L_reg``, λ3 = λ4 = 0.1 (0.2 on Terra Incognita),
  ``L_reg`` the mixup consistency regularizer.
* Warm-up: the first ``warmup_steps = 200`` steps train the classifier alone with
  ``CE + λ4·L_reg``; the masker phase and the alignment term join after. 200 is the paper's
  number; counting it in optimisation steps is ours (the paper gives no unit).

Choices where the paper is silent (arguments unless said otherwise):

* Alternation: every step runs the masker phase, then the classifier phase, on the same batch
  (``masker_every=1``; ``masker_every=k`` runs the masker phase at every k-th step after the
  warm-up, the classifier phase at every step).
* The classifier runs in eval mode in the masker phase (fixed: the two masked halves share one
  batch, and BatchNorm in training mode would mix their statistics and move its running ones).
* Sparsity is ``mean|M|``, the paper's ``‖M‖₁`` divided by the mask's element count (fixed: with
  a sum, λ1 = 10 would outweigh the MSE by about 5·10⁴ at 224 px); smoothness is normalised
  likewise (:mod:`egl.regularizers.smoothness`).
* Optimisers: Adam for both; classifier lr 5e-5 (DomainBed's default), masker lr 1e-3
  (a small network trained from scratch).
* Resolution of the BCE: Grad-CAM upsampled bilinearly to the input, against the mask at
  input resolution (``align_resolution="input"``); ``"feature"`` instead shrinks the mask
  to the feature map by area averaging (cheaper, coarser).
* Mixup consistency reuses the classifier phase's own Grad-CAM of ``x`` as ``Φ(x)``; α = 0.2.
* The masked classifier passes ``x⊙M`` and ``x⊙(1−M)`` run as one batch in eval mode. The
  product is taken in the model's normalised space (the paper multiplies normalised tensors):
  with a stem that normalises egl's [0, 1] images (``normalize_inputs``), removed pixels take
  its mean colour, not black (:func:`egl.losses.masker_dist.masked_pair_logits`).
* ``masker_checkpoint="auto"``: a masker that declares itself ``recomputable`` (the learned
  one) has its activations (full-resolution feature maps, about as large as all of a
  ResNet-18's at 224 px) recomputed in the masker phase's backward instead of kept (one more
  masker forward; BatchNorm statistics are restored after it, so training is bit-for-bit
  unchanged). Measured on resnet18 at 224 px (``benchmarks/activations.py``,
  ``benchmarks/train_step.py``): the masker phase keeps 2.06x an ERM step's activations
  instead of 2.59x (3.10x with ``LearnedMasker(recompute_bn=False)``, which also keeps its
  BatchNorm outputs); on the CPU the extra masker forward costs time within noise (4.21x
  against 4.27x ERM, one run; an earlier one read 5-7%).
  ``True`` forces it, ``False`` keeps the activations.
* ``batch_mixup="auto"``: the mixup regularizer's pass over ``x̃`` runs in the same forward and
  Grad-CAM as the main pass over ``x`` (one pass over ``2B`` images) when that is exact: no
  BatchNorm layer uses batch statistics (frozen BatchNorm, LayerNorm/GroupNorm models such as
  ViTs and ConvNeXts) and no dropout or drop-path is active (see
  :mod:`egl.recipes._batching`). ``True`` batches them whatever the model (BatchNorm then
  normalises both halves together; dropout draws other masks), ``False`` never. It saves no
  arithmetic; a GPU runs fewer, larger kernels.
* ``mask_mode="eval"``: the classifier phase's masks come from the masker in eval mode (its
  BatchNorm running statistics: one mask per image, whatever the batch). The masker phase
  trains it in training mode (batch statistics), and the running statistics lag a masker
  trained at lr 1e-3: on the synthetic benchmark (``warmup_steps=0``) the two masks of one
  batch differed by 0.11 (mean absolute) after 1 step, 0.18 after 10, 0.26 after 40 (means
  0.34 vs 0.55). ``"batch"`` takes the masks with the batch's own statistics (the masks the
  masker phase just optimised; running statistics untouched) while the recipe trains, and
  eval-mode masks when it is evaluated. On the demo's benchmark (4 seeds) the two gave
  classifiers within noise of each other (docs/recipes.md has the numbers).
* With a masker that has no parameters (``grayscale``, ``ground_truth``) there is no masker phase.
* With ``align_weight=0`` (the "w/o EG" ablation) the masker phase is skipped: it could not
  change the classifier.
* ``annotated_mean="batch"``: on partially annotated batches (``ground_truth`` masks for some
  images only) the alignment term is the annotated images' losses summed over the batch size;
  ``"annotated"`` divides by their number instead (docs/recipes.md, "Partially annotated batches").

Ablations of the paper's Table 2: ``align(model, align_weight=0)`` (w/o EG),
``align(model, masker="grayscale")`` (m-Gray); ``masker="ground_truth"`` trains on the data's masks.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_choice, check_int, check_positive, check_range, describe, fail
from egl._deferred import carry_range
from egl._masks import as_mask
from egl.backbones import _restore_buffers
from egl.explainers.base import check_target_range
from egl.explainers.class_maps import class_maps
from egl.explainers.grad_cam import GradCAM, in_grad_cam_family
from egl.kernels.subpixel_dgrad import subpixel_input_grads
from egl.losses._reduction import ANNOTATED_MEANS, annotated_count, annotated_mean
from egl.train.distributed import is_distributed
from egl.losses.masker_dist import FILLS, masked_pair_logits, masker_dist_loss
from egl.maskers.base import Masker
from egl.recipes._batching import batchable
from egl.recipes._recompute import recompute
from egl.recipes.base import Phase, Recipe, builds, frozen
from egl.recipes.batch import Batch
from egl.regularizers.mixup_consistency import MixupConsistency
from egl.regularizers.smoothness import smoothness
from egl.regularizers.sparsity import sparsity
from egl.registry import resolve

__all__ = ["ALIGN", "align"]


class ALIGN(Recipe):
    """ALIGN on any classifier.

    Args:
        model: the classifier (any timm model; others with ``layer=``).
        masker: registered masker name or instance (default ``"learned"``). Each of the four
            components may also be a dict ``{"name": ..., "kwargs": {...}}`` (a YAML config's form:
            ``masker: {name: learned, kwargs: {width: 16}}``; :func:`egl.resolve`).
        explainer: registered explainer name or instance (default ``"grad_cam"``).
        alignment: registered alignment loss name or instance (default ``"bce"``).
        regularizer: registered regularizer name or instance (default ``"mixup_consistency"``), or None.
        sparsity_weight: λ1 (10). smooth_weight: λ2 (1). align_weight: λ3 (0.1). reg_weight: λ4 (0.1).
        warmup_steps: classifier-only steps before the masker and the alignment term join (200).
        masker_every: after the warm-up, the masker phase runs every ``masker_every`` steps (1:
            every step, then the classifier phase; the paper does not say how often they alternate).
        layer: Grad-CAM target layer (``"auto"``); with ``align_resolution``, configures an
            explainer named from the Grad-CAM family (``"grad_cam"``, ``"layer_cam"``, ...).
        align_resolution: ``"input"`` (default) or ``"feature"``.
        lr: classifier learning rate (5e-5). masker_lr: masker learning rate (1e-3).
        weight_decay: both phases' (0). optimizer: both phases' optimiser, ``"adam"`` (the paper's;
            :mod:`egl.recipes.optimizer`).
        masker_checkpoint: recompute the masker's activations in the masker phase's backward
            instead of keeping them (less memory, one more masker forward): ``"auto"`` (default:
            when the masker is ``recomputable``), ``True`` or ``False``.
        batch_mixup: explain ``x`` and the mixed batch ``x̃`` in one pass: ``"auto"`` (default:
            when that is exact: no BatchNorm using batch statistics, no active dropout),
            ``True`` or ``False``.
        mask_mode: the masker's mode for the classifier phase's masks: ``"eval"`` (default,
            running statistics) or ``"batch"`` (this batch's statistics while training; see
            the module docstring).
        annotated_mean: on partially annotated batches (``batch.annotated``, with a masker that
            reads the data's masks), the alignment term is the annotated images' losses summed
            and divided by the batch size (``"batch"``, default: each annotated image weighs what
            it weighs under full annotation) or by their number (``"annotated"``: the term keeps
            its scale, each annotated image weighing more as fewer are annotated; on the shortcut
            benchmark at 10 % of the masks it fell 16 points below ``"batch"`` out of distribution,
            and 12 below ERM: docs/experiments.md).
        mask_fill: what the masker phase's removed pixels become: ``"normalized"`` (default: zero
            in the model's normalised space, the paper's product of normalised tensors: the stem's
            mean colour for a model that normalises egl's [0, 1] images in its stem) or ``"black"``
            (egl's before 2026-11-29; the same for a model without normalisation in its stem).
    """

    name = "align"
    resume_free = frozenset({"masker_checkpoint"})  # recomputed activations: memory, not the maths

    def __init__(self, model: nn.Module, *, masker: Any = "learned", explainer: Any = "grad_cam",
                 alignment: Any = "bce", regularizer: Any = "mixup_consistency", sparsity_weight: float = 10.0,
                 smooth_weight: float = 1.0, align_weight: float = 0.1, reg_weight: float = 0.1,
                 warmup_steps: int = 200, masker_every: int = 1, layer: str = "auto",
                 align_resolution: str = "input",
                 lr: float = 5e-5, masker_lr: float = 1e-3, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam",
                 masker_checkpoint: bool | str = "auto", batch_mixup: bool | str = "auto",
                 mask_mode: str = "eval", annotated_mean: str = "batch", mask_fill: str = "normalized") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        fn = "egl.recipes.align"
        check_choice(annotated_mean, ANNOTATED_MEANS, fn, "annotated_mean")
        check_choice(mask_fill, FILLS, fn, "mask_fill")
        self.mask_fill = mask_fill
        self.annotated_mean = annotated_mean
        check_choice(align_resolution, ("input", "feature"), fn, "align_resolution")
        check_choice(mask_mode, ("eval", "batch"), fn, "mask_mode")
        self.mask_mode = mask_mode
        for arg, v in (("sparsity_weight", sparsity_weight), ("smooth_weight", smooth_weight),
                       ("align_weight", align_weight), ("reg_weight", reg_weight), ("masker_lr", masker_lr)):
            check_positive(v, fn, arg)
        check_int(warmup_steps, fn, "warmup_steps", fix="Pass a number of steps")
        self.masker_every = check_int(masker_every, fn, "masker_every", low=1,
                                      fix="Pass masker_every=1 to run the masker phase at every step")
        self.masker = resolve("masker", masker)
        if not isinstance(self.masker, Masker):
            raise fail(fn, "masker", "a registered masker name, {name: ..., kwargs: {...}}, or an egl.maskers.Masker",
                       repr(masker),
                       "See egl.list_components('masker')")
        free = sum(p.numel() for p in self.masker.parameters() if p.requires_grad)
        if free and not self.masker.trainable:
            warnings.warn(f"{fn}: masker {type(self.masker).__name__} has {free} parameters that require gradients "
                          "but trainable=False: ALIGN runs no masker phase and uses it as it is (at its "
                          "initialisation, unless loaded). Set the class attribute trainable = True for ALIGN's "
                          "masker phase, or masker.requires_grad_(False) for a frozen masker.", UserWarning,
                          stacklevel=3)
        upsample = align_resolution == "input"
        # layer= and align_resolution= configure an explainer named here from the Grad-CAM family
        # (a {name, kwargs} dict too: its own kwargs win over layer= and align_resolution=)
        spec = explainer.get("name") if isinstance(explainer, dict) else explainer
        named_grad_cam = isinstance(spec, str) and in_grad_cam_family(spec, fn=fn, arg="explainer")
        for arg, value, default in (("layer", layer, "auto"), ("align_resolution", align_resolution, "input")):
            if not named_grad_cam and value != default:
                raise fail(fn, arg, f"its default {default!r} when explainer is not the name of a Grad-CAM explainer "
                           f"('grad_cam', 'layer_cam', ...: it configures those; explainer={explainer!r})",
                           repr(value),
                           "Configure the explainer itself, e.g. explainer=GradCAM(model, layer=..., upsample=...)")
        self.explainer = resolve("explainer", explainer, model, **({"layer": layer, "upsample": upsample}
                                                                   if named_grad_cam else {}))
        if not getattr(self.explainer, "differentiable", False):
            raise fail(fn, "explainer", "a differentiable explainer (create_graph=True)", repr(explainer),
                       "Use 'grad_cam' or 'input_gradient'")
        theirs = getattr(self.explainer, "model", model)  # (a wrapper of this model shares its parameters)
        if theirs is not model and next(theirs.parameters(), None) is not next(model.parameters(), None):
            raise fail(fn, "explainer", "an explainer of the model this recipe trains",
                       f"one built on another {type(self.explainer.model).__name__} instance",
                       "Build it on this model, e.g. explainer=GradCAM(model), or pass explainer='grad_cam'")
        if alignment is None:
            raise fail(fn, "alignment", "a registered alignment loss name or an egl.losses.AlignmentLoss", "None",
                       "Pass e.g. alignment='bce'; to train without alignment, pass align_weight=0")
        self.alignment = resolve("alignment", alignment)
        _check_component(self.alignment, alignment, "alignment", ("saliency", "class_maps", "batch"), "saliency", fn)
        if getattr(self.alignment, "inputs", "saliency") == "class_maps" and not isinstance(self.explainer, GradCAM):
            raise fail(fn, "alignment",
                       "a loss on the explainer's maps when the explainer is not Grad-CAM or a variant",
                       f"{getattr(self.alignment, 'name', alignment)!r} (it reads Grad-CAM-family maps of every class; "
                       f"explainer={type(self.explainer).__name__})",
                       "Use a Grad-CAM-family explainer (grad_cam, layer_cam, ...) with this loss, or a loss such as "
                       "'bce' or 'l1'")
        self.regularizer = None if regularizer is None else resolve("regularizer", regularizer)
        if self.regularizer is not None:
            _check_component(self.regularizer, regularizer, "regularizer", ("mask", "explanation"), "mask", fn)
        self.sparsity_weight, self.smooth_weight = float(sparsity_weight), float(smooth_weight)
        self.align_weight, self.reg_weight = float(align_weight), float(reg_weight)
        self.warmup_steps = warmup_steps
        self.masker_lr = float(masker_lr)
        if not (isinstance(masker_checkpoint, bool) or (isinstance(masker_checkpoint, str)
                                                          and masker_checkpoint == "auto")):
            raise fail(fn, "masker_checkpoint", "True, False or 'auto'", repr(masker_checkpoint),
                       "Pass masker_checkpoint='auto' (recompute when the masker is recomputable)")
        self.masker_checkpoint = (getattr(self.masker, "recomputable", False) if masker_checkpoint == "auto"
                                  else bool(masker_checkpoint))
        if not (isinstance(batch_mixup, bool) or (isinstance(batch_mixup, str) and batch_mixup == "auto")):
            raise fail(fn, "batch_mixup", "True, False or 'auto'", repr(batch_mixup),
                       "Pass batch_mixup='auto' (one pass over x and the mixed batch when exact)")
        if batch_mixup is True and not _plain_mixup(self.regularizer):
            raise fail(fn, "batch_mixup", "False or 'auto' unless the regularizer is a plain MixupConsistency "
                       "(a subclass that overrides terms or forward is not)",
                       f"True with regularizer {getattr(self.regularizer, 'name', None) or describe(regularizer)}",
                       "Drop batch_mixup=True, or use regularizer='mixup_consistency'")
        self.batch_mixup = batch_mixup

    @property
    def reads_masks(self) -> bool:
        """True when the masks come with the data (a masker that ``needs_mask``) and are aligned to."""
        return bool(self.masker.needs_mask and self.align_weight > 0)

    def phases(self) -> list[Phase]:
        phases = []
        if self.masker.trainable and self.align_weight > 0:
            phases.append(Phase("masker", (self.masker,), self._masker_terms, start_step=self.warmup_steps,
                                every=self.masker_every))
        phases.append(Phase("classifier", (self.model,), self._classifier_terms))
        return phases

    def phase_lr(self, name: str) -> float:
        return self.masker_lr if name == "masker" else self.lr

    # -- masker phase ------------------------------------------------------------------------
    def _masker_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.masker.train(self.training)
        x = batch.x
        with frozen(self.model):
            m = self._checked(recompute(self.masker, x, batch.mask) if self.masker_checkpoint
                              else self.masker(x, batch.mask), x)
            with subpixel_input_grads(self.model):  # the stem's input gradient in a faster form
                fg, bg = masked_pair_logits(self.model, x, m, fill=self.mask_fill, fn="egl.recipes.align")
        dist_loss = masker_dist_loss(fg, bg, batch.y)
        sp, sm = sparsity(m), smoothness(m)
        total = dist_loss + self.sparsity_weight * sp + self.smooth_weight * sm
        return {"dist": dist_loss, "sparsity": sp, "smooth": sm, "total": total}

    # -- classifier phase ----------------------------------------------------------------------
    def masks(self, batch: Batch) -> Tensor:
        """The masker's masks for ``batch``, detached: masker in eval mode, or with ``mask_mode="batch"``
        while training, in training mode with its running statistics put back afterwards."""
        with frozen(self.masker), torch.no_grad():
            if self.mask_mode == "eval" or not self.training:
                return self._checked(self.masker(batch.x, batch.mask), batch.x)
            saved = [b.detach().clone() for b in self.masker.buffers()]
            self.masker.train()  # batch statistics (frozen() restores the mode on exit)
            try:
                return self._checked(self.masker(batch.x, batch.mask), batch.x)
            finally:
                _restore_buffers(self.masker, saved)

    def _checked(self, m: Any, x: Tensor) -> Tensor:
        """The masker's output, checked where it is made (and named): ``[B, 1, h, w]`` (``[B, h, w]``
        taken) for ``x``'s batch, values in [0, 1] (a deferred check inside a training step). NaN is
        left to the phase's non-finite loss check, which names the term (a NaN pixel in the input
        gives NaN masks: no sigmoid would help)."""
        fn, arg = "egl.recipes.align", f"masker output ({type(self.masker).__name__})"
        m = as_mask(m, fn, arg, check_values=False)
        check_range(torch.nan_to_num(m.detach(), nan=0.0), 0.0, 1.0, fn, arg,
                    "A masker returns soft foreground probabilities: end its forward with torch.sigmoid (or clamp "
                    "into [0, 1])")
        if m.shape[0] != x.shape[0]:
            raise fail(fn, arg, f"one mask per image ({x.shape[0]})", describe(m),
                       "Return masks [B, 1, H, W] for the batch the masker was given")
        return m

    def mixup_together(self) -> bool:
        """Whether the classifier phase explains ``x`` and ``x̃`` in one pass now (``batch_mixup``)."""
        if self.batch_mixup is False or not _plain_mixup(self.regularizer) or self.reg_weight == 0:
            return False
        return self.batch_mixup is True or batchable(self.model)

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.model.train(self.training)
        aligning = step >= self.warmup_steps and self.align_weight > 0
        count = None  # the global count of annotated images, first: a check failing on one rank below
        if aligning and is_distributed() and self.annotated_mean == "annotated" and self.masker.needs_mask:
            if batch.annotated is None:  # another rank's batch may carry flags: every image here counts,
                batch = dataclasses.replace(  # and this rank joins the count's collective as they do
                    batch, annotated=torch.ones(batch.x.shape[0], dtype=torch.bool, device=batch.x.device),
                    annotated_count=batch.x.shape[0])
            count = annotated_count(batch.annotated)  # (leaves no other rank alone in this collective)
        if self.masker.needs_mask and self.align_weight > 0 and batch.mask is None:  # (not only after warm-up)
            raise fail("egl.recipes.align", "batch", f"batches with a 'mask' (masker={self.masker.name!r} reads "
                       "the data's masks)", f"a batch without one at step {step}",
                       "Give batches a 'mask' (dict batches with key 'mask'), or choose a masker that needs "
                       "none ('learned', 'grayscale', 'sam')")
        regularizing = self.regularizer is not None and self.reg_weight > 0
        reg: Tensor | None = None
        if self.mixup_together():
            logits, sal, reg = self._explain_with_mixup(batch)
        elif aligning or regularizing:
            out = self.explainer.explain(batch.x, batch.y, create_graph=True)
            logits, sal = out.logits, out.saliency
        else:
            logits, sal = self._logits(batch.x), None
            check_target_range(batch.y, logits.shape[1], "egl.recipes.align")
        ce = F.cross_entropy(logits, batch.y)
        terms: dict[str, Tensor] = {"ce": ce}
        total = ce
        if aligning:
            assert sal is not None
            terms["align"] = self._align_term(batch, sal, count)
            total = total + self.align_weight * terms["align"]
        if regularizing:
            if reg is not None:
                terms["reg"] = reg
            elif getattr(self.regularizer, "inputs", "mask") == "mask":
                terms["reg"] = self.regularizer(sal)  # a mask penalty applied to the saliency
            else:
                terms["reg"] = self.regularizer(self.explainer, batch.x, batch.y, sal)
            total = total + self.reg_weight * terms["reg"]
        terms["total"] = total
        return terms

    def _explain_with_mixup(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Logits and saliency of ``x`` and the mixup term, from one pass over ``[x; x̃]``."""
        assert isinstance(self.regularizer, MixupConsistency)
        x, y = batch.x, batch.y
        b = x.shape[0]
        x_mixed, beta, partner = self.regularizer.mix(x, y)
        y2 = torch.cat([y, y])
        carry_range(y, y2)
        both = self.explainer.explain(torch.cat([x, x_mixed]), y2, create_graph=True)
        logits, sal = both.logits[:b], both.saliency[:b]
        reg = self.regularizer.from_explanations(sal, both.saliency[b:], both.logits[b:], y, beta, partner).total
        return logits, sal, reg

    def _align_term(self, batch: Batch, sal: Tensor, count: Tensor | None = None) -> Tensor:
        """The alignment loss, called as its ``inputs`` declares (see :class:`egl.losses.AlignmentLoss`)."""
        partial = batch.annotated is not None and self.masker.needs_mask  # the data's masks, some placeholders
        if partial and batch.annotated_count == 0 and not is_distributed():  # (counted on the host: no wait)
            return batch.x.new_zeros((), dtype=torch.float32)  # no annotated image: nothing to compute
        masks = self.masks(batch)
        kind = getattr(self.alignment, "inputs", "saliency")
        if kind == "class_maps":  # signed maps of every class: one more forward pass of the classifier
            layer = getattr(self.explainer, "layer", "auto")
            maps = class_maps(self.model, batch.x, layer=layer, create_graph=True, weighting=self.explainer).saliency
            args: tuple[Any, ...] = (maps, masks)
        elif kind == "batch":  # the loss differentiates the model itself (e.g. RRR)
            args = (self.model, batch.x, masks)
        else:
            args = (sal, masks)
        if partial:
            assert batch.annotated is not None
            return annotated_mean(self.alignment, batch.annotated, *args, fn="egl.recipes.align",
                                  over=self.annotated_mean, global_count=count)
        return self.alignment(*args)


def _plain_mixup(regularizer: Any) -> bool:
    """A :class:`MixupConsistency` whose terms are computed as the base class computes them (a
    subclass that overrides ``terms`` or ``forward`` is called as it is, never batched)."""
    return (isinstance(regularizer, MixupConsistency) and type(regularizer).terms is MixupConsistency.terms
            and type(regularizer).forward is MixupConsistency.forward)


def _check_component(obj: Any, given: Any, arg: str, kinds: tuple[str, ...], default: str, fn: str) -> None:
    """A resolved alignment loss or regularizer: callable, and an ``inputs`` ALIGN knows (a typo
    such as ``"class_map"`` was called as a saliency loss, silently)."""
    if not callable(obj):
        raise fail(fn, arg, f"a registered {arg} name, {{name: ..., kwargs: {{...}}}}, or an instance of one (a "
                   "module to call)", describe(given),
                   f"Pass e.g. {arg}={'bce' if arg == 'alignment' else 'mixup_consistency'!r}, or an instance built "
                   f"with its settings: egl.create({arg!r}, name, **settings)")
    inputs = getattr(obj, "inputs", default)
    if inputs not in kinds:
        what = "an alignment loss" if arg == "alignment" else "a regularizer"
        raise fail(fn, arg, f"{what} whose inputs is one of {list(kinds)}",
                   f"{type(obj).__name__} with inputs={inputs!r}", f"Set the class attribute inputs to one of {list(kinds)}")


@builds(ALIGN)
def align(model: nn.Module, **kwargs: Any) -> ALIGN:
    """Build an :class:`ALIGN` recipe: ``recipes.align(model).fit(loader, steps=1000)``."""
    return ALIGN(model, **kwargs)
