"""Insertion curves' starting points (blurred image) and areas per baseline, ERM vs ALIGN, OOD splits."""
import json, sys
import torch
from egl.experiments.commands import load_model
from egl.experiments.sources import load_source
from egl.explainers import grad_cam
from egl.metrics import insertion, deletion

out = {}
for name in ("erm", "align_gt_energy"):
    model, ckpt = load_model(f"/tmp/ins/{name}/model.pt")
    source = load_source(ckpt["config"]["data"])
    for split in ("random", "flipped", "novel"):
        ds = source.tests[split]
        x = torch.stack([ds[i]["image"] for i in range(128)])
        sal = grad_cam(model, x)
        row = {}
        for base in ("blur", "mean", "zero"):
            r = insertion(model, x, sal, steps=16, baseline=base)
            row[f"ins_{base}"] = float(r.auc)
            row[f"start_{base}"] = float(r.curve[:, 0].mean())
        row["del_zero"] = float(deletion(model, x, sal, steps=16).auc)
        out[f"{name}/{split}"] = row
        print(name, split, {k: round(v, 3) for k, v in row.items()}, flush=True)
json.dump(out, open("/tmp/ins/start.json", "w"), indent=1)
