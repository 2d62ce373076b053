"""The experiment scripts on a tiny world: semi-vs-supervised (split drawing, result merging), pseudo-label quality."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_train import _args

from semivl_fast import train
from semivl_fast.data.splits import read_split

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world"))


def test_semi_vs_supervised_draws_missing_splits_and_merges_results(world_root, tmp_path, monkeypatch):
    svs = _load("semi_vs_supervised")
    monkeypatch.setattr(svs, "ROOT", tmp_path)  # results/ under tmp_path
    results = tmp_path / "results" / "semi_vs_supervised_2it.json"
    results.parent.mkdir()
    earlier = {"0": {"supervised": 1.0, "semivl": 2.0, "overrides": [], "commit": "abc"}}
    results.write_text(json.dumps({"iters": 2, "results": {"16": earlier}}))
    overrides = [*_args(world_root, tmp_path / "unused")[:-1], "eval.max_images=2"]  # train.out_dir: per run
    out = tmp_path / "runs"
    got = svs.main(["--labels", "4", "8", "--iters", "2", "--seeds", "0", "--out", str(out), *overrides])

    assert set(got) == {"4", "8"}
    for k in ("4", "8"):
        r = got[k]["0"]
        assert 0 <= r["supervised"] <= 100 and 0 <= r["semivl"] <= 100 and r["overrides"] == overrides
        assert (out / f"semivl-k{k}-s0" / "model.safetensors").is_file()
    saved = json.loads(results.read_text())["results"]
    assert list(saved) == ["4", "8", "16"] and saved["16"] == earlier  # merged, sorted by k
    # the world has no k=4 list: it is drawn with the world's seed, so it is the first 4 of the world's k=8 list
    world_lists = Path(world_root)
    k8 = read_split(next(world_lists.rglob("splits/synthetic/8/labeled.txt")))
    k4 = read_split(out / "splits" / "synthetic" / "4" / "labeled.txt")
    assert k4 == k8[:4]
    assert len(read_split(out / "splits" / "synthetic" / "4" / "unlabeled.txt")) == len(k8) + len(
        read_split(next(world_lists.rglob("splits/synthetic/8/unlabeled.txt")))) - 4

    svs.main(["--labels", "8", "--iters", "2", "--seeds", "1", "--out", str(out), "--supervised-only", *overrides])
    saved = json.loads(results.read_text())["results"]  # a new seed pools into the same k
    assert list(saved["8"]) == ["0", "1"] and "semivl" not in saved["8"]["1"] and "semivl" in saved["8"]["0"]
    svs.main(["--labels", "8", "--iters", "2", "--supervised-only", "--tag", "variant", "--out", str(out / "v"),
              *overrides])  # a variant gets its own results file
    assert list(json.loads((results.parent / "semi_vs_supervised_2it_variant.json").read_text())["results"]) == ["8"]
    with pytest.raises(ValueError, match="its own --tag"):  # other overrides cannot pool with recorded seeds
        svs.main(["--labels", "8", "--iters", "2", "--seeds", "2", "--out", str(out), *overrides, "train.lr=1e-3"])


def test_semi_vs_supervised_table():
    svs = _load("semi_vs_supervised")
    runs = {"0": {"supervised": 40.0, "semivl": 45.0}, "1": {"supervised": 42.0, "semivl": 41.0},
            "2": {"supervised": 44.0}}
    row = svs.table({"4": runs}, [4]).splitlines()[-1]
    # supervised over the 3 seeds: 42 ± 2; SemiVL and the gains over the 2 paired seeds: 43 ± 2.8, +2 ± 4.2
    assert row == "| 4 | 0 1 2 | 42.0 ± 2.0 | 43.0 ± 2.8 | +2.0 ± 4.2 | 1/2 |"


def test_pseudo_label_score_on_a_hand_made_image():
    plq = _load("pseudo_label_quality")
    probs = torch.tensor([[[0.97, 0.40], [0.10, 0.02]],  # class 0
                          [[0.03, 0.60], [0.90, 0.98]]])  # class 1; (2, 2, 2)
    mask = torch.tensor([[0, 0], [1, 255]])
    counts = plq.score(probs, mask, 0.9, 2)
    # labels [[0, 1], [1, 1]]; valid: 3 pixels; kept (conf >= 0.9, valid): (0,0) and (1,0), both right
    assert int(counts["valid"]) == 3 and int(counts["kept"]) == 2 and int(counts["kept_right"]) == 2
    assert int(counts["right"]) == 2
    r = plq.summarise(counts)
    assert r["coverage"] == pytest.approx(200 / 3) and r["kept_accuracy"] == pytest.approx(100.0)
    assert r["accuracy"] == pytest.approx(200 / 3)
    # IoU: class 0 = 1 / 2 (pred {(0,0)}, true {(0,0), (0,1)}), class 1 = 1 / 2 (pred {(0,1), (1,0)}, true {(1,0)})
    assert r["miou"] == pytest.approx(50.0)


def test_pseudo_label_quality_on_a_trained_run(world_root, tmp_path):
    plq = _load("pseudo_label_quality")
    out = tmp_path / "run"
    train.main(_args(world_root, out, "train.iters=2", "eval.every=2"))
    result = plq.main([str(out), "--images", "3"])
    assert set(result) == {"student", "clip"}
    for r in result.values():
        assert all(0 <= v <= 100 for v in r.values())
    assert json.loads((out / "pseudo_label_quality.json").read_text()) == result
