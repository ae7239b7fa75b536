"""One rank of tests/integration/test_distributed.py, launched by torchrun on CPU (gloo).

Usage: ``torchrun --nproc_per_node 2 ... _distributed_worker.py OUT_DIR``. Each rank starts
from different weights (seed = rank) and trains on different data; it writes its final
state to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import egl
from egl import recipes
from egl.train import Validation, init_distributed
from egl.train.distributed import average_gradients, rank, world_size


def _recipe() -> recipes.ALIGN:
    torch.manual_seed(rank())  # different initial weights per rank: fit broadcasts rank 0's
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    return recipes.align(model, warmup_steps=1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(100 + rank())  # each rank its own data
    data = TensorDataset(torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 5, (6,), generator=g))
    return DataLoader(data, batch_size=4, shuffle=True)


def _gradient_average() -> dict[str, object]:
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.full((2,), float(rank() + 1))
    b.grad = torch.ones(2) * 4 if rank() == 0 else None  # missing on rank 1: counts as zero
    average_gradients([a, b, c])  # c has no gradient anywhere: stays None
    return {"a": a.grad.tolist(), "b": b.grad.tolist(), "c": c.grad}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    init_distributed()
    assert world_size() == 2
    result = {"grads": _gradient_average()}
    straight = _recipe()
    result["initial_differs"] = rank() != 0 and not torch.equal(
        straight.model.fc.weight, _recipe_rank0_weight())
    straight.fit(_loader(), 4, seed=0, progress=False, log_path=out / "log.jsonl")
    # Killed after 2 steps, resumed on both ranks: same weights as the straight run.
    _recipe().fit(_loader(), 2, seed=0, progress=False, checkpoint_dir=out / "ckpt")
    resumed = _recipe()
    resumed.fit(_loader(), 4, seed=0, progress=False, checkpoint_dir=out / "ckpt", resume=True)
    result["state"] = straight.state_dict()
    result["resumed"] = resumed.state_dict()
    result["nan"] = _nan_on_one_rank()
    result["bad_mask"] = _input_error_on_one_rank("mask")
    result["bad_label"] = _input_error_on_one_rank("label")
    result["overflow"] = _overflow_on_one_rank()
    result["overflow_vs_error"] = _overflow_here_input_error_there()
    result["validation"] = _validation()
    result["clip"] = _clip_after_averaging()
    result["partial"] = _partial_annotation()
    result["group_dro"] = _group_dro()
    result["worst_group"] = _worst_group_validation()
    result["group_dro_bad_label"] = _input_error_on_one_rank("label", "group_dro")
    result["gathered"] = _gathered_penalties()
    result["vrex_bad_label"] = _input_error_on_one_rank("label", "vrex")
    result["gather_failures"] = _gather_failures()
    result["annotated_bad_label"] = _input_error_on_one_rank("label", "align_annotated")
    result["annotated_bad_mask"] = _input_error_on_one_rank("mask", "align_annotated")
    result["flags_on_one_rank"] = _flags_on_one_rank_only()
    torch.save(result, out / f"rank{rank()}.pt")
    torch.distributed.destroy_process_group()


def _validation() -> dict[str, object]:
    """Each rank validates on its own shard (sizes 3 and 5); the counts are summed over ranks."""
    from egl.train import Validation

    g = torch.Generator().manual_seed(200 + rank())
    n = 3 if rank() == 0 else 5
    shard = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g))
    val = Validation(DataLoader(shard, batch_size=2), every=1, select="acc")
    recipe = recipes.erm(timm.create_model("test_resnet", pretrained=False, num_classes=5), lr=0.05)
    recipe.fit(_loader(), 3, seed=0, progress=False, validation=val)
    recipe.eval()
    with torch.no_grad():  # this rank's correct count with the selected weights
        correct = sum(int((recipe.model(x).argmax(1) == y).sum()) for x, y in DataLoader(shard, batch_size=8))
    bad = TensorDataset(torch.randn(2, 3, 32, 32), torch.tensor([0, 7 if rank() == 1 else 1]))
    try:  # a label out of range on rank 1 only: both ranks raise, neither waits in the all-reduce
        recipe.fit(_loader(), 1, seed=0, progress=False, validation=Validation(DataLoader(bad, batch_size=2)))
        error = "no error"
    except egl.InputError as exc:
        error = str(exc)
    return {"records": val.records, "best": val.best, "correct": correct, "state": recipe.state_dict(),
            "error": error}


def _clip_after_averaging() -> dict[str, object]:
    """grad_clip clips the averaged gradient: the logged norm is the same on both ranks (each has
    its own data, so their own gradients' norms differ), and so are the clipped updates."""
    torch.manual_seed(0)
    recipe = recipes.erm(timm.create_model("test_resnet", pretrained=False, num_classes=5))
    opts = {"classifier": torch.optim.SGD(recipe.parameters(), lr=1.0)}
    before = [p.detach().clone() for p in recipe.parameters()]
    rows = recipe.fit(_loader(), 1, seed=0, progress=False, optimizers=opts, grad_clip=1e-3)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(recipe.parameters(), before)]).norm()
    return {"norm": rows[0]["classifier/grad_norm"], "moved": float(moved)}


def _partial_annotation() -> dict[str, object]:
    """annotated_mean over ranks holding 1 and 3 flagged samples of 4: the averaged gradient is that
    of the global batch of 8 (over="batch": the flagged losses' sum / 8; over="annotated": their mean
    over the 4 flagged), each rank computing it for comparison."""
    from egl.losses import BCEAlignmentLoss
    from egl.losses._reduction import annotated_mean

    g = torch.Generator().manual_seed(5)
    logits, masks = torch.randn(8, 1, 4, 4, generator=g), torch.rand(8, 1, 4, 4, generator=g).round()
    flags = torch.tensor([True, False, False, False, True, True, False, True])
    out = {}
    for over in ("batch", "annotated"):
        weight = torch.nn.Parameter(torch.ones(()))
        mine = slice(4 * rank(), 4 * rank() + 4)
        annotated_mean(BCEAlignmentLoss(), flags[mine], torch.sigmoid(weight * logits[mine]), masks[mine],
                       fn="test", over=over).backward()
        average_gradients([weight])
        whole = torch.nn.Parameter(torch.ones(()))
        per = BCEAlignmentLoss(reduction="none")(torch.sigmoid(whole * logits[flags]), masks[flags])
        (per.sum() / (8 if over == "batch" else 4)).backward()
        out[over] = {"averaged": float(weight.grad), "global": float(whole.grad)}
    return out


def _group_dro() -> dict[str, object]:
    """GroupDRO over ranks holding 4 samples each of a global batch of 8 (domain 2 on rank 1 only):
    the averaged gradient and the group weights are those of the global batch, computed by each
    rank for comparison."""
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    d = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])

    def make() -> recipes.GroupDRO:
        torch.manual_seed(0)
        return recipes.group_dro(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)).double(), eta=0.5)

    from unittest import mock

    ranked, whole = make(), make()
    mine = slice(4 * rank(), 4 * rank() + 4)
    for _ in range(2):
        ranked.zero_grad()
        ranked.compute_phase("classifier", (x[mine], y[mine], d[mine]), 0)["total"].backward()
        average_gradients(list(ranked.parameters()))
        whole.zero_grad()
        with mock.patch("egl.train.distributed.is_distributed", return_value=False):  # one process's view
            whole.compute_phase("classifier", (x, y, d), 0)["total"].backward()
    return {"grad": ranked.model[1].weight.grad, "global_grad": whole.model[1].weight.grad,
            "weights": ranked.weights[:3], "global_weights": whole.weights[:3]}


def _gathered_penalties() -> dict[str, dict[str, object]]:
    """V-REx, IRM, CORAL and MMD over ranks holding 4 and 5 samples of a global batch of 9 (domain 2
    on rank 1 only): each rank's averaged gradient and logged terms, and those of one process on the
    global batch, computed by each rank for comparison."""
    from unittest import mock

    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(9, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,), generator=g)
    d = torch.tensor([0, 1, 0, 1, 2, 0, 2, 1, 0])
    mine = slice(0, 4) if rank() == 0 else slice(4, 9)
    builds = {"vrex": lambda m: recipes.vrex(m), "vrex_domain_class": lambda m: recipes.vrex(m, groups="domain_class"),
              "irm": lambda m: recipes.irm(m), "coral": lambda m: recipes.coral(m, classifier="3"),
              "mmd": lambda m: recipes.mmd(m, classifier="3", gammas=[0.1, 1.0])}
    out: dict[str, dict[str, object]] = {}
    for name, build in builds.items():
        def make() -> recipes.Recipe:
            torch.manual_seed(0)
            nn = torch.nn
            return build(nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.Tanh(), nn.Linear(6, 3)).double())

        ranked, whole = make(), make()
        terms = ranked.compute_phase("classifier", (x[mine], y[mine], d[mine]), 0)
        terms["total"].backward()
        average_gradients(list(ranked.parameters()))
        with mock.patch("egl.train.distributed.is_distributed", return_value=False):  # one process's view
            global_terms = whole.compute_phase("classifier", (x, y, d), 0)
            global_terms["total"].backward()
        out[name] = {"grads": [p.grad for p in ranked.parameters()],
                     "global_grads": [p.grad for p in whole.parameters()],
                     "terms": {k: float(v) for k, v in terms.items()},
                     "global_terms": {k: float(v) for k, v in global_terms.items()}}
    return out


def _gather_failures() -> dict[str, str]:
    """Failures around the gather that must stop both ranks, not leave one waiting: a batch of one
    under BatchNorm on rank 1 (torch's ValueError, inside the forward before V-REx's gather); any
    other error on rank 1 (ERM, no gather: the others raise RankFailedError); rows of another dtype."""
    from egl import EGLError
    from egl.train.global_batch import gather_rows

    out = {}
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    n = 4 if rank() == 0 else 1
    try:
        recipes.vrex(model, groups="class").fit([(torch.randn(n, 3, 32, 32), torch.zeros(n, dtype=torch.long))], 1,
                                              seed=0, progress=False)
    except EGLError as e:
        out["batch_of_one"] = f"{type(e).__name__}: {e}"

    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if rank() == 1:
                raise RuntimeError("out of memory (simulated)")
            return self.fc(x.flatten(1))

    try:
        recipes.erm(Broken()).fit([(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.long))], 1, seed=0,
                                  progress=False)
    except Exception as e:
        out["other_error"] = f"{type(e).__name__}: {e}"
    try:
        gather_rows(torch.zeros(2, 3, dtype=torch.float32 if rank() == 0 else torch.float64))
    except EGLError as e:
        out["dtype"] = str(e)
    return out


def _worst_group_validation() -> dict[str, float]:
    """select='worst_group' on shards of 4 images each, with a fixed classifier (class 0 where the
    first pixel is positive): group (0, 0) is right on rank 0's images and wrong on rank 1's,
    group (1, 1) right everywhere. Per rank the worst group is 1.0 and 0.0; gathered, 0.5."""
    first = torch.zeros(3 * 4 * 4)
    first[0] = 1.0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([first, -first]))
    sign = 1.0 if rank() == 0 else -1.0  # rank 1's group (0, 0) images point the wrong way
    x = torch.zeros(4, 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor([sign, sign, -1.0, -1.0])
    y = s = torch.tensor([0, 0, 1, 1])
    val = Validation([{"image": x, "label": y, "shortcut": s}], every=1, select="worst_group")
    train = [(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))]
    recipes.erm(model, lr=0.0).fit(train, 1, seed=0, progress=False, validation=val)  # lr 0: the model stays
    return {"measured": val.records[-1]["worst_group"]}


def _nan_on_one_rank() -> str:
    """Rank 1's batch holds a NaN: both ranks must stop (not rank 0 waiting in the all-reduce)."""
    from egl.recipes import NonFiniteLossError

    recipe = recipes.erm(timm.create_model("test_resnet", pretrained=False, num_classes=5))
    x = torch.randn(4, 3, 32, 32)
    if rank() == 1:
        x[0, 0, 0, 0] = float("nan")
    try:
        recipe.fit([(x, torch.zeros(4, dtype=torch.long))], 1, seed=0, progress=False)
    except NonFiniteLossError as e:
        return str(e)
    return "no error"


def _input_error_on_one_rank(what: str, recipe_name: str = "align") -> str:
    """Rank 1's mask (checked with the losses) or label (checked at once) is out of range: both
    ranks stop with an InputError; rank 0's names rank 1. GroupDRO all-reduces inside its loss:
    the failing rank must still join that collective."""
    from egl import InputError

    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    if recipe_name == "group_dro":
        recipe = recipes.group_dro(model, groups="class")
    elif recipe_name == "vrex":  # gathers the global batch inside its loss
        recipe = recipes.vrex(model, groups="class")
    else:  # align_annotated: the mean over the annotated images of every rank, one all-reduce in the loss
        recipe = recipes.align(model, masker="ground_truth", regularizer=None, warmup_steps=0,
                               annotated_mean="annotated" if recipe_name == "align_annotated" else "batch")
    mask = torch.ones(4, 1, 32, 32)
    y = torch.zeros(4, dtype=torch.long)
    if rank() == 1:
        if what == "mask":
            mask[0, 0, 0, 0] = 2.0
        else:
            y[0] = 9
    try:
        batch = {"image": torch.randn(4, 3, 32, 32), "label": y, "mask": mask}
        if recipe_name == "align_annotated":
            batch["annotated"] = torch.tensor([True, False, True, False])
        recipe.fit([batch], 1, seed=0, progress=False)
    except InputError as e:
        return str(e)
    return "no error"


def _flags_on_one_rank_only() -> dict:
    """annotated_mean="annotated" with rank 0's batch flagged (2 of 4 images) and rank 1's not at all
    (every image counts): rank 1 skipped the count's all-reduce that rank 0 waited in."""
    torch.manual_seed(0)  # the same initial weights on both ranks (the reference is taken before fit)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    recipe = recipes.align(model, masker="ground_truth", regularizer=None, warmup_steps=0,
                           annotated_mean="annotated")
    g = torch.Generator().manual_seed(rank())
    batch = {"image": torch.randn(4, 3, 32, 32, generator=g), "label": torch.arange(4),
             "mask": (torch.rand(4, 1, 32, 32, generator=g) > 0.5).float()}
    if rank() == 0:
        batch["annotated"] = torch.tensor([True, False, True, False])
    import copy

    from egl.losses import bce_alignment

    ref = copy.deepcopy(recipe).train()  # the step's maps (batch statistics, the same batch)
    per = bce_alignment(ref.explainer.explain(batch["image"], batch["label"]).saliency, batch["mask"],
                        reduction="none").detach()
    flags = batch.get("annotated", torch.ones(4, dtype=torch.bool))
    expected = 2 * float(per[flags].sum()) / 6  # world size x this rank's flagged sum / the 2 + 4 flagged
    logs = recipe.fit([batch], 1, seed=0, progress=False)
    return {"align": logs[0]["classifier/align"], "expected": expected, "state": recipe.state_dict()}


def _overflow_on_one_rank() -> dict:
    """float16 loss scaling: rank 1's gradients overflow, so both ranks skip the step."""
    from egl.train import LossScaler

    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    with torch.no_grad():
        model.get_classifier().weight.mul_(1e3)
    recipe = recipes.erm(model)
    before = [p.detach().clone() for p in recipe.parameters()]
    scaler = LossScaler(init_scale=2.0**127 if rank() == 1 else 2.0**10)
    logs = recipe.training_step((torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)), 0,
                                recipe.configure_optimizers(), scalers={"classifier": scaler})
    return {"skipped": logs["classifier/skipped"], "scale": scaler.scale_value,
            "unchanged": all(torch.equal(a, p) for a, p in zip(before, recipe.parameters()))}


def _overflow_here_input_error_there() -> str:
    """Rank 0's gradients overflow, rank 1's mask is out of range: the error wins on both ranks
    (rank 0 must not skip the step and go on while rank 1 stops)."""
    from egl import InputError
    from egl.train import LossScaler

    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    with torch.no_grad():
        model.get_classifier().weight.mul_(1e3)
    recipe = recipes.align(model, masker="ground_truth", regularizer=None, warmup_steps=0)
    mask = torch.ones(4, 1, 32, 32)
    if rank() == 1:
        mask[0, 0, 0, 0] = 2.0
    scaler = LossScaler(init_scale=2.0**127 if rank() == 0 else 2.0**10)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.zeros(4, dtype=torch.long), "mask": mask}
    try:
        recipe.training_step(batch, 0, recipe.configure_optimizers(), scalers={"classifier": scaler})
    except InputError as e:
        return str(e)
    return "no error"


def _recipe_rank0_weight() -> torch.Tensor:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=5).fc.weight


if __name__ == "__main__":
    main(Path(sys.argv[1]))
