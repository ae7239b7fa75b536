"""Data-parallel fit under torchrun: 2 CPU ranks (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("_distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_ranks_train_align_in_lockstep(tmp_path: Path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # Gradient averaging: mean over ranks, a missing gradient counts as zero, none anywhere stays None.
    assert r0["grads"] == r1["grads"] == {"a": [1.5, 1.5], "b": [2.0, 2.0], "c": None}
    assert r1["initial_differs"]  # the ranks really started apart: fit broadcast rank 0's weights
    # A NaN on rank 1 stops both ranks with a clear error (no rank left waiting in an all-reduce).
    assert "loss term 'classifier/ce' is nan at step 0" in r1["nan"]
    assert "a loss term of phase 'classifier' is not finite on rank 1 at step 0" in r0["nan"]
    # An input check failing on rank 1 (deferred: a mask; immediate: a label) stops both ranks
    # with an InputError: rank 1's names the argument, rank 0's names rank 1.
    assert "'mask' expected values in [0.0, 1.0], got values in [1, 2]" in r1["bad_mask"]
    assert "'target' expected class indices in [0, 4]" in r1["bad_label"]
    # float16 loss scaling: rank 1's gradients overflow; both ranks skip the step and back off.
    assert r0["overflow"] == {"skipped": 1.0, "scale": 2.0**9, "unchanged": True}
    assert r1["overflow"] == {"skipped": 1.0, "scale": 2.0**126, "unchanged": True}
    assert "'mask' expected values in [0.0, 1.0]" in r1["overflow_vs_error"]
    assert "failed input check of phase 'classifier' on rank 1" in r0["overflow_vs_error"]
    for key in ("bad_mask", "bad_label"):
        assert "'batch' expected inputs that pass every check on every rank, got a failed input check of " \
               "phase 'classifier' on rank 1 at step 0" in r0[key], r0[key]
    # Partially annotated batches (1 and 3 flagged images of 4): the global batch's term, either mean.
    for r in (r0, r1):
        for over in ("batch", "annotated"):
            assert r["partial"][over]["averaged"] == pytest.approx(r["partial"][over]["global"], rel=1e-5)
    # GroupDRO: group sums and counts all-reduced: the global batch's weights and gradient on both ranks.
    for r in (r0, r1):
        torch.testing.assert_close(r["group_dro"]["grad"], r["group_dro"]["global_grad"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r["group_dro"]["weights"], r["group_dro"]["global_weights"], rtol=1e-6, atol=0)
    # V-REx, IRM, CORAL, MMD: the rows of both ranks (4 and 5 samples) gathered inside the loss: every rank
    # logs the global batch's terms, and the averaged gradient is the global batch's.
    for r in (r0, r1):
        for name, got in r["gathered"].items():
            assert got["terms"] == pytest.approx(got["global_terms"], rel=1e-9, abs=1e-12), name
            assert got["terms"]["penalty"] > 0, name
            for mine, whole in zip(got["grads"], got["global_grads"]):
                torch.testing.assert_close(mine, whole, rtol=1e-9, atol=1e-12, msg=name)
    assert "expected class indices in [0, 4]" in r1["vrex_bad_label"], r1["vrex_bad_label"]
    assert "a failed input check on rank 1 before the global batch was gathered" in r0["vrex_bad_label"]
    # A batch of one under BatchNorm on rank 1 (torch's ValueError inside the forward, before V-REx's gather), any
    # other error on rank 1 (RankFailedError on rank 0), rows of another dtype: both ranks stop, none waits.
    f0, f1 = r0["gather_failures"], r1["gather_failures"]
    assert f1["batch_of_one"].startswith("InputError") and "at least 2 images" in f1["batch_of_one"]
    assert "a failed input check on rank 1 before the global batch was gathered" in f0["batch_of_one"]
    assert f1["other_error"] == "RuntimeError: out of memory (simulated)"
    assert f0["other_error"].startswith("RankFailedError") and "rank 1 failed while computing" in f0["other_error"]
    assert all("'tensors' expected tensors of one dtype and trailing shape on every rank, got other dtypes or "
               "shapes on rank" in f["dtype"] for f in (f0, f1))
    # A bad label or mask on rank 1 with a collective inside the loss (GroupDRO's group sums; ALIGN's count of
    # annotated images, taken first): both ranks stop with an InputError, none waits alone in the collective.
    for key in ("group_dro_bad_label", "annotated_bad_label", "annotated_bad_mask"):
        assert "expected class indices in [0, 4]" in r1[key] or "'mask' expected values in" in r1[key], r1[key]
        assert "failed input check of phase 'classifier' on rank 1" in r0[key], r0[key]
    # annotated_mean="annotated" with flags on rank 0's batch only: rank 1's images all count, and it
    # joins the count's all-reduce (it skipped it, leaving rank 0 waiting); the ranks stay in lockstep.
    f0, f1 = r0["flags_on_one_rank"], r1["flags_on_one_rank"]
    assert f0["align"] == pytest.approx(f0["expected"], rel=1e-4) and f1["align"] == pytest.approx(f1["expected"],
                                                                                                  rel=1e-4)
    assert all(torch.equal(f0["state"][k], f1["state"][k]) for k in f0["state"])
    # Worst-group selection: the groups' counts gathered over ranks, the measurement of all 8 images.
    assert r0["worst_group"]["measured"] == r1["worst_group"]["measured"] == 0.5  # (1.0 and 0.0 alone)
    # Validation: each rank its shard, the counts summed; both ranks select the same step and weights.
    v0, v1 = r0["validation"], r1["validation"]
    assert v0["records"] == v1["records"] and len(v0["records"]) == 3 and v0["best"] == v1["best"]
    assert v0["best"]["acc"] == pytest.approx((v0["correct"] + v1["correct"]) / 8)
    assert all(torch.equal(v0["state"][k], v1["state"][k]) for k in v0["state"])
    assert "'loader's labels' expected class indices in [0, 4]" in v1["error"]
    assert "'loader' expected validation batches that pass every check on every rank, got a failed check on " \
           "rank 1 after step 0" in v0["error"], v0["error"]
    # grad_clip: clipped after the averaging (same norm on both ranks), the update's norm is lr * max_norm.
    assert r0["clip"]["norm"] == r1["clip"]["norm"] > 1e-3
    assert r0["clip"]["moved"] == pytest.approx(1e-3, rel=1e-3) and r1["clip"]["moved"] == pytest.approx(1e-3, rel=1e-3)
    for key in ("state", "resumed"):
        assert r0[key].keys() == r1[key].keys()
        assert all(torch.equal(r0[key][k], r1[key][k]) for k in r0[key]), key  # parameters and buffers
    assert all(torch.equal(r0["state"][k], r0["resumed"][k]) for k in r0["state"])  # resume is exact here too
    # Only rank 0 logged: one header and four steps.
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["world_size"] == 2
    assert [row["step"] for row in lines[1:]] == [0, 1, 2, 3]
    ckpt = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
