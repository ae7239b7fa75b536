"""Re-score the background swap of every finished run of /tmp/seeds/out with the current egl code
(the experiment ran with a snapshot taken before the review's fixes): rows like results.jsonl's."""
import json, sys
from pathlib import Path

import torch

from egl.experiments.evaluate import evaluate
from egl.experiments.models import build_model
from egl.experiments.sources import evaluation_source

out = Path(sys.argv[1])
header = json.loads((out / "results.jsonl").read_text().splitlines()[0])
cfg = header["config"]
source = evaluation_source(cfg["data"])
tests = source.test_sets(None)
flags = {(r["method"], r["train"], r["seed"], r["split"]): (r["in_distribution"], r["acc"])
         for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()[1:]) if "event" not in r}
rows = []
for ckpt_dir in sorted((out / "checkpoints").iterdir()):
    ck = ckpt_dir / "last.pt"
    if not (ckpt_dir / "trained.json").is_file():
        continue
    c = torch.load(ck, weights_only=False, map_location="cpu")
    if c["step"] < cfg["train"]["steps"]:
        continue
    method, train, seed = ckpt_dir.name.rsplit("-", 2)
    model = build_model(cfg["model"], source.num_classes)
    model.load_state_dict({k[len("model."):]: v for k, v in c["recipe"].items() if k.startswith("model.")})
    model.eval()
    if (method, train, int(seed[1:]), next(iter(tests))) not in flags:
        continue  # (not evaluated yet)
    for split, ds in tests.items():
        r = evaluate(model, ds, batch_size=256, explain_samples=0, background_swap=True)
        flag, acc = flags[(method, train, int(seed[1:]), split)]
        assert abs(acc - r["acc"]) < 1e-6, (method, seed, split, acc, r["acc"])  # the same model as the run's
        rows.append({"method": method, "train": train, "seed": int(seed[1:]), "split": split,
                     "in_distribution": flag,
                     **{k: r[k] for k in ("acc", "bg_fg", "bg_same", "bg_rand", "bg_gap", "bg_follow", "bg_n")}})
        print(json.dumps(rows[-1]), flush=True)
(out.parent / "post" / "bgswap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"event": "start"}, *rows]))
