"""Benchmark scripts run against today's library: the smallest configuration of each that fits in seconds."""

from __future__ import annotations

from tests.test_benchmark_targets import load_benchmark


def test_soup_memory_greedy_modes_agree(tiny_model, tmp_path):
    """The greedy soup with a constant score keeps every candidate in both modes (greedy is strict by
    default, which would keep only the first ingredient in the streaming mode), so the soups match."""
    import torch
    from safetensors.torch import load_file

    from soupline.classifier import init_model

    sm = load_benchmark("soup_memory")
    dirs = []
    for i in range(3):
        model = init_model(tiny_model, sm.LABELS, 0)
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        model.save_pretrained(tmp_path / f"ingredient-{i}")
        dirs.append(tmp_path / f"ingredient-{i}")
    outs = {mode: str(tmp_path / f"{mode}.safetensors") for mode in ("in-memory", "stream")}
    for mode, out in outs.items():
        res = sm.worker("greedy", mode, dirs, out)
        assert res["seconds"] >= 0 and res["peak_rss_mb"] > 0
    a, b = load_file(outs["in-memory"]), load_file(outs["stream"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(dirs[0] / "model.safetensors")
    assert not all(torch.equal(first[k], b[k]) for k in first if k in b)  # a mean, not the first ingredient
