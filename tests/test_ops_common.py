"""The op layer's shared machinery (semivl_fast/ops/_common.py): how a face is requested and chosen, why one cannot
run, and active_backends built from every op's select_face. Pure logic: CUDA devices need no GPU here."""

import importlib

import pytest
import torch

import semivl_fast
from semivl_fast import ops
from semivl_fast.ops import _common

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
FACES = ("reference", "cpp", "cuda", "triton")


@pytest.fixture(autouse=True)
def _no_forced_face(monkeypatch):
    for op in (*ops.OPS, "toy"):
        monkeypatch.delenv(f"{_common.ENV}_{op.upper()}", raising=False)
    monkeypatch.delenv(_common.ENV, raising=False)


@pytest.fixture
def everything_built(monkeypatch):
    """Extension with CUDA kernels, Triton and xformers all present."""
    monkeypatch.setattr(_common, "has_ext", lambda: True)
    monkeypatch.setattr(_common, "has_cuda_ext", lambda: True)
    monkeypatch.setattr(_common, "has_triton", lambda: True)
    monkeypatch.setattr(_common, "has_xformers", lambda: True)


def test_auto_prefers_cpp_on_cpu_and_triton_then_cuda_on_gpus(everything_built, monkeypatch):
    assert _common.choose_face("toy", CPU, FACES) == "cpp"
    assert _common.choose_face("toy", CUDA, FACES) == "triton"
    assert _common.choose_face("toy", CUDA, ("reference", "cpp", "cuda")) == "cuda"
    assert _common.choose_face("toy", META, FACES) == "reference"
    monkeypatch.setattr(_common, "has_triton", lambda: False)
    assert _common.choose_face("toy", CUDA, FACES) == "cuda"
    monkeypatch.setattr(_common, "has_cuda_ext", lambda: False)
    assert _common.choose_face("toy", CUDA, FACES) == "reference"
    monkeypatch.setattr(_common, "has_ext", lambda: False)
    assert _common.choose_face("toy", CPU, FACES) == "reference"


def test_the_op_variable_wins_over_the_global_one(everything_built, monkeypatch):
    monkeypatch.setenv(_common.ENV, "reference")
    assert _common.choose_face("toy", CPU, FACES) == "reference"
    monkeypatch.setenv(f"{_common.ENV}_TOY", " Triton ")  # case and spaces do not matter
    assert _common.choose_face("toy", CPU, FACES) == "triton"
    monkeypatch.setenv(f"{_common.ENV}_TOY", "auto")
    assert _common.choose_face("toy", CPU, FACES) == "cpp"


def test_a_face_the_op_lacks_is_an_error(monkeypatch):
    monkeypatch.setenv(f"{_common.ENV}_TOY", "sdpa")
    with pytest.raises(ValueError, match=r"toy: SEMIVL_FAST_BACKEND\[_TOY\]='sdpa' is not one of \('auto', 'ref"):
        _common.choose_face("toy", CPU, FACES)


@pytest.mark.parametrize(("face", "device", "why"), [
    ("cpp", CUDA, r"the C\+\+ face runs on CPU tensors, got cuda"),
    ("cuda", CPU, r"the CUDA C\+\+ face runs on CUDA tensors, got cpu"),
    ("triton", META, "the Triton face runs on CUDA tensors"),
    ("xformers", CPU, "the xformers face runs on CUDA tensors, got cpu"),
])
def test_a_forced_face_that_cannot_run_says_why(face, device, why, everything_built, monkeypatch):
    monkeypatch.setenv(f"{_common.ENV}_TOY", face)
    with pytest.raises(RuntimeError, match=f"toy: backend '{face}' cannot run: {why}"):
        _common.choose_face("toy", device, (*FACES, "xformers"))


def test_what_is_not_built_or_installed(monkeypatch):
    monkeypatch.setattr(_common, "has_ext", lambda: False)
    monkeypatch.setattr(_common, "has_cuda_ext", lambda: False)
    monkeypatch.setattr(_common, "has_triton", lambda: False)
    monkeypatch.setattr(_common, "has_xformers", lambda: False)
    assert "the C++ extension is not built" in _common.unavailable("cpp", CPU)
    assert "built without CUDA kernels" in _common.unavailable("cuda", CUDA)
    assert _common.unavailable("triton", CUDA) == "triton is not installed"
    assert _common.unavailable("xformers", CUDA) == "xformers is not installed"
    assert _common.unavailable("reference", META) is None and _common.unavailable("sdpa", CPU) is None


def test_triton_on_cpu_needs_the_interpreter(everything_built, monkeypatch):
    monkeypatch.setattr(_common, "INTERPRET", False)
    assert "TRITON_INTERPRET=1" in _common.unavailable("triton", CPU)
    monkeypatch.setattr(_common, "INTERPRET", True)
    assert _common.unavailable("triton", CPU) is None


def test_custom_ops_run_only_their_kernel_faces():
    kernels = {"cpp": len}
    assert _common.kernel("toy", "cpp", kernels) is len
    with pytest.raises(RuntimeError, match=r"toy: face 'reference' runs in semivl_fast.ops.toy\(\), not in the custom "
                                           r"op semivl_fast::toy \(which runs \('cpp',\)\)"):
        _common.kernel("toy", "reference", kernels)


def test_active_backends_come_from_every_op_select_face(everything_built, monkeypatch):
    """active_backends names each op's face as its module's select_face picks it, one of its FACES."""
    pytest.importorskip("triton")  # select_face reads the Triton kernels' limits
    for device in (CPU, CUDA, META):
        faces = ops.active_backends(device)
        assert tuple(faces) == ops.OPS
        for op, chosen in faces.items():
            module = importlib.import_module(f"semivl_fast.ops.{op}")
            assert chosen == module.select_face(device) and chosen in module.FACES
    assert ops.active_backends("cuda") == {"cost_volume": "triton", "class_attention": "triton",
                                           "pseudo_label_loss": "triton"}
    monkeypatch.setenv(_common.ENV, "reference")
    assert set(ops.active_backends("cpu").values()) == {"reference"}


def test_active_backends_here():
    expected = "cpp" if semivl_fast.has_ext() else "reference"
    assert ops.active_backends("cpu") == dict.fromkeys(ops.OPS, expected)
