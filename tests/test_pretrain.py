"""ViL-Seg pretraining end to end on a tiny synthetic world: pretrain -> checkpoint -> zero-shot (evaluate and
predict CLIs), exact resume, caption readers (TSV/CSV, folder, WebDataset shards) and the cached SemiVL prior."""

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from semivl_fast import pretrain
from semivl_fast.vilseg.data import (
    build_phrase_vocab,
    expand_shards,
    load_caption_items,
    load_image,
    phrase_key,
    read_caption_table,
    split_phrases,
)

TINY = ["data.world_train=64", "data.world_val=4", "data.world_size=56", "data.global_size=32", "data.local_size=16",
        "data.local_crops=2", "data.batch_size=4", "data.num_workers=0", "model.num_clusters=4",
        "train.warmup_iters=1", "train.tensorboard=false", "train.progress=false", "train.log_every=1",
        "eval.max_images=2"]


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def pretrained_run(world_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("vilseg") / "run"
    result = pretrain.main([*TINY, f"data.root={world_root}", f"train.out_dir={out}", "train.iters=3",
                            "train.tensorboard=true"])
    return out, result


def test_pretrain_checkpoint_and_zero_shot(pretrained_run, world_root, tmp_path):
    from semivl_fast import evaluate, predict
    from semivl_fast.clip import create_clip
    from semivl_fast.training.vilseg.checkpoint import load_vilseg

    out, result = pretrained_run
    assert result["steps"] == 3 and len(result["losses"]) == 3 and result["finite"]
    for name in ("config.yaml", "last.pt", "vilseg.safetensors", "clip.safetensors", "train.log"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    assert set(result["zero_shot"]) == {"vilseg", "maskclip"}
    assert all(0 <= v <= 100 for v in result["zero_shot"].values())
    # the CLIP part loads as a plain open_clip model (SemiVL's VLM initialisation)
    model, cfg = load_vilseg(out)
    clip = create_clip("semivl-tiny", str(out / "clip.safetensors"))
    for k, v in clip.state_dict().items():
        torch.testing.assert_close(v, model.clip.state_dict()[k])
    assert cfg.train.iters == 3 and model.head.num_clusters == 4
    # the evaluate CLI reproduces the pretraining's final zero-shot numbers on the same 2 images
    for method in ("vilseg", "maskclip"):
        res = evaluate.main(["--zero-shot", "--checkpoint", str(out), "--method", method, "--json",
                             "eval.max_images=2"])
        assert res["miou"] == pytest.approx(result["zero_shot"][method], abs=1e-6)
    # any CLIP for the baseline; the background threshold sends everything to class 0 when above every cosine
    res = evaluate.main(["--zero-shot", "--method", "maskclip", "--clip-model", "semivl-tiny", "--pretrained",
                         str(out / "clip.safetensors"), "--bg-thresh", "1.01", "--json", f"data.root={world_root}",
                         "data.world_train=64", "data.world_val=4", "data.world_size=56", "eval.max_images=1"])
    assert res["iou"][1:] == [0.0] * 8
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted(Path(world_root).glob("JPEGImages/val_*.png"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    written = predict.main(["--zero-shot", "--checkpoint", str(out), "--classes", "background,ball,coin,grass",
                            "--input", str(folder), "--output", str(tmp_path / "o")])
    assert len(written) == 2 and all(p.is_file() for p in written)
    with pytest.raises(SystemExit):
        predict.main(["--zero-shot", "--checkpoint", str(out), "--input", str(folder), "--output", "x"])
    with pytest.raises(ValueError, match="clustering head"):
        evaluate.main(["--zero-shot", "--clip-model", "semivl-tiny", "--method", "vilseg"])


def test_resume_continues_with_the_same_losses(world_root, tmp_path, monkeypatch):
    args = [*TINY, f"data.root={world_root}", "train.iters=4", "train.save_every=2", "eval.dataset="]
    full = pretrain.main([*args, f"train.out_dir={tmp_path / 'full'}"])
    calls = {"n": 0}
    real = pretrain.PretrainStep.forward

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(pretrain.PretrainStep, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main([*args, f"train.out_dir={tmp_path / 'cut'}"])
    monkeypatch.setattr(pretrain.PretrainStep, "forward", real)
    resumed = pretrain.main(["--resume", str(tmp_path / "cut")])
    assert resumed["steps"] == 4 and resumed["zero_shot"] == {}
    torch.testing.assert_close(torch.tensor(resumed["losses"]), torch.tensor(full["losses"][2:]), atol=1e-6,
                               rtol=1e-6)


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match=r"model\.dense"):
        pretrain.main(["model.dense=cls"])
    with pytest.raises(ValueError, match="unknown config key"):
        pretrain.main(["model.clusters=3"])
    with pytest.raises(ValueError, match="batch_size"):
        pretrain.main(["data.batch_size=1"])


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def test_caption_sources(tmp_path):
    from semivl_fast.vilseg.data import CaptionDataConfig

    (tmp_path / "img").mkdir()
    for i, c in enumerate(("red", "blue")):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(c))
    (tmp_path / "t.tsv").write_text("image\tcaption\nimg/0.png\ta red thing\nimg/1.png\ta blue thing\n")
    (tmp_path / "t.csv").write_text('img/0.png,"red, very red"\nimg/1.png,blue\n')
    items = read_caption_table(tmp_path / "t.tsv")
    assert [i.caption for i in items] == ["a red thing", "a blue thing"]
    assert load_image(items[1].image).getpixel((0, 0)) == (0, 0, 255)
    assert [i.caption for i in read_caption_table(tmp_path / "t.csv")] == ["red, very red", "blue"]
    # a folder of images with same-stem .txt captions
    (tmp_path / "img" / "0.txt").write_text("red\n")
    folder = load_caption_items(CaptionDataConfig(source=str(tmp_path / "img")))
    assert [(Path(i.image).name, i.caption) for i in folder] == [("0.png", "red")]
    # WebDataset shards: <key>.png + <key>.txt (or .json), read back by offset
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tar:
            for i, (c, cap) in enumerate((("red", "a red square"), ("lime", "a green square"))):
                for ext, data in (("png", _png(c)), ("txt", cap.encode())):
                    info = tarfile.TarInfo(f"s{s}_{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    shards = load_caption_items(CaptionDataConfig(source=str(tmp_path / "shard-{000..001}.tar")))
    assert len(shards) == 4 and shards[1].caption == "a green square"
    assert load_image(shards[1].image).getpixel((3, 3)) == (0, 255, 0)
    assert len(expand_shards(str(tmp_path / "shard-*.tar"))) == 2
    with pytest.raises(FileNotFoundError, match="shard"):
        expand_shards(str(tmp_path / "shard-{000..005}.tar"))
    with pytest.raises(FileNotFoundError, match=r"data\.source"):
        load_caption_items(CaptionDataConfig(source=str(tmp_path / "nothing")))
    (tmp_path / "bad.tsv").write_text("only-one-column\n")
    with pytest.raises(ValueError, match="expected an image path and a caption"):
        read_caption_table(tmp_path / "bad.tsv")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_caption_folder_table_tar_folder_and_json_members(tmp_path):
    from semivl_fast.vilseg.data import CaptionDataConfig

    # a folder holding captions.tsv: the table wins over same-stem .txt files; paths relative to the folder
    table = tmp_path / "table"
    (table / "img").mkdir(parents=True)
    for name, color in (("a", (200, 10, 30)), ("b", (5, 120, 250))):
        (table / "img" / f"{name}.png").write_bytes(_png(color))
    (table / "img" / "a.txt").write_text("ignored: the table is used\n")
    (table / "captions.tsv").write_text("filepath\ttitle\nimg/b.png\tblue sky\nimg/a.png\tred car\n")
    items = load_caption_items(CaptionDataConfig(source=str(table)))
    assert [(Path(i.image).name, i.caption) for i in items] == [("b.png", "blue sky"), ("a.png", "red car")]
    assert Path(items[0].image) == table / "img" / "b.png"
    assert load_image(items[1].image).getpixel((5, 5)) == (200, 10, 30)
    # ... or captions.csv
    csv_folder = tmp_path / "csv"
    csv_folder.mkdir()
    (csv_folder / "x.png").write_bytes(_png((1, 2, 3)))
    (csv_folder / "captions.csv").write_text('x.png,"a dark, small square"\n')
    assert [i.caption for i in load_caption_items(CaptionDataConfig(source=str(csv_folder)))] == [
        "a dark, small square"]
    # a folder of .tar shards (read in name order), captions from .json members ("caption", else "text"); samples
    # without an image, without a caption, or with an empty json caption are skipped; keys may sit in sub-folders
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "b.tar", "w") as tar:
        _add(tar, "part/k0.png", _png((0, 128, 0)))
        _add(tar, "part/k0.json", json.dumps({"caption": "a green square", "url": "http://x"}).encode())
        _add(tar, "part/k1.png", _png((9, 9, 9)))
        _add(tar, "part/k1.json", json.dumps({"caption": "", "width": 20}).encode())  # empty: skipped
        _add(tar, "other/k0.png", _png((250, 250, 0)))  # same key name, other folder: another sample
        _add(tar, "other/k0.json", json.dumps({"text": "a yellow square"}).encode())
        _add(tar, "lonely.txt", b"a caption without an image")
        _add(tar, "blind.png", _png((1, 1, 1)))  # an image without a caption
    with tarfile.open(shards / "a.tar", "w") as tar:
        jpeg = io.BytesIO()
        Image.new("RGB", (20, 16), (40, 50, 60)).save(jpeg, format="JPEG", quality=95)
        _add(tar, "z.jpg", jpeg.getvalue())
        _add(tar, "z.txt", "  a grey café square \n".encode())  # UTF-8, stripped
    (shards / "notes.md").write_text("not a shard")
    items = load_caption_items(CaptionDataConfig(source=str(shards)))
    assert [(Path(i.image.shard).name, i.caption) for i in items] == [
        ("a.tar", "a grey café square"), ("b.tar", "a green square"), ("b.tar", "a yellow square")]
    grey, green, yellow = (load_image(i.image).getpixel((7, 3)) for i in items)
    assert max(abs(a - b) for a, b in zip(grey, (40, 50, 60))) <= 3  # JPEG: lossy
    assert (green, yellow) == ((0, 128, 0), (250, 250, 0))
    assert expand_shards(str(shards)) == [str(shards / "a.tar"), str(shards / "b.tar")]
    # a compressed tar cannot be read by offset: one clear error
    with tarfile.open(tmp_path / "gz.tar", "w:gz") as tar:
        _add(tar, "k.png", _png((0, 0, 0)))
        _add(tar, "k.txt", b"black")
    with pytest.raises(ValueError, match="uncompressed"):
        load_caption_items(CaptionDataConfig(source=str(tmp_path / "gz.tar")))
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        _add(tar, "k.png", _png((0, 0, 0)))
    with pytest.raises(ValueError, match="no \\(image, caption\\) samples"):
        load_caption_items(CaptionDataConfig(source=str(empty)))


def test_phrase_vocabulary_merges_word_orders_and_frames():
    assert split_phrases("a picture of sand with a red brick, a gold coin and a yellow star") == [
        "a picture of sand", "a red brick", "a gold coin", "a yellow star"]
    assert phrase_key("there is a green striped leaf") == phrase_key("a striped green leaf lying") == (
        "green", "leaf", "striped")
    captions = ["a striped green leaf on grass", "there is a green striped leaf on grass",
                "a photo of a green striped leaf on sand", "a gold coin on sand", "a red brick on snow"]
    vocab = build_phrase_vocab(captions, min_count=2)
    # most frequent first (ties by key); the text is the most frequent surface form without frame words
    assert vocab.keys == (("green", "leaf", "striped"), ("grass",), ("sand",))
    assert vocab.texts == ("green striped leaf", "grass", "sand")
    assert vocab.multi_hot("a picture of sand with a striped green leaf").tolist() == [True, False, True]
    assert len(build_phrase_vocab(captions, min_count=1, max_size=2)) == 2


def test_views_share_geometry(world_root):
    from semivl_fast.clip import get_tokenizer
    from semivl_fast.vilseg.data import CaptionDataConfig, CaptionViews

    cfg = CaptionDataConfig(root=world_root, world_train=64, world_val=4, world_size=56, global_size=32,
                            local_size=16, local_crops=3, jitter=0.0)
    items = load_caption_items(cfg)
    vocab = build_phrase_vocab([it.caption for it in items], min_count=2)
    ds = CaptionViews(items, cfg, get_tokenizer("semivl-tiny"), vocab)
    assert len(ds) == 64  # training images only
    v1, v2, flipped, local, boxes, tokens, mentions = ds[0]
    assert mentions.dtype == torch.bool and mentions.shape == (len(vocab),) and mentions.any()
    assert v1.shape == v2.shape == (3, 32, 32) and local.shape == (3, 3, 16, 16) and tokens.shape == (32,)
    assert boxes.shape == (3, 4)
    # without photometric jitter the second view is the first, mirrored when ``flipped``
    torch.testing.assert_close(v2.flip(-1) if flipped else v2, v1)


def test_synthetic_prior_is_made_once_and_resolved(world_root, tmp_path, monkeypatch):
    import subprocess

    from semivl_fast.clip import create_clip
    from semivl_fast.training import prior

    overrides = [*TINY, f"data.root={world_root}", "train.iters=2", "eval.dataset="]
    path = prior.ensure_synthetic_prior(tmp_path, overrides=overrides, quiet=True)
    assert path.is_file() and path.name == "clip.safetensors" and (path.parent / "vilseg.safetensors").is_file()
    assert not list(tmp_path.glob(".*tmp*"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pretrained twice"))
    assert prior.ensure_synthetic_prior(tmp_path, overrides=overrides) == path
    assert prior.prior_dir(tmp_path, overrides=[*overrides, "train.iters=3"]) != path.parent  # new recipe, new key
    assert prior.prior_dir(tmp_path, overrides=[*overrides, "train.log_every=5"]) == path.parent  # logging only
    monkeypatch.setattr(prior, "ensure_synthetic_prior", lambda *a, **k: path)
    assert prior.resolve_pretrained("vilseg:synthetic") == str(path)
    assert prior.resolve_pretrained("openai") == "openai" and prior.resolve_pretrained(None) is None
    with pytest.raises(ValueError, match="unknown ViL-Seg prior"):
        prior.resolve_pretrained("vilseg:coco")
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):  # the library takes tags and files
        create_clip("semivl-tiny", "vilseg:synthetic")


@pytest.mark.slow
def test_two_process_ddp_pretraining(world_root, tmp_path):
    """torchrun-style 2-process gloo run: both ranks step together; rank 0 alone writes the checkpoint."""
    from ddp import run_ddp

    args = [*TINY, f"data.root={world_root}", f"train.out_dir={tmp_path / 'ddp'}", "train.iters=2",
            "data.batch_size=2", "eval.dataset="]
    losses = run_ddp("semivl_fast.pretrain", args)
    assert sorted(losses) == [0, 1]
    assert len(losses[0]) == len(losses[1]) == 2
    assert all(math.isfinite(v) for r in (0, 1) for v in losses[r])
    # each rank contrasts its own shard of the data: different images, different losses
    assert losses[0][0] != losses[1][0]
    assert (tmp_path / "ddp" / "clip.safetensors").is_file() and (tmp_path / "ddp" / "last.pt").is_file()
    # rank 0's checkpoint loads: the resumable state at step 2, and the exported ViL-Seg and CLIP weights
    from semivl_fast.clip import create_clip
    from semivl_fast.training.vilseg.checkpoint import load_state, load_vilseg

    state = load_state(tmp_path / "ddp" / "last.pt")
    assert state["step"] == 2
    model, cfg = load_vilseg(tmp_path / "ddp")
    assert cfg.train.iters == 2 and cfg.data.batch_size == 2 and model.head.num_clusters == 4
    for k, v in model.state_dict().items():  # the plain module's keys (no DDP "module." prefix), trained weights
        torch.testing.assert_close(v, state["model"][k])
    clip = create_clip("semivl-tiny", str(tmp_path / "ddp" / "clip.safetensors"))
    torch.testing.assert_close(clip.logit_scale, model.clip.logit_scale)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["train.amp=bf16"], ["train.compile=true"]], ids=["bf16", "compile"])
def test_pretraining_mixed_precision_and_compile_on_cpu(world_root, tmp_path, extra):
    result = pretrain.main([*TINY, f"data.root={world_root}", f"train.out_dir={tmp_path / 'run'}", "train.iters=2",
                            "eval.dataset=", *extra])
    assert result["steps"] == 2 and result["finite"]


def test_grounding_large_vocabulary_encodes_only_the_mentioned_phrases():
    from semivl_fast.clip import get_tokenizer
    from semivl_fast.training.vilseg.config import LossConfig
    from semivl_fast.vilseg.losses import multi_positive_nce, patch_text_similarity
    from semivl_fast.vilseg.model import ViLSegModelConfig, build_vilseg

    torch.manual_seed(0)
    model = build_vilseg(ViLSegModelConfig(num_clusters=4))
    tokens = get_tokenizer("semivl-tiny")([f"a photo of a {w}" for w in ("ball", "coin", "star", "leaf", "sand")])
    dense = torch.randn(3, 64, 4, 5)
    mentions = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    scale = torch.tensor(10.0)
    small = pretrain.PretrainStep(model, LossConfig(ground_max_text=2), tokens.long())
    used = [0, 3, 4]  # columns any image mentions
    expected = multi_positive_nce(scale * patch_text_similarity(dense, model.encode_text(tokens[used]), 0.1),
                                  mentions[:, used])
    torch.testing.assert_close(small.ground(dense, mentions, scale), expected)
    # a small vocabulary is encoded whole: unmentioned phrases are negatives too
    whole = pretrain.PretrainStep(model, LossConfig(), tokens.long()).ground(dense, mentions, scale)
    assert whole.item() > expected.item()
