"""The scripts in examples/ run at toy size and return what they print."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
from _helpers import domain_tree

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = ["--steps", "3", "--arch", "test_resnet", "--train-per-domain", "16", "--test-per-split", "20",
        "--batch-size", "8"]

pytestmark = pytest.mark.filterwarnings("ignore:egl.experiments. method .* but the run has train.steps")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path / "cache"))


def test_align_on_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _load("align_on_synthetic").main([*TINY, "--explain-samples", "4", "--out", str(tmp_path / "run")])
    assert set(results) == {"erm", "align"} and set(results["align"]) == {"test_id", "random", "flipped", "novel"}
    assert all(0 <= r["acc"] <= 1 for split in results.values() for r in split.values())
    assert (tmp_path / "run" / "case_study.png").is_file() and (tmp_path / "run" / "align.jsonl").is_file()
    assert "align: kept the weights after" in capsys.readouterr().out


def test_masker_ablation(tmp_path: Path) -> None:
    from _helpers import tiny_sam

    tiny_sam().save_pretrained(tmp_path / "sam")  # a local SAM folder: the m-SAM row, no download
    results = _load("masker_ablation").main([*TINY, "--sam", str(tmp_path / "sam")])
    assert list(results) == ["learned (ALIGN)", "grayscale (m-Gray)", "none (w/o EG)", "ground truth", "SAM (m-SAM)"]
    assert all(0 <= r["flipped"] <= 1 and not math.isnan(r["shortcut"]) for r in results.values())


def test_explainer_ablation() -> None:
    results = _load("explainer_ablation").main(TINY)
    assert list(results) == ["none", "grad_cam", "layer_cam", "grad_cam_plus_plus", "input_gradient"]
    assert all(0 <= r["flipped"] <= 1 and 0 <= r["energy"] <= 1 for r in results.values())


def test_leave_one_domain_out(tmp_path: Path) -> None:
    root = domain_tree(tmp_path / "data", domains=("A", "B", "C"))
    args = ["--root", str(root), "--out", str(tmp_path / "loo"), "--arch", "test_resnet", "--image-size", "32",
            "--steps", "2", "--explain-samples", "4",
            "--batch-size", "8"]
    rows = _load("leave_one_domain_out").main(args)
    assert {(r["train"], r["split"], r["in_distribution"]) for r in rows} == {
        (f"all-but-{held}", split, split != held) for held in "ABC" for split in "ABC"} and len(rows) == 18
    assert all("val_acc" in r for r in rows)
    assert "| ID | OOD |" in (tmp_path / "loo" / "tables.md").read_text()
