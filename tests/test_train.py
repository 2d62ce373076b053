"""End-to-end training on a tiny synthetic world: resume, DDP equivalence, AMP/compile, the baseline, evaluation."""

import sys
from pathlib import Path

import pytest
import torch

from semivl_fast import train
from semivl_fast.training.checkpoint import load_trained_model
from semivl_fast.training.config import load_config

from ddp import run_ddp

TINY = ["model.clip_model=semivl-tiny", "model.pretrained=null", "model.image_size=48", "model.guidance_layers=0,2",
        "model.decoder.embed_dim=64", "model.decoder.channels=32", "model.decoder.text_channels=32",
        "model.decoder.ffn_channels=64", "model.decoder.aspp_rates=1,2,3", "model.decoder.up_channels=32,16",
        "model.decoder.skip_channels=8,8", "data.crop_size=48", "data.batch_size=2", "data.num_workers=0",
        "data.world_train=64", "data.world_val=4", "data.world_size=56", "data.split=8",
        "train.tensorboard=false", "train.progress=false", "train.log_every=1", "eval.mode=whole"]


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world"))


def _args(world_root, out_dir, *extra):
    return [*TINY, f"data.root={world_root}", f"model.text_cache_dir={out_dir}/text", f"train.out_dir={out_dir}",
            *extra]


def test_every_recipe_config_parses():
    from semivl_fast.training.config import RECIPES
    from semivl_fast.training.vilseg.config import load_pretrain_config

    configs = sorted(RECIPES.rglob("*.yaml"))
    assert len(configs) >= 22
    for path in configs:
        if path.name.startswith("vilseg"):  # ViL-Seg pretraining recipes
            assert load_pretrain_config(path).train.iters > 0
            continue
        cfg = load_config(path)
        assert cfg.data.dataset in ("synthetic", "voc", "coco", "ade", "cityscapes")


def test_train_evaluate_and_reload(world_root, tmp_path):
    """Trains under bf16 autocast; its evaluation computes in fp32, so evaluate.main gives the same mIoU."""
    out = tmp_path / "run"
    result = train.main(_args(world_root, out, "train.iters=3", "eval.every=3", "train.amp=bf16"))
    assert result["steps"] == 3 and len(result["losses"]) == 3
    assert 0 <= result["miou"] <= 100
    for name in ("config.yaml", "last.pt", "model.safetensors", "train.log"):
        assert (out / name).is_file(), name
    log = (out / "train.log").read_text()  # the run says what it ran: versions, build, the face of every op
    assert "torch " + torch.__version__ in log and "ops on cpu: cost_volume -> cpp" in log
    model, cfg = load_trained_model(out)
    assert cfg.train.iters == 3 and model.num_classes == 9
    from semivl_fast import evaluate

    res = evaluate.main(["--checkpoint", str(out), "--json", f"data.root={world_root}"])
    assert res["miou"] == pytest.approx(result["miou"], abs=1e-6)


def test_resume_continues_with_the_same_losses(world_root, tmp_path, monkeypatch):
    full = train.main(_args(world_root, tmp_path / "full", "train.iters=4", "train.save_every=2", "eval.every=100"))
    calls = {"n": 0}
    real_step = train.semi_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "semi_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(_args(world_root, tmp_path / "cut", "train.iters=4", "train.save_every=2", "eval.every=100"))
    monkeypatch.setattr(train, "semi_step", real_step)
    resumed = train.main(["--resume", str(tmp_path / "cut")])
    assert resumed["steps"] == 4
    torch.testing.assert_close(torch.tensor(resumed["losses"]), torch.tensor(full["losses"][2:]), atol=1e-6,
                               rtol=1e-6)


def test_supervised_baseline(world_root, tmp_path):
    result = train.main(_args(world_root, tmp_path / "sup", "train.semi=false", "train.iters=2", "eval.every=2"))
    assert result["steps"] == 2 and result["miou"] is not None


def test_same_partner_visits_the_same_images_with_independent_augmentations(tmp_path):
    """mix_partner=same (the reference): loader_u's order, its own augmentation seed."""
    from torch.utils.data import Dataset

    from semivl_fast.training.data import make_loader, set_epoch

    class Draws(Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return i, torch.rand(())  # the index and one random "augmentation"

    main = make_loader(Draws(), 3, seed=1, rank=0, world=1, workers=0)
    same = make_loader(Draws(), 3, seed=1, rank=0, world=1, workers=0, aug_seed=2)
    shuffled = make_loader(Draws(), 3, seed=2, rank=0, world=1, workers=0, aug_seed=2)

    def epoch(loader):
        set_epoch(loader, 1)
        batches = list(loader)
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    (i_main, a_main), (i_same, a_same), (i_shuf, _) = epoch(main), epoch(same), epoch(shuffled)
    assert torch.equal(i_main, i_same) and not torch.equal(i_main, i_shuf)
    assert not torch.isclose(a_main, a_same).any()
    with pytest.raises(ValueError, match="mix_partner"):
        train.main(["train.mix_partner=shifted", f"train.out_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(world_root, tmp_path):
    """2 processes x batch 2 (gloo) == 1 process x batch 4: the same global batches give the same global losses.

    Each process's logged loss is its share of the global mean (losses are normalised by the global pixel count),
    so the mean over the processes must equal the single process's loss at every step. (Weights are not compared:
    Adam's first steps are sign-like, so float summation order flips the update of gradients that are ~0.)
    """
    common = ["train.iters=3", "train.use_fp=false", "eval.every=100"]
    single = train.main(_args(world_root, tmp_path / "one", *common, "data.batch_size=4"))
    per_rank = run_ddp("semivl_fast.train", _args(world_root, tmp_path / "two", *common, "data.batch_size=2"))
    ddp = (torch.tensor(per_rank[0]) + torch.tensor(per_rank[1])) / 2
    torch.testing.assert_close(ddp, torch.tensor(single["losses"]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["train.amp=bf16"], ["train.compile=true"]], ids=["bf16", "compile"])
def test_mixed_precision_and_compile_on_cpu(world_root, tmp_path, extra):
    result = train.main(_args(world_root, tmp_path / "run", "train.iters=2", "eval.every=2", *extra))
    assert all(torch.isfinite(torch.tensor(result["losses"])))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("recipe", ["voc/92", "coco/1_512", "ade/1_128", "cityscapes/1_16"])
def test_dataset_recipe_runs_on_fixture_data(recipe, tmp_path):
    """Each dataset's recipe for a few iterations on a fixture folder in that dataset's layout (tiny model)."""

    from semivl_fast.data import get_spec, write_split

    from layouts import make_layout

    dataset, split = recipe.split("/")
    root, split_dir = tmp_path / "data", tmp_path / "splits"
    pairs = make_layout(root, dataset, n=6, hw=(60, 76))
    write_split(split_dir / dataset / split / "labeled.txt", pairs[:2])
    write_split(split_dir / dataset / split / "unlabeled.txt", pairs[2:])
    write_split(split_dir / dataset / "val.txt", pairs[4:])
    config = recipe  # a recipe name; test_recipe_names_and_files covers file paths
    extra = ["model.guidance_layers=2", "model.decoder.skip_channels=8,8"] if dataset == "cityscapes" else []
    args = [a for a in TINY if not a.startswith(("data.world", "data.split=", "eval.mode"))]
    result = train.main(["--config", config, *args, *extra, f"data.root={root}", f"data.split_dir={split_dir}",
                         f"train.out_dir={tmp_path / 'run'}", f"model.text_cache_dir={tmp_path / 'text'}",
                         "data.batch_size=1", "train.iters=2", "eval.every=2", "model.pretrained=null"])
    assert result["steps"] == 2 and len(result["iou"]) == get_spec(dataset).num_classes


def test_predict_writes_overlays_for_any_classes(world_root, tmp_path):
    from PIL import Image

    from semivl_fast import predict

    out = tmp_path / "run"
    train.main(_args(world_root, out, "train.iters=1", "eval.every=1", "train.tensorboard=true"))
    assert any((out / "tb").iterdir()), "no TensorBoard events written"
    images = sorted((Path(world_root)).rglob("JPEGImages/*.png"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    written = predict.main(["--checkpoint", str(out), "--input", str(folder), "--output", str(tmp_path / "o1")])
    assert len(written) == 2
    width = Image.open(written[0]).size[0]
    assert width > Image.open(images[0]).size[0], "legend missing"
    written = predict.main(["--checkpoint", str(out / "model.safetensors"), "--input", str(images[0]), "--output",
                            str(tmp_path / "o2"), "--classes", "ball,coin,grass"])
    assert len(written) == 1 and written[0].is_file()
