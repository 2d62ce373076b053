"""Prompt templates: SemiVL's single template, CLIP's 80 ImageNet templates, or a user list.

A template is a string with exactly one ``{}`` where the class or concept name goes. Filling uses
``str.replace`` (not ``str.format``), so other braces in a template are kept literally.
"""

from __future__ import annotations

from collections.abc import Sequence

# SemiVL's only template (no trailing period, no ensemble).
SINGLE: tuple[str, ...] = ("a photo of a {}",)

# The 80 prompt templates of CLIP's ImageNet zero-shot evaluation, in their original order.
IMAGENET80: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"single": SINGLE, "imagenet80": IMAGENET80}


def get_templates(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Templates by set name (``"single"``, ``"imagenet80"``), one template string, or a list of templates.

    Every template must be a string with exactly one ``{}``; anything else raises ``ValueError``.
    """
    if isinstance(spec, str):
        named = TEMPLATE_SETS.get(spec.strip().lower())
        if named is not None:
            return named
        if "{}" not in spec:
            raise ValueError(f"unknown prompt template set {spec!r}: use one of {sorted(TEMPLATE_SETS)}, a template "
                             "string with '{}' where the class name goes (e.g. 'a photo of a {}'), or a list of them")
        spec = [spec]
    if not isinstance(spec, Sequence) or len(spec) == 0:
        raise ValueError(f"prompt templates must be a set name ({', '.join(sorted(TEMPLATE_SETS))}) or a non-empty "
                         f"list of template strings, got {spec!r}")
    bad = [t for t in spec if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(f"every prompt template must be a string with exactly one '{{}}' where the class name goes "
                         f"(e.g. 'a photo of a {{}}'); bad template(s): {', '.join(map(repr, bad))}")
    return tuple(spec)


def fill_template(template: str, name: str) -> str:
    """The prompt for ``name``: ``template`` with its ``{}`` replaced (other braces are left as they are)."""
    return template.replace("{}", name)
