"""Text guidance: class sets, prompt templates, concept-max / concept-avg embeddings and their disk cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semivl_fast.clip import create_clip, get_tokenizer
from semivl_fast.ops import concept_max
from semivl_fast.text import (
    IMAGENET80,
    ClassSet,
    TextEmbeddings,
    build_text_embeddings,
    cache_key,
    encode_texts,
    get_templates,
    load_class_set,
    normalize_mode,
)
from semivl_fast.text import embeddings as emb_mod

SMALL_YAML = """\
name: pets
classes: [background, cat, dog]
class_definitions:
  background: [background, wall, floor]
  dog: [dog, puppy]
"""


@pytest.fixture(scope="module")
def tiny(tiny_clip_file):
    name, path = tiny_clip_file
    return name, path, create_clip(name, pretrained=path), get_tokenizer(name)


@pytest.fixture
def pets(tmp_path):
    f = tmp_path / "pets.yaml"
    f.write_text(SMALL_YAML)
    return load_class_set(f)


# ---------------------------------------------------------------- class sets


@pytest.mark.parametrize("name,classes,concepts", [("voc", 21, 98), ("coco", 81, 81), ("ade", 150, 150),
                                                    ("cityscapes", 19, 54)])
def test_builtin_counts(name, classes, concepts):
    cs = load_class_set(name)
    assert (cs.name, cs.num_classes, cs.num_concepts) == (name, classes, concepts)
    assert cs.has_definitions == (name in ("voc", "cityscapes"))
    texts, groups = cs.rows("max")
    assert len(texts) == concepts and groups.dtype == torch.int64
    assert torch.equal(torch.bincount(groups, minlength=classes), torch.tensor([len(c) for c in cs.concepts]))


def test_builtin_exact_strings():
    voc, ade, city, coco = (load_class_set(n) for n in ("VOC", "ade", "cityscapes", "coco"))
    assert voc.classes[0] == "background" and voc.classes[20] == "tvmonitor" and len(voc.concepts[0]) == 45
    assert voc.concepts[0][38] == "wolve" and voc.concepts[0][-1] == "vehicle interior"
    assert voc.concepts[11] == ("dining table", "table for eating at")
    assert voc.concepts[20] == ("tv", "monitor", "standalone screen")
    assert ade.classes[7] == "bed " and ade.classes[149] == "flag" and ade.classes[138] == "ashcan"
    assert city.concepts[2][1] == "skyscaper"
    assert city.concepts[3] == ("individual standing wall, which is not part of a building",)
    assert coco.classes[0] == "background" and coco.classes[80] == "toothbrush" and coco.concepts[5] == ("airplane",)
    # reference row order for "max": classes in order, each class's concepts in order
    texts, groups = voc.rows("max")
    assert texts[:3] == ["background", "bed", "building"] and texts[45] == "aeroplane" and groups[45] == 1
    texts, groups = voc.rows("single")
    assert texts == list(voc.classes) and torch.equal(groups, torch.arange(21))


def test_yaml_txt_comma_and_list(tmp_path, pets):
    assert pets.name == "pets" and pets.classes == ("background", "cat", "dog")
    assert pets.concepts == (("background", "wall", "floor"), ("cat",), ("dog", "puppy"))
    assert pets.rows("avg")[0] == ["background", "wall", "floor", "cat", "dog", "puppy"]
    txt = tmp_path / "mine.txt"
    txt.write_text("# my classes\nbackground\n\n  cat  \n# dog is next\ndog\n")
    cs = load_class_set(str(txt))
    assert cs.name == "mine" and cs.classes == ("background", "cat", "dog") and cs.num_concepts == 3
    assert load_class_set("background, cat,dog").classes == ("background", "cat", "dog")
    assert load_class_set(["a", "b"]).concepts == (("a",), ("b",))
    assert load_class_set(pets) is pets
    nameless = tmp_path / "nameless.yml"
    nameless.write_text("classes: [a, b]\n")
    assert load_class_set(nameless).name == "nameless"


@pytest.mark.parametrize("text,needle", [
    ("classes: [a, b, a]\n", "duplicate class name(s) ['a']"),
    ("classes: [a, b]\nclass_definitions:\n  c: [x]\n", "unknown class(es) ['c']"),
    ("classes: []\n", "'classes' must be a non-empty list"),
    ("classes: [a, b]\nclass_definitions:\n  a: []\n", "class_definitions['a'] must be a non-empty list"),
    ("classes: [a, yes]\n", "quote names"),
    ("classes: [a, b]\nclass_definition:\n  a: [x]\n", "unknown key(s) ['class_definition']"),
    ("classes: [a, b]\nclass_definitions:\n  a: [x, x]\n", "lists a concept twice"),
    ("classes: [a, b\n", "not valid YAML"),
])
def test_yaml_errors_name_file_and_problem(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        load_class_set(f)
    assert str(f) in str(e.value) and needle in str(e.value)


def test_all_problems_in_one_error_and_other_bad_specs(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("classes: [a, a]\nclass_definitions:\n  z: [q]\n")
    with pytest.raises(ValueError, match=r"duplicate.*unknown class"):
        load_class_set(f)
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"dup\.txt.*duplicate"):
        load_class_set(dup)
    with pytest.raises(ValueError, match="not a built-in"):
        load_class_set("vco")
    with pytest.raises(ValueError, match=r"'missing/a,b\.yaml' not found"):
        load_class_set("missing/a,b.yaml")
    with pytest.raises(ValueError, match="non-empty list"):
        load_class_set(" , ,")
    with pytest.raises(ValueError, match="unknown text embedding mode"):
        normalize_mode("mean")
    assert normalize_mode("conceptavg") == "avg" and normalize_mode("concept") == "max"


# ---------------------------------------------------------------- templates


def test_templates():
    assert get_templates("single") == ("a photo of a {}",)
    assert len(get_templates("ImageNet80")) == 80 == len(set(IMAGENET80))
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert [t("{}") for t in OPENAI_IMAGENET_TEMPLATES] == list(IMAGENET80)
    assert get_templates(["a {} here", "the {}"]) == ("a {} here", "the {}")
    assert get_templates("a drawing of a {}") == ("a drawing of a {}",)
    with pytest.raises(ValueError, match=r"exactly one '\{\}'.*'a photo'"):
        get_templates(["a photo of a {}", "a photo"])
    with pytest.raises(ValueError, match="unknown prompt template set"):
        get_templates("imagenet")
    with pytest.raises(ValueError, match="non-empty list"):
        get_templates([])


# ---------------------------------------------------------------- embeddings


def test_encode_texts_shape_and_mode(tiny):
    _, _, model, tok = tiny
    model.train()
    raw = encode_texts(model, tok, ["cat", "dog", "bed"], ["a {}", "the {}"], batch_size=4)
    assert raw.shape == (3, 2, 64) and raw.dtype == torch.float32 and model.training
    model.eval()
    single = encode_texts(model, tok, ["dog"], "the {}")
    torch.testing.assert_close(single[0, 0], raw[1, 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(raw[:, 0], raw[:, 1])


def test_concept_max_semantics(tiny, pets, tmp_path):
    name, path, model, tok = tiny
    te = build_text_embeddings(pets, model_name=name, pretrained=path, mode="max", cache_dir=tmp_path)
    assert te.mode == "max" and te.num_rows == 6 and te.num_classes == 3
    assert te.texts == ("background", "wall", "floor", "cat", "dog", "puppy")
    assert torch.equal(te.groups, torch.tensor([0, 0, 0, 1, 2, 2]))
    raw = encode_texts(model, tok, list(te.texts), "single")
    torch.testing.assert_close(te.embeddings, F.normalize(raw[:, 0], dim=-1), atol=1e-6, rtol=1e-5)
    image = F.normalize(torch.randn(2, 64, 5, 4), dim=1)
    scores = torch.einsum("bchw,nc->bnhw", image, te.embeddings)
    by_hand = torch.stack([scores[:, te.groups == k].amax(dim=1) for k in range(3)], dim=1)
    torch.testing.assert_close(concept_max(scores, te.groups, 3), by_hand)
    torch.testing.assert_close(te.aggregate(scores), by_hand)


def test_concept_avg_semantics(tiny, pets, tmp_path):
    name, path, model, tok = tiny
    te = build_text_embeddings(pets, model_name=name, pretrained=path, mode="avg", cache_dir=tmp_path)
    assert te.num_rows == 3 and torch.equal(te.groups, torch.arange(3)) and te.texts == pets.classes
    assert torch.equal(te.aggregate(torch.ones(1, 3, 2, 2)), torch.ones(1, 3, 2, 2))
    for k, concepts in enumerate(pets.concepts):  # the reference's conceptavg: mean of raw embeddings, renormalised
        raw = encode_texts(model, tok, list(concepts), "single")[:, 0]
        torch.testing.assert_close(te.embeddings[k], F.normalize(raw.mean(0), dim=0), atol=1e-6, rtol=1e-5)
    # several templates: per concept its ensembled direction with its mean raw norm, then as above
    two = ["a photo of a {}", "a drawing of the {}"]
    te2 = build_text_embeddings(pets, model_name=name, pretrained=path, mode="avg", templates=two, cache_dir=tmp_path)
    raw = encode_texts(model, tok, ["dog", "puppy"], two)
    direction = F.normalize(F.normalize(raw, dim=-1).mean(1), dim=-1)
    expect = F.normalize((direction * raw.norm(dim=-1).mean(1, keepdim=True)).mean(0), dim=0)
    torch.testing.assert_close(te2.embeddings[2], expect, atol=1e-6, rtol=1e-5)
    # single mode ignores the definitions
    te1 = build_text_embeddings(pets, model_name=name, pretrained=path, mode="single", cache_dir=tmp_path)
    raw = encode_texts(model, tok, list(pets.classes), "single")[:, 0]
    torch.testing.assert_close(te1.embeddings, F.normalize(raw, dim=-1), atol=1e-6, rtol=1e-5)


def test_template_ensemble_and_unit_norm(tiny, tmp_path):
    name, path, model, tok = tiny
    te = build_text_embeddings("cat, dog", model_name=name, pretrained=path, templates="imagenet80",
                               clip_model=model, tokenizer=tok, cache_dir=tmp_path)
    raw = encode_texts(model, tok, ["cat", "dog"], IMAGENET80)
    expect = F.normalize(F.normalize(raw, dim=-1).mean(1), dim=-1)
    torch.testing.assert_close(te.embeddings, expect, atol=1e-6, rtol=1e-5)
    voc = build_text_embeddings("voc", model_name=name, pretrained=path, mode="max", clip_model=model,
                                tokenizer=tok, cache_dir=tmp_path)
    assert voc.embeddings.shape == (98, 64) and voc.embeddings.dtype == torch.float32
    for e in (te, voc):
        torch.testing.assert_close(e.embeddings.norm(dim=-1), torch.ones(e.num_rows))


def test_cache_hit_builds_no_model(tiny, pets, tmp_path, monkeypatch):
    from safetensors import safe_open

    name, path, _, _ = tiny
    first = build_text_embeddings(pets, model_name=name, pretrained=path, mode="max", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    with safe_open(str(files[0]), framework="pt") as f:
        assert f.metadata()["key"] == first.key and set(f.keys()) == {"embeddings", "groups"}

    def no_model(*args, **kwargs):
        raise AssertionError("create_clip called on a cache hit")

    monkeypatch.setattr(emb_mod, "create_clip", no_model)
    monkeypatch.setattr(emb_mod, "get_tokenizer", no_model)
    second = build_text_embeddings(pets, model_name=name, pretrained=path, mode="max", cache_dir=tmp_path)
    assert torch.equal(first.embeddings, second.embeddings) and torch.equal(first.groups, second.groups)
    assert (second.texts, second.num_classes, second.mode, second.key) == (first.texts, 3, "max", first.key)


def test_default_cache_dir_from_env(tiny, tmp_path, monkeypatch):
    name, path, model, tok = tiny
    monkeypatch.setenv("SEMIVL_FAST_CACHE", str(tmp_path / "root"))
    assert emb_mod.default_cache_dir() == tmp_path / "root" / "text"
    build_text_embeddings("a, b", model_name=name, pretrained=path, clip_model=model, tokenizer=tok)
    assert len(list((tmp_path / "root" / "text").glob("*.safetensors"))) == 1


def test_cache_key_changes(tiny, pets):
    name, path, _, _ = tiny
    base = cache_key(pets, name, path, get_templates("single"), "max")
    assert base == cache_key(pets, name, path, ["a photo of a {}"], "concept")
    other_concepts = ClassSet("pets", pets.classes, (("background",), ("cat",), ("dog", "puppy")))
    changed = [
        cache_key(load_class_set("background, cat, wolf"), name, path, ["a photo of a {}"], "max"),
        cache_key(other_concepts, name, path, ["a photo of a {}"], "max"),
        cache_key(pets, name, path, ["a photo of the {}"], "max"),
        cache_key(pets, name, path, ["a photo of a {}"], "avg"),
        cache_key(pets, name, path, ["a photo of a {}"], "single"),
        cache_key(pets, name, "openai", ["a photo of a {}"], "max"),
        cache_key(pets, "ViT-B-16", path, ["a photo of a {}"], "max"),
    ]
    assert len({base, *changed}) == 1 + len(changed)


def test_passed_model_matches_built_and_random_is_not_cached(tiny, pets, tmp_path):
    name, path, model, tok = tiny
    built = build_text_embeddings(pets, model_name=name, pretrained=path, mode="avg", use_cache=False)
    passed = build_text_embeddings(pets, model_name=name, pretrained=path, mode="avg", clip_model=model,
                                   tokenizer=tok, cache_dir=tmp_path)
    torch.testing.assert_close(built.embeddings, passed.embeddings, atol=0, rtol=0)
    random = build_text_embeddings(pets, model_name=name, pretrained=None, clip_model=model, cache_dir=tmp_path / "r")
    assert random.num_rows == 3 and not (tmp_path / "r").exists()


def test_corrupt_cache_is_rebuilt(tiny, pets, tmp_path):
    name, path, model, tok = tiny
    first = build_text_embeddings(pets, model_name=name, pretrained=path, clip_model=model, tokenizer=tok,
                                  cache_dir=tmp_path)
    (f,) = tmp_path.glob("*.safetensors")
    f.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = build_text_embeddings(pets, model_name=name, pretrained=path, clip_model=model, tokenizer=tok,
                                      cache_dir=tmp_path)
    assert torch.equal(first.embeddings, again.embeddings)
    third = build_text_embeddings(pets, model_name=name, pretrained=path, cache_dir=tmp_path)  # valid again
    assert torch.equal(first.embeddings, third.embeddings)


def test_from_rows(pets):
    rows = torch.randn(6, 8, dtype=torch.float16) * 3
    te = TextEmbeddings.from_rows(rows, pets, "concept")
    assert te.mode == "max" and torch.equal(te.groups, torch.tensor([0, 0, 0, 1, 2, 2]))
    torch.testing.assert_close(te.embeddings.norm(dim=-1), torch.ones(6))
    with pytest.raises(ValueError, match=r"must be \(3, C\).*'avg'"):
        TextEmbeddings.from_rows(rows, pets, "avg")
