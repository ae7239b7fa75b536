"""ERM against ALIGN on egl's synthetic shortcut benchmark, with the library's parts in plain code.

Each model trains on the two training domains (where the background predicts the digit 90 % and
80 % of the time), keeps its weights of best validation accuracy, and is scored in distribution
(``test_id``) and out of it (``random``/``flipped``/``novel`` backgrounds): accuracy, shortcut
rate, sufficiency / comprehensiveness and the share of Grad-CAM inside the digit. A PNG shows
each model's Grad-CAM on the same images.

    python examples/align_on_synthetic.py                        # 600 steps each, ~8 min on 2 CPU cores
    python examples/align_on_synthetic.py --steps 2000 --device cuda --out runs/example
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader

from egl import recipes
from egl.data import SyntheticConfig, SyntheticShortcuts
from egl.experiments import evaluate
from egl.experiments.figures import case_study
from egl.train import Validation

SPLITS = ("test_id", "random", "flipped", "novel")


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--arch", default="test_resnet", help="any timm architecture (random weights)")
    p.add_argument("--train-per-domain", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--test-per-split", type=int, default=500)
    p.add_argument("--explain-samples", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/align_on_synthetic")
    args = p.parse_args(argv)

    data = SyntheticConfig(train_per_domain=args.train_per_domain, val_per_domain=args.train_per_domain // 5,
                           test_per_split=args.test_per_split)
    train = SyntheticShortcuts("train", data)
    methods = {"erm": lambda m: recipes.erm(m, lr=1e-3),
               "align": lambda m: recipes.align(m, lr=1e-3, warmup_steps=min(100, args.steps // 6))}
    out = Path(args.out)
    results, models = {}, {}
    for name, make in methods.items():
        torch.manual_seed(0)
        model = timm.create_model(args.arch, num_classes=5, output_stride=16)  # 4x4 Grad-CAM maps at 64 px
        recipe = make(model).to(args.device)
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        val = Validation(DataLoader(SyntheticShortcuts("val", data), batch_size=256), select="acc")
        recipe.fit(loader, args.steps, seed=0, validation=val, log_path=out / f"{name}.jsonl", progress=False,
                   device=args.device)
        print(f"{name}: kept the weights after {val.best['step'] + 1} steps "
              f"(validation accuracy {100 * val.best['acc']:.1f} %)")
        results[name] = {split: evaluate(recipe.model, SyntheticShortcuts(split, data), device=args.device,
                                         explain_samples=args.explain_samples) for split in SPLITS}
        models[name] = recipe.model.cpu()

    print("\n| method | " + " | ".join(f"acc {s}" for s in SPLITS) + " | shortcut, flipped | EPG, test_id |")
    print("|---" * (len(SPLITS) + 3) + "|")
    for name, r in results.items():
        accs = " | ".join(f"{100 * r[s]['acc']:.1f}" for s in SPLITS)
        print(f"| {name} | {accs} | {100 * r['flipped']['shortcut']:.1f} | {100 * r['test_id']['energy']:.1f} |")
    flipped = SyntheticShortcuts("flipped", data)
    items = [flipped[i] for i in range(6)]
    png = case_study(models, torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items]),
                     out / "case_study.png")
    print(f"Grad-CAM of each model: {png}")
    return results


if __name__ == "__main__":
    main()
