"""GOT-D: the dual potential is the OT gradient, selection moves toward the target, it scales by c-transform."""

import warnings

import numpy as np
import pytest

from soupline import select
from soupline.errors import SouplineError
from soupline.select.gotd import GotdConfig, dual_potentials

PAPER = {"rounds": 1, "target_copy_threshold": None, "label_weight": 0.0}  # the paper's one-shot rule (label-blind);
# these targets copy pool points


def _clusters(n_per=100, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[:4] * 3
    labels = np.repeat(np.arange(4), n_per)
    x = centers[labels] + 0.3 * rng.normal(size=(len(labels), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def _inp(target_cluster=2, n_target=60):
    x, labels = _clusters()
    t = x[labels == target_cluster][:n_target] + 0.01
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return select.SelectionInput(x, labels, list("abcd"), target_embeddings=t.astype(np.float32),
                                 target_labels=np.full(len(t), target_cluster))


def test_selects_toward_the_target():
    inp = _inp()
    sel = select.run_method("gotd", inp, 40, 0, GotdConfig(**PAPER))
    assert np.mean(inp.labels[sel.indices] == 2) >= 0.9
    f, _ = dual_potentials(inp, 0, GotdConfig(**PAPER))
    calibrated = np.array([f[i] - np.delete(f, i).mean() for i in range(inp.n)])  # f_i - mean_{j != i} f_j
    assert np.array_equal(sel.indices, np.sort(np.argsort(calibrated)[:40]))  # the most negative gradients
    assert np.allclose(sel.scores, -calibrated[sel.indices])  # selection.json's score: minus the gradient
    rnd = select.run_method("random", inp, 40, 0, select.REGISTRY["random"].config())
    assert np.mean(inp.labels[rnd.indices] == 2) < 0.5


def test_stratified_gotd_moves_each_label_toward_its_own_target_texts():
    """Under select.stratify, label 0's picks follow label 0's validation texts (its `a` half), not the
    label-1 texts, which the whole target (mostly label 1) would make it serve with its `b` half, nearer label 1."""
    rng = np.random.default_rng(0)
    a, b, c1 = np.eye(8)[0] * 3, np.eye(8)[1] * 3, np.eye(8)[1] * 3 + np.eye(8)[2] * 2

    def around(center, n):
        x = center + 0.3 * rng.normal(size=(n, 8))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    x, labels = np.vstack([around(a, 50), around(b, 50), around(c1, 100)]), np.repeat([0, 1], 100)
    half_a = np.arange(200) < 50
    target, target_labels = np.vstack([around(a, 20), around(c1, 60)]), np.repeat([0, 1], [20, 60])
    inp = select.SelectionInput(x, labels, ["l0", "l1"], target_embeddings=target, target_labels=target_labels)
    sel = select.run_method("gotd", inp, 20, 0, GotdConfig(**PAPER), stratify="label")
    picked0 = sel.indices[labels[sel.indices] == 0]
    assert len(picked0) == 10 and half_a[picked0].all()
    assert [sel.info["per_label"][k]["target_size"] for k in ("l0", "l1")] == [20, 60]
    whole = select.run_method("gotd", select.SelectionInput(x, labels, ["l0", "l1"], target_embeddings=target),
                              20, 0, GotdConfig(**PAPER), stratify="label")  # an unlabelled target stays whole
    assert whole.info["per_label"]["l0"]["target_size"] == 80
    assert not half_a[whole.indices[labels[whole.indices] == 0]].any()


def test_potential_matches_finite_difference_of_ot_cost():
    """Moving mass onto a candidate changes the entropic OT cost by its potential (up to a constant)."""
    import ot

    inp = _inp()
    inp = inp.subset(np.arange(0, 400, 10))  # 40 points, all clusters
    cfg = GotdConfig(eps=0.05, label_weight=0)  # the cost below is label-blind
    f, eps = dual_potentials(inp, 0, cfg)
    cost = 1.0 - inp.embeddings.astype(np.float64) @ inp.target_embeddings.astype(np.float64).T
    b = np.full(len(inp.target_embeddings), 1 / len(inp.target_embeddings))

    def ot_value(a):
        return float(ot.sinkhorn2(a, b, cost, eps, method="sinkhorn_log", stopThr=1e-12, numItermax=20000))

    a = np.full(inp.n, 1 / inp.n)
    h = 1e-4
    fd = []
    for i in (0, 13, 27):  # shift mass h from the average candidate onto candidate i
        a2 = a * (1 - h)
        a2[i] += h
        fd.append((ot_value(a2) - ot_value(a)) / h)
    grad = [f[i] - np.dot(a, f) for i in (0, 13, 27)]
    # sinkhorn2 reports <P, M> without the entropy term, so agreement is to a few percent, not exact
    assert np.allclose(fd, grad, rtol=0.05, atol=0.01)


def test_a_later_round_solves_ot_from_the_pool_nudged_toward_the_picks():
    """Round r's source is (1 - w) pool + w picks, masses summing to 1; its potential is the c-transform of
    that problem's target potential (compared with POT's log-domain solve of the same source)."""
    import ot
    import torch

    from soupline.select.gotd import Transport, c_transform

    inp = _inp().subset(np.arange(0, 400, 10))  # 40 points, all clusters
    problem = Transport(inp, inp.target_embeddings, 0, GotdConfig(eps=0.05, tol=1e-11, max_iter=100000, rounds=2,
                                                                 label_weight=0))  # the cost below is label-blind
    picked = np.array([3, 17, 22])
    f, _ = problem.potentials(picked, 0.25)
    a = np.full(40, 0.75 / 40)
    a[picked] += 0.25 / 3
    cost = torch.from_numpy(1.0 - inp.embeddings.astype(np.float64) @ inp.target_embeddings.astype(np.float64).T)
    b = torch.full((cost.shape[1],), 1 / cost.shape[1], dtype=torch.float64)
    _, log = ot.sinkhorn(torch.from_numpy(a), b, cost, 0.05, method="sinkhorn_log", stopThr=1e-13,
                         numItermax=100000, log=True)
    want = c_transform(0.05 * log["log_v"], cost, 0.05).numpy()
    assert np.allclose(f - f.mean(), want - want.mean(), atol=1e-6)


def test_the_c_transform_in_row_blocks_is_the_whole_one():
    """`rows` only bounds the temporaries (a 20,000-row source's were three 400 MB matrices): same values."""
    import torch

    from soupline.select.gotd import c_transform

    gen = torch.Generator().manual_seed(0)
    cost, g = torch.rand(1000, 37, generator=gen), torch.randn(37, generator=gen)
    assert torch.equal(c_transform(g, cost, 0.05, rows=64), c_transform(g, cost, 0.05))


def test_c_transform_extension_matches_full_solve_ranking():
    inp = _inp()
    full, _ = dual_potentials(inp, 0, GotdConfig(eps=0.05))
    part, _ = dual_potentials(inp, 0, GotdConfig(eps=0.05, max_pool_for_ot=200, chunk=64))
    assert np.corrcoef(full, part)[0, 1] > 0.95


def test_deterministic_and_empty_target():
    inp = _inp()
    a = select.run_method("gotd", inp, 25, 3, GotdConfig(max_pool_for_ot=150, target_copy_threshold=None))
    b = select.run_method("gotd", inp, 25, 3, GotdConfig(max_pool_for_ot=150, target_copy_threshold=None))
    assert np.array_equal(a.indices, b.indices)
    inp.target_embeddings = inp.target_embeddings[:0]
    with pytest.raises(SouplineError, match="non-empty target set"):
        select.run_method("gotd", inp, 5, 0, GotdConfig())


def test_rounds_cover_a_target_drawn_like_the_pool():
    """One shot piles the budget where the target is denser by chance; rounds re-solve from the nudged pool."""
    x, labels = _clusters()
    rng = np.random.default_rng(1)
    t_labels = np.repeat(np.arange(4), 15)
    t = np.eye(8)[:4][t_labels] * 3 + 0.3 * rng.normal(size=(60, 8))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    inp = select.SelectionInput(x, labels, list("abcd"), target_embeddings=t.astype(np.float32),
                                target_labels=t_labels)
    one_shot = select.run_method("gotd", inp, 8, 0, GotdConfig(**PAPER))
    assert np.bincount(labels[one_shot.indices], minlength=4).min() == 0
    rounds = select.run_method("gotd", inp, 8, 0, GotdConfig(rounds=8, target_copy_threshold=None))
    assert np.bincount(labels[rounds.indices], minlength=4).tolist() == [2, 2, 2, 2]
    assert rounds.info["rounds"] == 8 and len(rounds.info["iterations_per_round"]) == 8
    again = select.run_method("gotd", inp, 8, 0, GotdConfig(rounds=8, target_copy_threshold=None))
    assert np.array_equal(rounds.indices, again.indices)
    capped = select.run_method("gotd", inp, 3, 0, GotdConfig(rounds=8, target_copy_threshold=None))
    assert capped.info["rounds"] == 3 and len(set(capped.indices.tolist())) == 3
    subsampled = select.run_method("gotd", inp, 20, 0, GotdConfig(rounds=4, max_pool_for_ot=150, chunk=64,
                                                                           target_copy_threshold=None))
    assert subsampled.info["ot_pool_size"] > 150  # the subsample plus the picks outside it
    assert len(set(subsampled.indices.tolist())) == 20 and np.bincount(labels[subsampled.indices]).min() >= 3


def test_rounds_still_move_toward_a_shifted_target():
    sel = select.run_method("gotd", _inp(), 40, 0, GotdConfig(rounds=4, target_copy_threshold=None))
    assert np.mean(_inp().labels[sel.indices] == 2) >= 0.9


@pytest.mark.parametrize("rounds", [1, 4])
def test_target_copy_threshold_never_picks_near_copies_of_target_texts(rounds):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # spread: cosines near 0
    target = x[::10] + rng.normal(scale=0.01, size=(10, 64))  # near-copies of every tenth candidate
    target = (target / np.linalg.norm(target, axis=1, keepdims=True)).astype(np.float32)
    inp = select.SelectionInput(x, np.arange(100) % 4, list("abcd"), target_embeddings=target)
    copies = set(range(0, 100, 10))
    plain = select.run_method("gotd", inp, 20, 0, GotdConfig(rounds=rounds, target_copy_threshold=None))
    assert set(plain.indices.tolist()) >= copies and plain.info["target_copies_excluded"] == 0  # copies go first
    cfg = GotdConfig(rounds=rounds, target_copy_threshold=0.99)
    sel = select.run_method("gotd", inp, 20, 0, cfg)
    assert not set(sel.indices.tolist()) & copies and len(set(sel.indices.tolist())) == 20
    assert sel.info["target_copies_excluded"] == 10
    with pytest.raises(SouplineError, match=r"target_copy_threshold=0.99 leaves 90 of 100 candidates .* budget 91"):
        select.run_method("gotd", inp, 91, 0, cfg)


def test_target_copy_threshold_under_stratify_excludes_copies_only_down_to_a_labels_quota():
    """Under `balanced` a small label's quota can exceed what the copy guard leaves: it then excludes only its
    nearest copies, down to the quota, with a warning naming it (without stratify that is an error, above); a
    label with room excludes every copy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(132, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # spread: cosines near 0
    labels = np.repeat(np.arange(4), [40, 40, 40, 12])  # d is small
    d, c = np.flatnonzero(labels == 3), np.flatnonzero(labels == 2)
    noise = rng.normal(size=(10, 64)) * np.linspace(0.001, 0.02, 10)[:, None]  # d's copies, nearest first
    target = np.vstack([x[d[:10]] + noise, x[c[:5]] + 0.01 * rng.normal(size=(5, 64))])
    target = (target / np.linalg.norm(target, axis=1, keepdims=True)).astype(np.float32)
    inp = select.SelectionInput(x, labels, list("abcd"), target_embeddings=target,
                                target_labels=np.repeat([3, 2], [10, 5]))
    cfg = GotdConfig(rounds=2, target_copy_threshold=0.95)
    near = (x[d] @ target[:10].T).max(1)
    assert (near[:10] >= 0.95).all() and (near[10:] < 0.95).all()
    with pytest.warns(UserWarning) as caught:
        sel = select.run_method("gotd", inp, 40, 0, cfg, stratify="balanced")
    said = [str(w.message) for w in caught if "target_copy_threshold" in str(w.message)]
    assert said == ["select.gotd.target_copy_threshold=0.95 would leave fewer examples than the quota of 1 label(s): "
                    "'d' (2 of 12, quota 10); those labels drop only what their quota leaves over"]
    nearest = d[np.argsort(-near, kind="stable")[:2]]
    assert set(d) - set(sel.indices.tolist()) == set(nearest.tolist())  # d gives 10: all but its 2 nearest copies
    assert np.bincount(labels[sel.indices]).tolist() == [10, 10, 10, 10]
    assert not set(c[:5].tolist()) & set(sel.indices.tolist())  # c has room: every copy excluded
    info = sel.info["per_label"]
    assert (info["d"]["target_copies_excluded"], info["c"]["target_copies_excluded"]) == (2, 5)
    assert info["d"]["spared_for_quota"]["would_leave"] == 2 and "spared_for_quota" not in info["c"]
    assert sel.info["spared_for_quota"] == ["d"]  # selection.json names the labels


def test_sinkhorn_scaling_matches_the_log_domain_and_falls_back_to_it_out_of_float_range():
    import ot
    import torch

    from soupline.select.gotd import sinkhorn_potentials

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 16)), rng.normal(size=(30, 16))
    cost = torch.from_numpy(1 - (x / np.linalg.norm(x, axis=1, keepdims=True)) @
                            (y / np.linalg.norm(y, axis=1, keepdims=True)).T)
    a, b = torch.full((60,), 1 / 60, dtype=torch.float64), torch.full((30,), 1 / 30, dtype=torch.float64)

    def centred(f):
        return (f - f.mean()).numpy()

    # float32 at eps = 0.002: the scalings span more than e^88, so it falls back to the log domain
    for eps, dtype, tol, solver in ((0.05, torch.float64, 1e-9, "sinkhorn"),
                                    (0.002, torch.float32, 1e-3, "sinkhorn_log")):
        f, g, info = sinkhorn_potentials(cost.to(dtype), eps, tol=tol, max_iter=50000)
        assert info["solver"] == solver and info["converged"] and torch.isfinite(f).all()
        _, log = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", stopThr=1e-10, numItermax=100000, log=True,
                             warn=False)
        ref = centred(eps * log["log_u"])
        if solver == "sinkhorn":
            assert np.abs(centred(f) - ref).max() < 1e-6
        else:  # converged to tol 1e-3 only: the same potentials up to that accuracy
            assert np.corrcoef(centred(f.double()), ref)[0, 1] > 0.99
    # a warm start from the solution converges at once to the same potentials
    f, g, info = sinkhorn_potentials(cost, 0.05, tol=1e-9)
    f2, g2, warm = sinkhorn_potentials(cost, 0.05, tol=1e-9, init=(f, g))
    assert warm["iterations"] < info["iterations"] and np.allclose(centred(f2), centred(f), atol=1e-8)


def test_sinkhorn_overwrite_shifts_the_cost_in_place_and_rounds_hand_over_only_their_fresh_copy(monkeypatch):
    """A nudged round's cost (the subsample's rows and the picks outside it) is a fresh copy no one reads after the
    solve: it is shifted in place instead of copied (one matrix fewer at the peak); the kept subsample cost never."""
    import torch

    from soupline.select import gotd

    rng = np.random.default_rng(0)
    cost = torch.from_numpy(rng.uniform(0.2, 1.0, (50, 20)))
    f, g, _ = gotd.sinkhorn_potentials(cost, 0.05, tol=1e-9)
    mine = cost.clone()
    f2, g2, _ = gotd.sinkhorn_potentials(mine, 0.05, tol=1e-9, overwrite=True)
    assert torch.equal(f, f2) and torch.equal(g, g2)
    assert float(mine.min(1).values.abs().max()) == 0.0 and not torch.equal(mine, cost)  # shifted in place
    seen, solve = [], gotd.sinkhorn_potentials

    def spy(c, *args, **kwargs):
        seen.append((kwargs.get("overwrite", False), c.shape[0]))
        return solve(c, *args, **kwargs)

    monkeypatch.setattr(gotd, "sinkhorn_potentials", spy)
    problem = gotd.Transport(_inp(), _inp().target_embeddings, 0, GotdConfig(max_pool_for_ot=150, cost_cache_mb=0))
    kept = problem.c_sub.clone()
    problem.potentials()
    outside = np.setdiff1d(np.arange(_inp().n), problem.sub)[:3]
    problem.potentials(outside, 0.5)
    problem.potentials(problem.sub[:3], 0.5)  # picks inside the subsample: the kept cost itself, never overwritten
    assert seen == [(False, 150), (True, 153), (False, 150)] and torch.equal(problem.c_sub, kept)


def test_cost_cache_and_subsampling_give_the_same_picks_as_recomputing():
    inp = _inp()
    base = {"rounds": 4, "target_copy_threshold": None, "max_pool_for_ot": 150, "chunk": 64}
    cached = select.run_method("gotd", inp, 30, 0, GotdConfig(**base))
    recomputed = select.run_method("gotd", inp, 30, 0, GotdConfig(**base, cost_cache_mb=0))
    assert np.array_equal(cached.indices, recomputed.indices)
    assert np.allclose(cached.scores, recomputed.scores)


def test_a_pool_too_large_for_the_cost_cache_keeps_the_rows_that_fit_and_picks_the_same(monkeypatch):
    """Over `cost_cache_mb` every round recomputed the cost of every pool row outside the OT subsample (a 140k pool x
    2k target: 85 CPU s a select, 48 s now); now the cache keeps whole chunks of them beside the subsample's, up to
    `cost_cache_mb`, and the picks and scores stay the same to the bit."""
    from soupline.select import gotd

    inp, rows, sources = _inp(), [], []
    cost, solve = gotd.Transport.cost, gotd.sinkhorn_potentials
    monkeypatch.setattr(gotd.Transport, "cost", lambda self, r: rows.append(len(r)) or cost(self, r))
    monkeypatch.setattr(gotd, "sinkhorn_potentials", lambda c, *args, **kwargs: sources.append(len(c))
                        or solve(c, *args, **kwargs))
    base = {"rounds": 4, "target_copy_threshold": None, "max_pool_for_ot": 150, "chunk": 64}
    fits = (150 + 150) * 60 * 8 / 2**20  # float64 rows of the 60 targets: the subsample's and 150 more, not all 400
    results = {}
    for mb in (0, fits):
        rows.clear(), sources.clear()
        results[mb] = select.run_method("gotd", inp, 30, 0, GotdConfig(**base, cost_cache_mb=mb))
        kept = 128 if mb else 0  # 2 whole chunks of the 250 rows outside the subsample
        assert sum(rows) == 150 + kept + 4 * (250 - kept) + sum(s - 150 for s in sources)
    assert np.array_equal(results[0].indices, results[fits].indices)
    assert np.array_equal(results[0].scores, results[fits].scores)


def test_sinkhorn_stops_when_float32_rounding_stalls_the_error_above_tol():
    """float32 cannot bring the marginal error of a large problem below its rounding floor: with tol under that
    floor every GOT-D round ran all max_iter iterations (20k texts: 16 x 2000 iterations, 8 min instead of 10 s)."""
    import torch

    from soupline.select.gotd import sinkhorn_potentials

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3000, 16)), rng.normal(size=(300, 16))
    cost = torch.from_numpy(1 - (x / np.linalg.norm(x, axis=1, keepdims=True)) @
                            (y / np.linalg.norm(y, axis=1, keepdims=True)).T)
    f64, _, exact = sinkhorn_potentials(cost, 0.05, tol=1e-12, max_iter=2000)
    f32, _, info = sinkhorn_potentials(cost.float(), 0.05, tol=1e-12, max_iter=2000)
    assert exact["converged"] and not info["converged"] and info["stalled"]
    assert info["iterations"] <= 4 * exact["iterations"] + 200 < 2000
    centred = [(f - f.mean()).double().numpy() for f in (f64, f32)]
    assert np.abs(centred[0] - centred[1]).max() < 1e-5


def test_gotd_on_a_pool_that_coincides_with_its_target_names_the_label_under_stratify():
    """A pool of exact copies of the target makes the median cost, so eps, 0: under select.stratify the error said
    "the pool and target coincide" without naming the label whose pool did."""
    rng = np.random.default_rng(0)
    same = np.tile(np.eye(8, dtype=np.float32)[0], (20, 1))  # label 0: every pool and target row identical
    other = rng.normal(size=(20, 8)).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    pool = select.SelectionInput(np.vstack([same, other]), np.repeat([0, 1], 20), ["copied", "varied"],
                                 target_embeddings=np.vstack([same[:5], other[:5]]),
                                 target_labels=np.repeat([0, 1], 5))
    cfg = GotdConfig(target_copy_threshold=None)
    with pytest.raises(SouplineError, match=r"median pool-target cost is 0 \(the pool of label 'copied' and its "
                                            r"validation texts coincide; .*set select.gotd.eps"):
        select.run_method("gotd", pool, 10, 0, cfg, stratify="balanced")
    pool.target_labels = None  # select.gotd.target: an unlabelled file, whole inside each label
    with pytest.raises(SouplineError, match=r"\(the pool of label 'copied' and the target file coincide; "):
        select.run_method("gotd", pool, 10, 0, cfg, stratify="balanced")
    copies = select.SelectionInput(same, np.zeros(20, dtype=np.int64), ["copied"], target_embeddings=same[:5])
    with pytest.raises(SouplineError, match=r"\(the pool and target coincide\), so eps would be 0"):
        select.run_method("gotd", copies, 10, 0, cfg)
    assert len(select.run_method("gotd", pool, 10, 0, GotdConfig(target_copy_threshold=None, eps=0.05),
                                 stratify="balanced").indices) == 10


def test_info_says_unconverged_when_any_round_was(monkeypatch):
    """selection.json's `converged` / `stalled` / `marginal_error` hold for every round's solve, not the last
    one's alone: a pool whose 15th of 16 solves ran all max_iter iterations (error 2.5e-5 above tol) said
    `converged: True` because the 16th converged."""
    from soupline.select import gotd

    solve, calls = gotd.sinkhorn_potentials, []

    def first_round_short(*args, **kwargs):
        f, g, info = solve(*args, **kwargs)
        calls.append(dict(info))
        if len(calls) == 1:  # as a round that ran out of iterations returns it
            info = {**info, "converged": False, "marginal_error": 1.0}
        return f, g, info

    monkeypatch.setattr(gotd, "sinkhorn_potentials", first_round_short)
    sel = select.run_method("gotd", _inp(), 40, 0, GotdConfig(rounds=4, tol=1e-3))
    assert len(calls) == 4 and calls[-1]["converged"]
    assert not sel.info["converged"] and sel.info["marginal_error"] == 1.0 and sel.info["unconverged_rounds"] == [1]
    monkeypatch.setattr(gotd, "sinkhorn_potentials", solve)
    assert select.run_method("gotd", _inp(), 40, 0, GotdConfig(rounds=4, tol=1e-3)).info["converged"]


def test_stratified_label_without_validation_texts_warns():
    """Under select.stratify a label with no validation text ran GOT-D toward the other labels' texts, silently,
    picking its examples nearest them (own splits whose validation lacks a label)."""
    x, labels = _clusters()
    target = x[labels != 3][::10] + 0.01  # no text of label 3 ('d')
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    inp = select.SelectionInput(x, labels, list("abcd"), target_embeddings=target.astype(np.float32),
                                target_labels=labels[labels != 3][::10])
    with pytest.warns(UserWarning, match="^label 'd': select.stratify: no validation text has this label"):
        sel = select.run_method("gotd", inp, 20, 0, GotdConfig(), stratify="balanced")
    assert sel.info["per_label"]["d"]["target_of_other_labels"] and "target_of_other_labels" not in \
        sel.info["per_label"]["a"]


def test_a_solve_cut_short_by_max_iter_warns():
    """A Sinkhorn solve that runs out of `max_iter` while its error still falls gives approximate potentials: one
    warning line says so and what to raise (before session 45 only selection.json's `converged` did)."""
    with pytest.warns(UserWarning, match=r"max_iter=10 iterations without converging in 2 of 2 round\(s\)"):
        sel = select.run_method("gotd", _inp(), 40, 0, GotdConfig(rounds=2, max_iter=10, eps=0.002))
    assert not sel.info["converged"] and not sel.info["stalled"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select.run_method("gotd", _inp(), 40, 0, GotdConfig(rounds=2))


def test_matrix_scaling_is_pot_s_to_the_bit_and_builds_the_kernel_once_per_solve(monkeypatch):
    """Each Sinkhorn block was a call of POT's `ot.sinkhorn`, which rebuilt exp(-C / eps), its copy over the source
    masses and the plan (1.2 s of a round's 4 s on a 28,840-row pool, whose iterations took 0.6 s): the kernel is now
    built once a solve, and `_scaling` runs POT's iterations on it to the same bits (scalings, errors, stop)."""
    import ot
    import torch

    from soupline.select import gotd

    rng = np.random.default_rng(0)
    cost = torch.from_numpy(rng.uniform(0, 1, (300, 100))).float()
    a = torch.from_numpy(rng.dirichlet(np.ones(300))).float()
    b = torch.full((100,), 0.01)
    far = cost + 0.5 * (torch.arange(300) < 5)[:, None]  # 5 rows whose exp(-C / eps) underflows at eps 0.005
    for c, eps, size, stop, warm in ((cost, 0.05, 100, 1e-6, None), (cost, 0.005, 37, 1e-12, None),
                                     (cost, 0.05, 100, 1e-4, (torch.zeros(300), torch.full((100,), -1.0))),
                                     (far, 0.005, 100, 1e-6, None)):  # out of float range: POT keeps its start
        kernel = torch.exp(c / -eps)
        mine = gotd._scaling(b, kernel, (1 / a).reshape(-1, 1) * kernel, size, stop, warm)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT's "numerical errors at iteration 0"
            _, pot = ot.sinkhorn(a, b, c, eps, numItermax=size, stopThr=stop, log=True, warn=False, warmstart=warm)
        assert mine["niter"] == pot["niter"] and [float(e) for e in mine["err"]] == [float(e) for e in pot["err"]]
        assert torch.equal(mine["u"], pot["u"]) and torch.equal(mine["v"], pot["v"])
    assert mine["niter"] == 0 and not mine["err"]
    exps = []
    for name in ("exp", "exp_"):  # count the exponentials of a whole matrix
        for owner in (torch, torch.Tensor):
            if hasattr(owner, name):
                monkeypatch.setattr(owner, name, lambda *x, _f=getattr(owner, name), **k: exps.append(x[0].numel())
                                    or _f(*x, **k))
    info = gotd.sinkhorn_potentials(cost, 0.002, a=a, tol=1e-7, max_iter=5000)[2]
    assert info["solver"] == "sinkhorn" and info["iterations"] == 481 and exps.count(cost.numel()) == 1  # 5 blocks


def test_each_round_takes_the_c_transform_of_a_pool_row_once(monkeypatch):
    """A nudged round's warm start took the c-transform of every source row, which the round before had just
    computed for its f: 20,000 of the 48,840 rows a round transformed on a 28,840-row pool. The warm start now reuses
    the subsample's; only the picks outside it are transformed twice (from their fresh cost rows, as before)."""
    from soupline.select import gotd

    rows, sources, transform, solve = [], [], gotd.c_transform, gotd.sinkhorn_potentials
    monkeypatch.setattr(gotd, "c_transform", lambda g, cost, *args: rows.append(len(cost)) or transform(g, cost, *args))
    monkeypatch.setattr(gotd, "sinkhorn_potentials", lambda cost, *args, **kwargs: sources.append(len(cost))
                        or solve(cost, *args, **kwargs))
    inp = _inp()
    for cfg, subsample in ((GotdConfig(rounds=4, max_pool_for_ot=150, chunk=64), 150),
                           (GotdConfig(rounds=4, max_pool_for_ot=150, chunk=64, cost_cache_mb=0), 150),
                           (GotdConfig(rounds=4), inp.n)):
        rows.clear(), sources.clear()
        select.run_method("gotd", inp, 40, 0, cfg)
        assert len(sources) == 4 and sum(rows) == 4 * inp.n + sum(s - subsample for s in sources[1:])


def test_cost_cache_is_built_in_place_and_the_rounds_keep_no_copy_of_the_subsample():
    """The torch tensors alive at once while a pool above max_pool_for_ot is set up and solved (a round, a nudged
    round) stay under the cost cache plus 4 subsample matrices (the solve's shifted copy, exp(-C / eps) and that over
    the masses, a chunk's temporaries); joining the cache's chunks with torch.cat held it twice (2x the cache), and a
    kept gathered copy of the subsample's rows and the label term's three matrices came on top."""
    from torch.profiler import ProfilerActivity, profile

    from soupline.select import gotd

    n, m, n_sub = 4000, 500, 500
    x = np.random.default_rng(0).normal(size=(n + m, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    inp = select.SelectionInput(x[:n], np.arange(n) % 4, list("abcd"), target_embeddings=x[n:],
                                target_labels=np.arange(m) % 4)
    cfg = GotdConfig(max_pool_for_ot=n_sub, chunk=256)  # labelled target: label_weight 0.1 (the label term's path)

    def setup_and_two_rounds():
        problem = gotd.Transport(inp, inp.target_embeddings, 0, cfg)
        assert problem.c_all is not None and problem.cfg.label_weight > 0
        problem.potentials()
        problem.potentials(np.arange(0, n, 37), 0.3)

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        setup_and_two_rounds()
    now = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):  # allocations minus frees, in order
        now += event.self_cpu_memory_usage
        peak = max(peak, now)
    cache, sub = n * m * 8, n_sub * m * 8  # float64: a small problem
    assert cache <= peak < cache + 4 * sub
