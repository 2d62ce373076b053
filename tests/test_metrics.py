"""mIoU against a direct per-class computation; inference windows cover every pixel."""

import torch

from semivl_fast.inference import _window_starts, predict_logits
from semivl_fast.metrics import intersection_union, miou


def test_miou_matches_direct_computation():
    torch.manual_seed(0)
    n = 5
    preds = [torch.randint(0, n, (7, 9)) for _ in range(3)]
    targets = [torch.randint(0, n, (7, 9)) for _ in range(3)]
    targets[0][0, :4] = 255
    inter = torch.zeros(n, dtype=torch.long)
    union = torch.zeros(n, dtype=torch.long)
    for p, t in zip(preds, targets):
        i, u = intersection_union(p, t, n)
        inter += i
        union += u
    got, iou = miou(inter, union)
    # direct: dataset-level pixel sets per class, ignoring 255
    p_all = torch.cat([p.flatten() for p in preds])
    t_all = torch.cat([t.flatten() for t in targets])
    keep = t_all != 255
    p_all, t_all = p_all[keep], t_all[keep]
    expected = []
    for c in range(n):
        i = ((p_all == c) & (t_all == c)).sum().item()
        u = ((p_all == c) | (t_all == c)).sum().item()
        expected.append(100.0 * i / u if u else 0.0)
    torch.testing.assert_close(iou, torch.tensor(expected, dtype=torch.float64))
    assert abs(got - sum(expected) / n) < 1e-9


def test_absent_class_counts_as_zero_like_the_reference():
    inter, union = intersection_union(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), 3)
    m, iou = miou(inter, union)
    torch.testing.assert_close(iou, torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64))
    assert abs(m - 100 / 3) < 1e-6


def test_sliding_windows_cover_and_average():
    assert _window_starts(1000, 512, 426) == [0, 426, 488]
    assert _window_starts(512, 512, 426) == [0]
    image = torch.randn(1, 3, 37, 53)
    model = lambda x: torch.stack([x[:, 0], -x[:, 0]], 1)  # pixel-wise: windows must reproduce it exactly
    for mode, merge in (("sliding", "logits"), ("grid", "probs"), ("whole", "logits")):
        out = predict_logits(model, image, window=16, mode=mode, stride=11, merge=merge)
        ref = model(image)
        if mode == "grid":
            count = torch.zeros(1, 1, 37, 53)
            for y in range(0, 37, 10):
                for x in range(0, 53, 10):
                    count[:, :, y:y + 16, x:x + 16] += 1
            ref = ref.softmax(1) * count
        torch.testing.assert_close(out, ref)


def test_evaluation_progress_logs_lines_when_not_a_terminal(monkeypatch):
    import logging
    import sys

    from semivl_fast.metrics import progress_iter

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    logger = logging.getLogger("semivl_fast")
    # a handler of its own on the logger: caplog would see each record twice once a run has made the logger
    # non-propagating (pytest then attaches its handler to the logger as well as to the root)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    try:
        assert list(progress_iter(range(5), total=5, every_s=0.0)) == list(range(5))
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 5 and all(line.startswith(f"eval: {n}/5 images, ") for n, line in enumerate(lines[:4], 1))
    assert lines[-1].startswith("eval: 5/5 images in ")
