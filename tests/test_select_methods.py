"""Selection methods: the contract for every registered method, then each method's own math.

Contract (parametrised over REGISTRY, so a new method is covered by adding it): unique sorted
indices, exactly the budget, same seed -> same indices, also per label and after dedup.
DnC: quotas sum to the budget, weights logged per round, the refinement update moves the budget toward
the clusters the scorer gets wrong (on held-out members). DEALRec: the influence solve equals a
direct solve, effort equals a per-example backward pass, coverage sampling. GOT-D: the
potential is the gradient of the entropic OT value, the c-transform extends it, the selection
moves toward the target.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from soupline import config, select
from soupline.config import TrainParams
from soupline.errors import SouplineError
from soupline.select import REGISTRY, base, dealrec, dnc, gotd, quotas

WORDS = ["goal match team coach league", "shares market profit deal bank", "phone chip software battery app",
         "film actor music award stage"]


def make_pool(n=300, d=16, labels=4, seed=0, spread=0.3, model=None):
    """Clustered unit vectors (cluster = label), topic texts, the last cluster's points as target."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(labels, d))
    y = np.arange(n) % labels
    x = centers[y] + spread * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    texts = [" ".join(rng.choice(WORDS[c % len(WORDS)].split(), size=1 + i % 6)) for i, c in enumerate(y)]
    t = x[y == labels - 1][:40]
    t = t + 0.02 * rng.normal(size=t.shape).astype(np.float32)
    extras = {"model_path": model, "train": TrainParams(max_length=16), "device": "cpu"} if model else {}
    return select.SelectionInput(x, y, [f"l{c}" for c in range(labels)], texts=texts,
                                 target_embeddings=(t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32),
                                 target_labels=np.full(len(t), labels - 1), extras=extras)


def strict() -> None:
    """Inside `warnings.catch_warnings()`: every warning an error but the one about picks that repeat a text, as
    make_pool's short texts repeat (its embeddings do not)."""
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", message="the selection holds")


def fast(name):
    """Each method's defaults, with the few knobs that only cost time on 300 points turned down; GOT-D
    as the paper's one-shot rule without the copy guard (these synthetic targets copy pool points)."""
    cfg = REGISTRY[name].config()
    return cfg.model_copy(update={"max_iter": 300, "rounds": 1, "target_copy_threshold": None, "label_weight": 0.0}) \
        if name == "gotd" else cfg


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_contract_and_determinism(name, tiny_model):
    pool = make_pool(model=tiny_model)
    a = select.run_method(name, pool, 30, 7, fast(name))
    b = select.run_method(name, pool, 30, 7, fast(name))
    assert len(a.indices) == 30 and np.all(np.diff(a.indices) > 0) and len(a.scores) == 30
    assert 0 <= a.indices[0] and a.indices[-1] < pool.n
    assert np.array_equal(a.indices, b.indices) and np.allclose(a.scores, b.scores)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_stratified_with_a_single_example_class_and_dedup(name, tiny_model):
    pool = make_pool(n=41, model=tiny_model)
    pool.labels[-1] = 4  # one example of a fifth label
    pool.label_names.append("l4")
    pool.embeddings[20] = pool.embeddings[0]  # an exact duplicate (same label: 20 % 4 == 0)
    sel = select.run_method(name, pool, 30, 1, fast(name), stratify="label", dedup_threshold=0.9999)
    assert 20 not in sel.indices.tolist()
    expected = quotas.label_quotas(np.delete(pool.labels, 20), 30)
    assert np.bincount(pool.labels[sel.indices], minlength=5).tolist() == [expected.get(c, 0) for c in range(5)]
    assert expected[4] == 1 and pool.n - 1 in sel.indices  # the lone example's quota is 1, so it is taken


# ---- generic options and bad input ------------------------------------------------------------

def test_method_specs_name_a_variant_or_fail_in_one_line():
    """The benchmarks' `name:key=value,...` specs: YAML values, the method's own validation."""
    name, cfg = select.method_config("gotd:rounds=1,target_copy_threshold=null")
    assert name == "gotd" and cfg.rounds == 1 and cfg.target_copy_threshold is None
    assert select.method_config("dnc")[1] == dnc.DnCConfig()
    with pytest.raises(SouplineError, match="unknown selection method 'kmean'; known: dealrec, dnc"):
        select.method_config("kmean")
    with pytest.raises(SouplineError, match="write name or name:key=value"):
        select.method_config("gotd:rounds")


def test_largest_remainder_sums_exactly_and_respects_caps():
    assert quotas.largest_remainder(np.array([1, 1, 1]), 10).tolist() == [4, 3, 3]
    q = quotas.largest_remainder(np.array([5.0, 1.0, 1.0]), 9, caps=np.array([2, 10, 10]))
    assert q.tolist() == [2, 4, 3] and q.sum() == 9  # the capped part's excess is re-split
    assert quotas.largest_remainder(np.array([0.0, 0.0]), 3, caps=np.array([1, 5])).tolist() == [1, 2]


def test_label_quotas_split_counts_in_exact_arithmetic():
    """In floats, equal remainders (32 x 20 / 140 and 25 x 20 / 140, both 4/7) came out a few ulps apart, so the
    smaller labels took the leftover units the larger ones tie-break to: 4/4/4/4/4 for a proportional 5/3/4/5/3.
    Against largest remainders in fractions (ties: larger label, then lower id) on random label counts."""
    from fractions import Fraction

    assert quotas.label_quotas(np.repeat(np.arange(5), [32, 25, 26, 32, 25]), 20) == {0: 5, 1: 3, 2: 4, 3: 5, 4: 3}
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(1, 60, size=rng.integers(2, 8))
        budget = int(rng.integers(1, counts.sum() + 1))
        shares = [Fraction(int(c) * budget, int(counts.sum())) for c in counts]
        base = [int(s) for s in shares]
        order = sorted(range(len(counts)), key=lambda i: (-(shares[i] - base[i]), -counts[i], i))
        for i in order[:budget - sum(base)]:
            base[i] += 1
        labels = np.repeat(np.arange(len(counts)), counts)
        assert quotas.label_quotas(labels, budget) == {i: q for i, q in enumerate(base) if q > 0}, (counts, budget)


def test_budget_beyond_candidates_nan_and_bad_stratify():
    pool = make_pool(n=40)
    with pytest.raises(SouplineError, match="pool has 40"):
        select.run_method("dnc", pool, 41, 0, fast("dnc"))
    pool.embeddings[20:] = pool.embeddings[:20]
    with pytest.raises(SouplineError, match=r"only 20 pool example\(s\) remain"):
        select.run_method("gotd", pool, 21, 0, fast("gotd"), dedup_threshold=0.999)
    with pytest.raises(SouplineError, match="stratify"):
        select.run_method("dnc", pool, 5, 0, fast("dnc"), stratify="labels")
    pool.embeddings[3, 1] = np.nan
    with pytest.raises(SouplineError, match="NaN or inf"):
        select.run_method("dealrec", pool, 5, 0, fast("dealrec"))


@pytest.mark.parametrize("key", ["select.gotd.nope=1", "select.dnc.rounds=0", "select.dealrec.score=aum",
                                 "select.dnc.k=0", "select.gotd.rounds=0", "select.gotd.nudge=1"])
def test_bad_method_params_are_one_line_errors(key):
    with pytest.raises(SouplineError, match=key.split("=")[0].rsplit(".", 1)[0]):
        config.load("nonexistent.yaml", [key])


def test_method_params_load_from_overrides():
    p = config.load("nonexistent.yaml", ["select.method=dnc", "select.dnc.k=auto", "select.dealrec.solver=cg",
                                         "select.gotd.label_weight=0.5"])
    assert (p.select.dnc.k, p.select.dealrec.solver, p.select.gotd.label_weight) == ("auto", "cg", 0.5)


def test_missing_inputs_are_clear_errors():
    pool = make_pool(n=60)
    pool.texts = None
    with pytest.raises(SouplineError, match="effort_weight=0"):
        select.run_method("dealrec", pool, 10, 0, fast("dealrec"))
    with pytest.raises(SouplineError, match="q=length needs the pool texts"):
        select.run_method("dnc", pool, 10, 0, dnc.DnCConfig(q="length"))
    with pytest.raises(SouplineError, match="hard_prune"):
        select.run_method("dealrec", pool, 50, 0, dealrec.DealRecConfig(effort_weight=0, hard_prune=0.5))
    with pytest.raises(SouplineError, match="labelled target"):
        select.run_method("gotd", select.SelectionInput(pool.embeddings, pool.labels, pool.label_names,
                                                        target_embeddings=pool.target_embeddings),
                          10, 0, gotd.GotdConfig(label_weight=1.0))
    pool.target_embeddings = pool.target_embeddings[:0]
    with pytest.raises(SouplineError, match="non-empty target set"):
        select.run_method("gotd", pool, 10, 0, fast("gotd"))


def _target_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def _with_target(pool, **change):
    for key, value in change.items():
        setattr(pool, key, value)
    return pool


BAD_INPUT = {  # case -> (call(pool, tmp_path), text the one-line message must contain)
    "budget above the pool": (lambda pool, _: select.run_method("kmeans", pool, 61, 0, fast("kmeans")),
                              "pool has 60"),
    "budget count above the pool": (lambda pool, _: select.resolve_budget(61, pool.n), "pool has only 60"),
    "budget fraction below one example": (lambda pool, _: select.resolve_budget(0.001, pool.n),
                                          "less than one example"),
    "budget above what dedup leaves": (
        lambda pool, _: select.run_method("dnc", _with_target(pool, embeddings=np.tile(pool.embeddings[:5], (12, 1))),
                                          6, 0, fast("dnc"), dedup_threshold=0.999), "only 5 pool example(s) remain"),
    "budget above what exact-copy dedup leaves": (  # at 1.0 the threshold cannot be raised
        lambda pool, _: select.run_method("random", _with_target(pool, embeddings=np.tile(pool.embeddings[:5], (12, 1))),
                                          6, 0, fast("random"), dedup_threshold=1.0),
        "fewer than the budget 6; set select.dedup_threshold to null (at 1.0 it drops exact copies only), or lower "
        "select.budget"),
    "budget above what near-copy dedup leaves": (
        lambda pool, _: select.run_method("random", _with_target(pool, embeddings=np.tile(pool.embeddings[:5], (12, 1))),
                                          6, 0, fast("random"), dedup_threshold=0.99),
        "fewer than the budget 6; raise select.dedup_threshold or set it to null, or lower select.budget"),
    "budget above what target_copy_threshold leaves": (  # l3's 15 examples all copy its target texts
        lambda pool, _: select.run_method("gotd", pool, 46, 0, fast("gotd").model_copy(
            update={"target_copy_threshold": 0.95})),
        "leaves 45 of 60 candidates (the rest nearly copy a target text), fewer than the budget 46; raise "
        "select.gotd.target_copy_threshold or set it to null, or lower select.budget"),
    "budget above what hard_prune leaves": (
        lambda pool, _: select.run_method("dealrec", pool, 50, 0, dealrec.DealRecConfig(effort_weight=0,
                                                                                        hard_prune=0.5)),
        "hard_prune=0.5 leaves 30 examples, fewer than the budget 50; lower hard_prune"),
    "empty target set": (lambda pool, _: select.run_method(
        "gotd", _with_target(pool, target_embeddings=pool.target_embeddings[:0]), 10, 0, fast("gotd")),
        "non-empty target set"),
    "no target set": (lambda pool, _: select.run_method("gotd", _with_target(pool, target_embeddings=None), 10, 0,
                                                        fast("gotd")), "non-empty target set"),
    "target file empty": (lambda _, tmp: gotd.read_target(_target_file(tmp, "t.jsonl", "")),
                          "t.jsonl (select.gotd.target) is empty"),
    "target file with blank texts": (
        lambda _, tmp: gotd.read_target(_target_file(tmp, "t.jsonl", '{"text": ""}\n{"text": "  "}\n{"text": null}\n'
                                                           '{"text": "\\u200b \\ufeff"}\n')),
        "has no text: column 'text' is empty or blank in each of its 4 row(s)"),
    "target csv header only": (
        lambda _, tmp: gotd.read_target(_target_file(tmp, "t.csv", "text\n\n\n")), "has no text: it has no rows"),
    "target file that does not exist": (
        lambda _, tmp: gotd.read_target(tmp / "nope.csv"), "nope.csv' does not exist; give a file or folder "
        "(select.gotd.target)"),
    "target file without a text column": (
        lambda _, tmp: gotd.read_target(_target_file(tmp, "t.csv", "body,label\nhello,a\n")), "no text column 'text'"),
    "target file set but not passed": (
        lambda pool, _: select.run_method("gotd", pool, 10, 0, gotd.GotdConfig(target="target.jsonl")),
        "select.gotd.target='target.jsonl' is set"),
    "NaN in pool embeddings": (lambda pool, _: select.run_method(
        "dnc", _with_target(pool, embeddings=np.where(np.arange(pool.n)[:, None] == 3, np.nan, pool.embeddings)),
        5, 0, fast("dnc")), "NaN or inf"),
    "inf in pool embeddings": (lambda pool, _: select.run_method(
        "random", _with_target(pool, embeddings=np.where(np.arange(pool.n)[:, None] == 3, np.inf, pool.embeddings)),
        5, 0, fast("random")), "NaN or inf"),
    "inf in target embeddings": (lambda pool, _: select.run_method(
        "gotd", _with_target(pool, target_embeddings=pool.target_embeddings * np.float32(np.inf)), 5, 0,
        fast("gotd")), "target embeddings contain NaN or inf"),
    "unknown method sub-section key": (lambda *_: config.load("nonexistent.yaml", ["select.gotd.nope=1"]),
                                       "select.gotd.nope"),
    "unknown method": (lambda pool, _: select.run_method("kmeanz", pool, 5, 0, fast("kmeans")),
                       "unknown selection method"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_clear_line(case, tmp_path):
    call, match = BAD_INPUT[case]
    with pytest.raises(SouplineError, match=re.escape(match)) as err:
        call(make_pool(n=60), tmp_path)
    assert "\n" not in str(err.value) and str(err.value).strip() == str(err.value)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_stratify_label_gives_a_single_example_class_its_share_not_an_error(name, tiny_model):
    pool = make_pool(n=61, model=tiny_model)
    pool.labels[-1] = 4  # the only example of label l4
    pool.label_names.append("l4")
    sel = select.run_method(name, pool, 61, 0, fast(name), stratify="label")  # every example, l4's one included
    assert sel.indices.tolist() == list(range(61))
    small = select.run_method(name, pool, 6, 0, fast(name), stratify="label")  # l4's share rounds to 0
    assert len(small.indices) == 6 and pool.n - 1 not in small.indices


def test_target_file_texts_are_read(tmp_path):
    path = _target_file(tmp_path, "t.jsonl", '{"body": "a goal"}\n{"body": ""}\n{"body": "chip"}\n')
    assert gotd.read_target(path, "body") == ["a goal", "chip"]
    pool = make_pool()
    pool.extras["target_source"] = path
    assert len(select.run_method("gotd", pool, 10, 0, gotd.GotdConfig(target=path, max_iter=300)).indices) == 10


# ---- DnC ----------------------------------------------------------------------------------------

def test_dnc_quotas_sum_to_budget_and_weights_logged_per_round():
    pool = make_pool()
    sel = select.run_method("dnc", pool, 50, 0, dnc.DnCConfig(k=6, rounds=3))
    rounds = sel.info["rounds"]
    assert [r["budget"] for r in rounds] == [17, 17, 16]
    assert all(sum(r["quotas"]) == r["budget"] for r in rounds)
    assert all(len(r["weights"]) == 6 and abs(sum(r["weights"]) - 1) < 1e-4 for r in rounds)
    assert rounds[0]["weights"] == [pytest.approx(1 / 6, abs=1e-6)] * 6  # refinement starts uniform
    assert all("cluster_scores" in r and min(r["weights"]) >= 1e-3 - 1e-6 for r in rounds[1:])
    assert rounds[1]["weights"] != rounds[0]["weights"]
    # first-round quotas follow cluster sizes (paper rule, weights still uniform)
    sizes = np.array(sel.info["cluster_sizes"])
    assert rounds[0]["quotas"] == quotas.largest_remainder(sizes / 6, 17, caps=sizes).tolist()


def test_dnc_refinement_moves_the_budget_toward_the_clusters_the_scorer_gets_wrong(monkeypatch):
    """Paper Alg. 1: w_j <- w_j * s_j / sum_c s_c (s_j: the scorer's mean cross-entropy on members not yet
    selected), floored at weight_floor and renormalised; the next round's quotas follow weight x size. A
    cluster the scorer gets right keeps the floor, the one it gets most wrong gets the most budget."""
    pool = make_pool(spread=0.05)  # tight clusters: k-means with k = 4 finds the 4 labels
    calls = []

    def scorer(pool_, chosen, held, cfg, seed):  # cross-entropy 0, 1, 2, 3 nats for labels 0, 1, 2, 3
        calls.append((chosen, held))
        return np.exp(-pool_.labels[held].astype(np.float64)), None  # and no training that failed

    monkeypatch.setitem(dnc.SCORERS, "proxy", scorer)
    sel = select.run_method("dnc", pool, 80, 0, dnc.DnCConfig(k=4, rounds=2, q="uniform", weight_floor=0.05))
    assert sel.info["cluster_sizes"] == [75] * 4
    (chosen, held), = calls
    assert len(chosen) == 40 and len(held) == 4 * 32 and not np.isin(held, chosen).any()  # held out, not memorised
    first, second = sel.info["rounds"]
    scores = np.array(second["cluster_scores"])
    order = np.argsort(scores)  # clusters from the best-scored to the worst
    assert scores[order].tolist() == pytest.approx([0, 1, 2, 3])
    assert np.array(second["weights"])[order].tolist() == pytest.approx([0.05 / 1.05, 1 / 6 / 1.05, 2 / 6 / 1.05,
                                                                         3 / 6 / 1.05], abs=1e-6)
    assert first["quotas"] == [10] * 4 and np.array(second["quotas"])[order].tolist() == [2, 6, 13, 19]


def test_dnc_runs_no_more_rounds_than_budget_over_k():
    pool = make_pool()
    rounds = select.run_method("dnc", pool, 8, 0, dnc.DnCConfig(k=5, rounds=3)).info["rounds"]
    assert [r["budget"] for r in rounds] == [8]  # 8 // 5 = 1 round: a round of 3 could not reach 5 clusters
    rounds = select.run_method("dnc", pool, 10, 0, dnc.DnCConfig(k=5, rounds=3)).info["rounds"]
    assert [r["budget"] for r in rounds] == [5, 5]


def test_dnc_warns_when_the_budget_cuts_its_rounds():
    """Fewer rounds than `rounds` ran without a word where k was not set above the budget (which warns itself): k
    at least the number of labels (null), or a stratified label's small quota, left static kMQ."""
    pool = make_pool(labels=12)
    with pytest.warns(UserWarning, match=r"rounds=3: 1 round\(s\) run, .* a budget of 20 over k=12 clusters has "
                                         r"room for 1; raise select.budget or lower select.dnc.k"):
        assert len(select.run_method("dnc", pool, 20, 0, dnc.DnCConfig()).info["rounds"]) == 1
    with pytest.warns(UserWarning, match=r"rounds=3: 2 round\(s\) run, .* the tightest label's quota, 2 over its "
                                         r"k=1 clusters \(select.stratify\), has room for 2; raise select.budget for"):
        select.run_method("dnc", make_pool(), 9, 0, dnc.DnCConfig(), stratify="label")
    with warnings.catch_warnings():
        strict()
        assert len(select.run_method("dnc", pool, 36, 0, dnc.DnCConfig()).info["rounds"]) == 3


def test_dnc_k_larger_than_the_pool_warns_and_uses_the_pool_size():
    pool = make_pool(n=40)
    with pytest.warns(UserWarning, match=r"select.dnc.k=50 is more than the 40 pool example\(s\).*using k=40"):
        sel = select.run_method("dnc", pool, 8, 0, dnc.DnCConfig(k=50, rounds=1))
    assert sel.info["k"] == 40 and len(sel.indices) == 8


def test_dnc_k_above_the_budget_and_a_constant_quality_column_warn():
    """k above the budget left clusters without an example and cut refinement to one round; a quality column with
    one value made the draw uniform: both silently."""
    pool = make_pool()
    with pytest.warns(UserWarning, match=r"select.dnc.k=50 is more than the budget of 20 .* at most 20 clusters"):
        sel = select.run_method("dnc", pool, 20, 0, dnc.DnCConfig(k=50))
    assert len(sel.info["rounds"]) == 1
    pool.columns = {"score": np.full(pool.n, 3.0)}
    with pytest.warns(UserWarning, match=r"column 'score' holds one value \(3\) for every pool example"):
        select.run_method("dnc", pool, 20, 0, dnc.DnCConfig(q="column:score"))
    with warnings.catch_warnings():
        strict()  # neither warns where it should not
        pool.columns = {"score": np.arange(pool.n, dtype=float)}
        select.run_method("dnc", pool, 20, 0, dnc.DnCConfig(k=20, q="column:score", rounds=1))  # 3 rounds: 1 warns


def test_a_warning_every_label_gives_under_stratify_is_said_once():
    """Under select.stratify each label runs the method on its quota: dnc's "k above the budget" came once per
    label (4 lines here, 100 at 100 labels), each with its own numbers."""
    pool = make_pool()  # 4 labels of 75
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        select.run_method("dnc", pool, 20, 0, dnc.DnCConfig(k=10), stratify="label")
    said = [str(w.message) for w in caught if "more than the budget" in str(w.message)]
    assert len(said) == 1, said
    assert re.fullmatch(r"label 'l\d': select.dnc.k=10 is more than the budget of 5 .* \(likewise for 3 other "
                        r"label\(s\): 'l\d', 'l\d', 'l\d'\)", said[0]), said[0]


def test_a_warning_a_filter_ignores_stays_ignored_under_stratify(monkeypatch):
    """Each label's warnings are gathered to be said once; "always" put in front of the filters while gathering them
    let through what a filter ignores (soupline's own: sklearn's "number of unique classes"), re-said with a
    `label '...': ` prefix that the filter's message pattern no longer matches."""
    import dataclasses

    from soupline.select.base import REGISTRY

    method = REGISTRY["random"]

    def noisy(pool, quota, seed, cfg):
        warnings.warn("The number of unique classes is greater than 50% of the number of samples.")
        return method.fn(pool, quota, seed, cfg)

    monkeypatch.setitem(REGISTRY, "random", dataclasses.replace(method, fn=noisy))
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        select.run_method("random", make_pool(), 20, 0, method.config(), stratify="label")
    assert not [str(w.message) for w in caught if "unique classes" in str(w.message)]


def test_dnc_covers_clusters_prefers_agreeing_labels_and_picks_k():
    pool = make_pool()
    flipped = np.arange(0, 300, 10)  # 10% label noise: neighbours disagree with these
    pool.labels[flipped] = (pool.labels[flipped] + 1) % 4
    sel = select.run_method("dnc", pool, 60, 0, dnc.DnCConfig(rounds=1, temperature=0.05))
    assert set(np.unique(pool.labels[sel.indices])) == {0, 1, 2, 3}
    assert np.isin(sel.indices, flipped).mean() < 0.05
    auto = select.run_method("dnc", pool, 64, 0, dnc.DnCConfig(k="auto", rounds=1))
    assert str(auto.info["k"]) in auto.info["silhouette"] and auto.info["k"] >= 4
    assert select.run_method("dnc", pool, 64, 0, dnc.DnCConfig(rounds=1)).info["k"] == 8  # budget / 8
    assert select.run_method("dnc", pool, 16, 0, dnc.DnCConfig(rounds=1)).info["k"] == 4  # at least the labels


def test_knn_agreement_excludes_self():
    x = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 1, 1]]
    q = dnc.knn_agreement(x, np.array([0, 0, 1, 1, 1, 1]), 2)
    assert q.tolist() == [0.5, 0.5, 0.0, 1.0, 1.0, 1.0]


def test_knn_agreement_approximate_search_on_large_pools_tracks_the_exact_one():
    """Above knn_exact_max the neighbours come from k-means cells searching their nearest cells:
    near-linear, seeded, and on a clustered pool with 10 % flipped labels close to the exact search."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)).astype(np.float32)
    y = rng.integers(0, 20, 4000)
    x = centres[y] + 0.3 * rng.normal(size=(4000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.where(rng.random(4000) < 0.1, rng.integers(0, 20, 4000), y)
    exact = dnc.knn_agreement(x, y, 10)
    approx = dnc.knn_agreement(x, y, 10, exact_max=1000, probes=4, seed=0)
    assert not np.array_equal(exact, approx)  # the cells were searched, not the flat index
    assert np.abs(exact - approx).mean() < 0.05 and np.corrcoef(exact, approx)[0, 1] > 0.95
    assert np.array_equal(exact > 0.5, approx > 0.5)  # every flipped label is still found out
    assert np.array_equal(approx, dnc.knn_agreement(x, y, 10, exact_max=1000, probes=4, seed=0))


def test_dnc_quality_column_prefers_high_values_and_follows_stratify_subsets():
    pool = make_pool()
    good = np.arange(pool.n) % 3 == 0
    pool.columns["rating"] = np.where(good, 5.0, 1.0)
    cfg = dnc.DnCConfig(q="column:rating", rounds=1, temperature=0.05)
    sel = select.run_method("dnc", pool, 60, 0, cfg)
    assert good[sel.indices].mean() > 0.95  # a third of the pool is rated 5: nearly every pick is one of them
    assert np.allclose(sel.scores, good[sel.indices])  # q scaled to [0, 1]
    strat = select.run_method("dnc", pool, 60, 0, cfg, stratify="label")  # per-label sub-pools carry the column
    assert good[strat.indices].mean() > 0.95
    uniform = select.run_method("dnc", pool, 60, 0, dnc.DnCConfig(q="uniform", rounds=1))
    assert good[uniform.indices].mean() < 0.6


def test_stratified_dnc_and_dealrec_score_across_labels():
    """Per label, neighbour agreement is 1 everywhere and DEALRec's surrogate has one class: both would be
    random. Under select.stratify they score the whole pool first, so label noise is still seen (inside
    each cluster: the flipped points of a label form clusters of their own, which keep their share)."""
    pool = make_pool()
    flipped = np.arange(0, 300, 10)  # 10% label noise: the neighbours disagree with these
    pool.labels[flipped] = (pool.labels[flipped] + 1) % 4
    agreement = dnc.knn_agreement(pool.embeddings, pool.labels, 10)
    knn = select.run_method("dnc", pool, 60, 0, dnc.DnCConfig(rounds=1, temperature=0.05), stratify="label")
    assert knn.info["q"] == "knn_agreement" and set(knn.info["per_label"]) == {"l0", "l1", "l2", "l3"}
    assert np.allclose(knn.scores, agreement[knn.indices]) and len(np.unique(knn.scores)) > 1
    uniform = select.run_method("dnc", pool, 60, 0, dnc.DnCConfig(rounds=1, q="uniform"), stratify="label")
    assert agreement[knn.indices].mean() > agreement[uniform.indices].mean() + 0.05
    el2n = dealrec.DealRecConfig(score="el2n", strata=5)
    strat = select.run_method("dealrec", pool, 60, 0, el2n, stratify="label")
    whole = dealrec.scores(pool, 0, el2n)[0]
    assert np.allclose(strat.scores, whole[strat.indices]) and len(np.unique(strat.scores)) > 10
    assert strat.info["scored_across_labels"] == {}  # scored once, across labels; el2n solves no influence


def test_stratified_dnc_refines_across_labels_within_each_quota():
    """Under select.stratify each label is clustered on its own and spends its quota, but the refinement still
    runs: the scorer, trained on every label picked so far, scores the clusters of all labels between rounds
    (run inside one label, as before, it had a single class and every round after the first was skipped)."""
    pool = make_pool()
    cfg = dnc.DnCConfig(k=3, rounds=3)
    sel = select.run_method("dnc", pool, 60, 0, cfg, stratify="balanced")
    assert np.bincount(pool.labels[sel.indices]).tolist() == [15] * 4 == list(sel.info["quotas"].values())
    rounds = sel.info["rounds"]
    assert [r["budget"] for r in rounds] == [20, 20, 20]
    assert all("cluster_scores" in r and "update" not in r for r in rounds[1:])
    groups = [slice(3 * i, 3 * i + 3) for i in range(4)]  # 3 clusters per label, in label order
    for r in rounds:
        assert all(abs(sum(r["weights"][g]) - 1) < 1e-4 for g in groups)
        assert [sum(r["quotas"][g]) for g in groups] == [5, 5, 5, 5]  # each label spends its quota evenly
    assert rounds[2]["weights"] != rounds[0]["weights"]
    assert all(v["k"] == 3 and sum(v["cluster_sizes"]) == 75 for v in sel.info["per_label"].values())
    again = select.run_method("dnc", pool, 60, 0, cfg, stratify="balanced")
    assert np.array_equal(sel.indices, again.indices)
    small = select.run_method("dnc", pool, 6, 0, cfg, stratify="label")  # 6 over 4 labels: two get 2, two get 1
    assert len(small.indices) == 6 and len(small.info["rounds"]) == 1  # a round per cluster at most


@pytest.mark.parametrize("stratify", [None, "label", "balanced"])
@pytest.mark.parametrize("k, rounds", [(2, 1), (3, 2), (5, 3)])
def test_dnc_with_empty_clusters_spends_every_quota(stratify, k, rounds):
    """A label whose examples are copies of one text: k-means leaves every cluster but one empty, the last one
    too, and the refinement sized its weights by the largest cluster id seen (IndexError under stratify, and
    without it when the pool's last cluster was empty)."""
    pool = make_pool(n=40, labels=2)
    copies = np.flatnonzero(pool.labels == 1) if stratify else np.arange(pool.n)
    pool.embeddings[copies] = pool.embeddings[copies[0]]
    cfg = dnc.DnCConfig(k=k, rounds=rounds)
    for budget in (4, 2 * k, 12):
        sel = select.run_method("dnc", pool, budget, 0, cfg, stratify=stratify or "none")
        sizes = sel.info["per_label"]["l1"]["cluster_sizes"] if stratify else sel.info["cluster_sizes"]
        assert len(sizes) == k and 0 in sizes and (sizes[-1] == 0 or not stratify)
        if stratify:
            assert np.bincount(pool.labels[sel.indices]).tolist() == list(sel.info["quotas"].values())


@pytest.mark.parametrize("values, match", [
    (None, "has no column 'rating'.*prepare.keep_columns"),
    ({"ratings": np.ones(300)}, "has no column 'rating'.*did you mean column:ratings"),
    ({"text": None}, "column:text: the text is no numeric score"),
    (np.array(["x"] * 300, dtype=object), "not numeric"),
    (np.r_[np.nan, np.ones(299)], "1 of 300 values are missing"),
])
def test_dnc_quality_column_errors_say_what_to_fix(values, match):
    pool, q = make_pool(), "column:rating"
    if isinstance(values, dict):  # another column than the one asked for
        pool.columns.update({k: v for k, v in values.items() if v is not None})
        q = "column:text" if "text" in values else q
    elif values is not None:
        pool.columns["rating"] = values
    with pytest.raises(SouplineError, match=match):
        select.run_method("dnc", pool, 30, 0, dnc.DnCConfig(q=q))


@pytest.mark.parametrize("q", ["colum:rating", "quality"])
def test_dnc_unknown_quality_is_a_params_error(q):
    with pytest.raises(SouplineError, match="q must be one of"):
        config.load("nonexistent.yaml", ["select.method=dnc", f"select.dnc.q={q}"])
    with pytest.raises(ValueError, match="q must be one of"):
        dnc.DnCConfig(q="column: ")


def _finetune_pool(tiny_model):
    pool = make_pool(model=tiny_model)
    pool.extras["train"] = TrainParams(max_length=16, min_steps=30, epochs=1, learning_rates=[1e-2],
                                          head_learning_rate=1e-2)
    pool.extras["validation"] = (pool.texts[:24], pool.labels[:24])
    return pool


@pytest.mark.slow  # about 35 s: three fine-tunes of the tiny model
def test_dnc_finetune_scorer_trains_the_train_stage_model_and_is_deterministic(tiny_model):
    pool = _finetune_pool(tiny_model)
    chosen, held = np.arange(0, 300, 5), np.arange(1, 300, 5)
    p, failed = dnc.finetune_gold_proba(pool, chosen, held, dnc.DnCConfig(), 0)
    assert failed is None and p.shape == (len(held),) and np.all((p > 0) & (p <= 1))
    assert p.mean() > 0.3  # 4 labels, chance 0.25: the tiny model fine-tuned on 60 texts learnt something
    cfg = dnc.DnCConfig(k=4, rounds=2, scorer="finetune")
    a, b = (select.run_method("dnc", pool, 24, 7, cfg) for _ in range(2))
    assert np.array_equal(a.indices, b.indices) and a.info["scorer"] == "finetune"
    assert len(a.info["rounds"][1]["cluster_scores"]) == 4 and min(a.info["rounds"][1]["cluster_scores"]) > 0


def test_a_dnc_finetune_scorer_whose_training_failed_is_warned_of_naming_the_round(tiny_model):
    """A learning rate too high for the scorer (train.learning_rates' first) wrecks the model that scores the
    clusters: its scores steered the next round silently (finetune's `failed` was dropped). One line names the
    round and what to try; the round's log records why."""
    pool = _finetune_pool(tiny_model)
    pool.extras["train"] = pool.extras["train"].model_copy(update={"learning_rates": [10.0], "min_steps": 4})
    with pytest.warns(UserWarning, match=r"^select\.dnc\.scorer=finetune: round 2's scorer, fine-tuned on the 12 "
                                         r"examples selected so far, failed training \(learning rate 10, head 0\.01\): "
                                         r"its validation accuracy ended at .*; its cluster scores steer round 2 all "
                                         r"the same; lower train\.learning_rates \(the first rate is the scorer's\) or "
                                         r"train\.head_learning_rate, or use select\.dnc\.scorer: proxy$"):
        picked = select.run_method("dnc", pool, 24, 7, dnc.DnCConfig(k=4, rounds=2, scorer="finetune"))
    assert picked.info["rounds"][1]["scorer_failed"].startswith("its validation accuracy ended at")
    assert "scorer_failed" not in picked.info["rounds"][0]


def test_dnc_finetune_scorer_needs_the_model_and_a_trainable_method(tiny_model):
    with pytest.raises(SouplineError, match="needs the pool texts, the base model and the validation split"):
        select.run_method("dnc", make_pool(), 24, 0, dnc.DnCConfig(k=4, rounds=2, scorer="finetune"))
    pool = _finetune_pool(tiny_model)
    pool.extras["train"] = TrainParams(method="probe")
    with pytest.raises(SouplineError, match="train.method is probe"):
        select.run_method("dnc", pool, 24, 0, dnc.DnCConfig(k=4, rounds=2, scorer="finetune"))


# ---- DEALRec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [2, 3])
def test_dealrec_influence_solve_matches_direct_solve(labels):
    import torch
    from torch.func import grad, jacrev

    pool = make_pool(n=120, d=5, labels=labels, spread=1.0)
    p, onehot, w = dealrec.surrogate_probs(pool.embeddings, pool.labels, 1.0)
    xa = dealrec.augment(pool.embeddings)
    xt, yt = torch.from_numpy(xa), torch.from_numpy(pool.labels)

    def loss(t):
        return torch.nn.functional.cross_entropy(xt @ t.view(w.shape).T, yt)

    theta = torch.from_numpy(w.ravel().copy())
    h = jacrev(jacrev(loss))(theta).numpy() + 0.01 * np.eye(w.size)
    v = grad(loss)(theta).numpy()
    direct = np.linalg.solve(h, v).reshape(w.shape)
    assert np.allclose(dealrec.dense_hessian(p, xa, 0.01), h, atol=1e-6)
    for solver in ("cholesky", "cg"):
        u, info = dealrec.solve_influence(p, onehot, w, xa, 0.01, solver, 0, 200, 1e-10)
        assert info["solver"] == solver and np.allclose(u, direct, rtol=1e-4, atol=1e-8 * np.abs(direct).max())
    # the score of example i is its own gradient dotted with u
    infl, _, _ = dealrec.influence_scores(pool.embeddings, pool.labels, dealrec.DealRecConfig(solver="cholesky"))
    g5 = grad(lambda t: torch.nn.functional.cross_entropy(xt[5:6] @ t.view(w.shape).T, yt[5:6]))(theta).numpy()
    assert infl[5] == pytest.approx(float(g5 @ direct.ravel()), rel=1e-4)


def test_dealrec_warns_when_conjugate_gradients_stop_short():
    """A CG solve cut off by cg_max_iter gives approximate influence scores: one warning says so (before, only
    selection.json's cg_converged did), and a solve that converges warns of nothing."""
    pool = make_pool(n=120, d=5, labels=3, spread=1.0)
    with pytest.warns(UserWarning, match=r"cg_max_iter=1 with a relative residual .*raise select.dealrec.cg_max_iter"):
        sel = select.run_method("dealrec", pool, 30, 0, dealrec.DealRecConfig(score="influence_effort",
                                effort_weight=0, solver="cg", cg_max_iter=1))
    assert sel.info["cg_converged"] is False
    with warnings.catch_warnings():
        strict()
        sel = select.run_method("dealrec", pool, 30, 0, dealrec.DealRecConfig(effort_weight=0, solver="cg"))
    assert sel.info["cg_converged"] is True


@pytest.mark.parametrize("cfg,recorded", [(dict(effort_weight=0), "influence"), (dict(score="el2n"), "el2n")])
def test_dealrec_info_names_the_score_it_stratified(cfg, recorded):
    """`effort_weight: 0` stratifies influence alone: selection.json's info said `influence_effort`."""
    sel = select.run_method("dealrec", make_pool(n=120, d=5, labels=3), 30, 0, dealrec.DealRecConfig(**cfg))
    assert sel.info["score"] == recorded


@pytest.mark.parametrize("which,head_init,pooling,method", [("head", "probe", "mean_normalized", "full"),
                                                              ("last_layer", "probe", "mean_normalized", "full"),
                                                              ("head", "random", "mean_normalized", "full"),
                                                              ("last_layer", "random", "cls", "full"),
                                                              ("trainable", "probe", "mean_normalized", "full"),
                                                              ("trainable", "probe", "mean_normalized", "lora")])
def test_dealrec_effort_matches_per_example_backward(which, head_init, pooling, method, tiny_model):
    """Effort = each text's own gradient norm on the model train starts from (LP-FT: head = probe),
    over the head, head + last layer, or what train.method trains (full: all but the frozen word
    embeddings; lora: adapters + head)."""
    import torch
    from transformers import AutoTokenizer

    from soupline.classifier import init_model
    from soupline.evaluate import tokenize
    from soupline.probe import fit_at
    from soupline.train import apply_lora, head_features, set_head

    texts = ["goal match team", "shares market", "phone chip software battery", "film", "goal team"]
    labels = np.array([0, 1, 2, 3, 0])
    train = TrainParams(max_length=16, pooling=pooling, head_init=head_init, head_init_seed=3, method=method)
    got = dealrec.effort_scores(texts, labels, list("abcd"), tiny_model, train, which, 2, "cpu", probe_c=10.0)
    model = init_model(tiny_model, list("abcd"), 3, pooling).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    if head_init == "probe":
        probe = fit_at(head_features(model, tok, tokenize(tok, texts, 16), 4, "cpu"), labels, 4, 10.0)
        set_head(model, probe)
    if which == "trainable":
        model.get_input_embeddings().weight.requires_grad_(False)
        if method == "lora":
            model = apply_lora(model, train.lora, 3).eval()
    names = set(dealrec.trainable_names(model, which))
    assert any("classifier" in n for n in names) and (which == "head") == (len(names) == 2)
    if which == "trainable":
        assert not any("word_embeddings" in n for n in names)
        assert all("lora_" in n or "classifier" in n for n in names) == (method == "lora")
    for i, text in enumerate(texts):
        model.zero_grad()
        out = model(**tok([text], truncation=True, max_length=16, return_tensors="pt")).logits
        torch.nn.functional.cross_entropy(out, torch.tensor([labels[i]])).backward()
        norm = torch.sqrt(sum((p.grad ** 2).sum() for n, p in model.named_parameters() if n in names))
        assert got[i] == pytest.approx(float(norm), rel=1e-4)


@pytest.mark.parametrize("which,method", [("head", "full"), ("last_layer", "full"), ("trainable", "full"),
                                          ("trainable", "lora")])
def test_dealrec_names_every_train_setting_its_effort_pass_reads(which, method, tiny_model):
    """Select's key holds only `train_settings`: a train setting effort_scores read but left out would leave a
    selection up to date after an edit that changes it."""
    class Reads:
        def __init__(self, train):
            self.train, self.read = train, set()

        def __getattr__(self, name):
            self.read.add(name)
            return getattr(self.train, name)

    train = TrainParams(max_length=16, method=method)
    reads = Reads(train)

    def effort(train) -> np.ndarray:
        return dealrec.effort_scores(["goal match team", "shares market", "film"], np.array([0, 1, 0]), list("ab"),
                                     tiny_model, train, which, 2, "cpu")

    scores = effort(reads)
    keyed = set(dealrec.DealRecConfig(effort_params=which).train_settings(train))
    assert reads.read and reads.read - {"head_init_seed"} <= keyed
    if "head_init_seed" not in keyed:  # the head it draws is replaced by LP-FT's probe: another seed scores alike
        assert np.array_equal(effort(train.model_copy(update={"head_init_seed": 3})), scores)
    if method == "lora":  # unread under LoRA (peft trains adapters and head alone): no new selection for an edit
        assert "freeze_embeddings" not in dealrec.DealRecConfig(effort_params=which).train_settings(train)


def test_dealrec_effort_trainable_needs_a_trained_model(tiny_model):
    with pytest.raises(SouplineError, match="train.method is probe"):
        dealrec.effort_scores(["a b"] * 4, np.array([0, 1, 0, 1]), list("ab"), tiny_model, TrainParams(method="probe"),
                              "trainable", 2, "cpu")


def test_dealrec_effort_with_a_probe_head_ranks_the_texts_the_probe_gets_wrong_first(tiny_model):
    """LP-FT's probe head makes effort a difficulty score: a fresh head's gradients are all about equal."""
    texts = ["goal match team"] * 3 + ["shares market"] * 3 + ["goal match team shares"]
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    train = TrainParams(max_length=16)
    probe = dealrec.effort_scores(texts, labels, list("ab"), tiny_model, train, "head", 8, "cpu", probe_c=100.0)
    fresh = dealrec.effort_scores(texts, labels, list("ab"), tiny_model, train.model_copy(update={"head_init": "random"}),
                                  "head", 8, "cpu")
    assert probe.argmax() == 6 and probe[6] > 2 * np.median(probe)
    assert fresh.max() < 1.1 * fresh.min()


@pytest.mark.parametrize("labels", [2, 3])
def test_dealrec_surrogate_is_the_softmax_regression_optimum(labels):
    """The spec's surrogate is multinomial logistic regression at C: at its optimum the mean cross-entropy gradient of
    each weight row is -row / (C n). With two labels sklearn fits one logit, penalised twice as hard at the same C:
    the surrogate was the softmax at C/2 (half a binary pool's examples in another of 50 strata)."""
    pool = make_pool(n=200, d=4, labels=labels, spread=1.0)
    c = 0.7
    p, onehot, w = dealrec.surrogate_probs(pool.embeddings, pool.labels, c)
    x = pool.embeddings.astype(np.float64)
    rows = w[:, :-1] - w[:, :-1].mean(axis=0)  # the softmax optimum's rows sum to zero: shift them so
    mean_grad = (p - onehot).T @ x / len(x)
    assert np.allclose(mean_grad, -rows / (c * len(x)), atol=1e-7), np.abs(mean_grad + rows / (c * len(x))).max()


def test_dealrec_influence_predicts_retraining_without_the_example():
    """Influence = how much the total training loss rises when the surrogate is refit with the example
    down-weighted (sklearn sample_weight 1 - delta): an independent check of the sign and the formula. The
    solve uses `damping` in place of the surrogate's own L2 term, so the match is close, not exact."""
    from sklearn.linear_model import LogisticRegression

    for labels in (2, 3):
        pool = make_pool(n=30, d=3, labels=labels, spread=1.0)
        x, y = pool.embeddings.astype(np.float64), pool.labels

        def total_loss(weights):  # the softmax surrogate at C = 1: sklearn's one-logit fit at 2C for two labels
            fit = LogisticRegression(C=1.0 * (1 + (labels == 2)), max_iter=100000, tol=1e-14).fit(
                x, y, sample_weight=weights)
            return -np.log(fit.predict_proba(x)[np.arange(len(y)), y]).sum()

        delta, before = 1e-3, total_loss(np.ones(30))
        retrained = np.array([(total_loss(np.where(np.arange(30) == s, 1 - delta, 1.0)) - before) / delta
                              for s in range(30)])
        influence, _, _ = dealrec.influence_scores(pool.embeddings, y, dealrec.DealRecConfig())
        assert np.corrcoef(influence, retrained)[0, 1] > 0.98


def test_dealrec_combines_min_max_normalised_influence_and_effort(monkeypatch):
    """score = minmax(influence) + lambda x minmax(effort): neither score's scale or offset decides."""
    pool = make_pool(n=120)
    pool.extras["model_path"] = "a model"  # effort_scores is replaced below
    effort = 1000.0 + np.arange(120.0) ** 2
    monkeypatch.setattr(dealrec, "effort_scores", lambda *args, **kwargs: effort)
    cfg = dealrec.DealRecConfig(effort_weight=0.3)
    score, _ = dealrec.scores(pool, 0, cfg)
    influence, _, _ = dealrec.influence_scores(pool.embeddings, pool.labels, cfg)
    assert np.allclose(score, base.minmax(influence) + 0.3 * base.minmax(effort))
    assert score.min() >= 0 and score.max() <= 1.3


def test_dealrec_coverage_sampling_spreads_over_strata():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0, 0.05, 900), rng.uniform(0.95, 1.0, 100)])  # two crowded bands
    pos, info = dealrec.coverage_sample(scores, 100, 10, rng)
    assert len(np.unique(pos)) == 100 and info["non_empty_strata"] == 2
    assert (scores[pos] > 0.5).sum() == 50  # equal shares per stratum, not 10% as random would give
    small = np.r_[np.zeros(3), np.ones(300)]
    pos, _ = dealrec.coverage_sample(small, 100, 2, rng)
    assert (small[pos] == 0).sum() == 3 and len(pos) == 100  # a small stratum's unused share moves on
    three = np.repeat([0.0, 0.5, 1.0], [10, 20, 30])  # smallest stratum first, floor(left / strata left) each
    pos, _ = dealrec.coverage_sample(three, 10, 3, rng)
    assert np.bincount(np.searchsorted([0.0, 0.5, 1.0], three[pos])).tolist() == [3, 3, 4]


def test_dealrec_count_strata_do_not_take_an_outlying_tail_whole():
    """Equal-width strata over a long tail are each a few outliers, which the smallest-first rule takes whole (25 of
    30 picks from the top 5 % here); `strata_by: count` cuts min(K, budget) equal-count strata, so the picks follow
    the pool, a budget below K too."""
    scores = np.r_[np.linspace(0, 0.1, 950), np.linspace(0.2, 1, 50)]  # 50 outliers spread over the range
    width, _ = dealrec.coverage_sample(scores, 30, 10, np.random.default_rng(0))
    count, info = dealrec.coverage_sample(scores, 30, 10, np.random.default_rng(0), by="count")
    assert (scores[width] >= 0.2).sum() == 25 and (scores[count] >= 0.2).sum() == 3
    assert info["non_empty_strata"] == 10 and len(np.unique(count)) == 30
    few, info = dealrec.coverage_sample(scores, 16, 50, np.random.default_rng(0), by="count")
    assert (scores[few] >= 0.2).sum() == 1 and info["non_empty_strata"] == 16  # one pick in each of 16 strata


def test_dealrec_coverage_by_label_samples_each_label_over_its_own_scores():
    """`coverage_by_label`: the budget split over labels (in proportion to the pool, or equally, a small label giving
    all it has), each label's strata over its own scores; the pool-wide strata of the same scores picked a label by
    where its scores fall (here 19 of the small label 2's 20 examples, whose scores spread over the top strata)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [200, 80, 20])
    x = rng.normal(size=(300, 8)).astype(np.float32)
    score = np.r_[rng.uniform(0, 0.5, 280), np.linspace(0.5, 1, 20)]
    inp = base.SelectionInput(embeddings=x, labels=y, label_names=["a", "b", "c"], prescores=score)
    counts = {}
    for mode in ("none", "proportional", "equal"):
        sel = dealrec.select(inp, 60, 0, dealrec.DealRecConfig(effort_weight=0, coverage_by_label=mode))
        counts[mode] = np.bincount(y[sel.indices], minlength=3).tolist()
        assert len(np.unique(sel.indices)) == 60
        assert dealrec.select(inp, 60, 0, dealrec.DealRecConfig(effort_weight=0, coverage_by_label=mode)).indices \
            .tolist() == sel.indices.tolist()  # deterministic
    assert counts == {"none": [29, 12, 19], "proportional": [40, 16, 4], "equal": [20, 20, 20]}
    small = dealrec.select(inp, 90, 0, dealrec.DealRecConfig(effort_weight=0, coverage_by_label="equal"))
    assert np.bincount(y[small.indices]).tolist() == [35, 35, 20] and small.info["label_quotas"]["c"] == 20


@pytest.mark.timeout(60)
def test_dealrec_coverage_sampling_with_more_strata_than_texts_is_quick():
    """A pass per stratum (strata x pool comparisons) ran for hours at `strata: 2147483647` on 63 texts; the
    non-empty strata come from one sort, the same strata in the same order."""
    scores = np.linspace(0, 1, 63)
    pos, info = dealrec.coverage_sample(scores, 19, 2**31 - 1, np.random.default_rng(0))
    assert len(np.unique(pos)) == 19 and info["non_empty_strata"] == 63


def test_dealrec_el2n_is_the_surrogate_error_norm():
    """score: el2n (the CCS baseline) = ||p - onehot(y)|| under the surrogate: mislabelled texts score highest."""
    from sklearn.linear_model import LogisticRegression

    pool = make_pool(n=120)
    flipped = np.arange(0, 120, 12)
    pool.labels[flipped] = (pool.labels[flipped] + 1) % 4
    score, _ = dealrec.scores(pool, 0, dealrec.DealRecConfig(score="el2n"))
    x = pool.embeddings.astype(np.float64)  # another solver to the same optimum
    p = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(x, pool.labels).predict_proba(x)
    assert np.allclose(score, np.linalg.norm(p - np.eye(4)[pool.labels], axis=1), atol=1e-6)
    assert set(np.argsort(-score)[:len(flipped)].tolist()) == set(flipped.tolist())


def test_dealrec_surrogate_is_fit_to_its_optimum():
    """The influence formula assumes the surrogate's mean gradient is zero: sklearn's lbfgs defaults on float32
    stopped far enough from it that the scores moved with the BLAS thread count."""
    pool, c = make_pool(n=300), 1.0
    p, onehot, w = dealrec.surrogate_probs(pool.embeddings, pool.labels, c)
    xa = dealrec.augment(pool.embeddings)
    n = len(xa)
    gradient = (p - onehot).T @ xa / n + np.hstack([w[:, :-1], np.zeros((len(w), 1))]) / (c * n)  # L2 on coef only
    assert np.abs(gradient).max() < 1e-8


def test_dealrec_surrogate_does_not_move_with_the_blas_thread_count():
    """float32 lbfgs gave weights 2e-7 to 5e-7 apart with 1 and 2 BLAS threads on such pools, enough to move a
    4,200-text pool's scores across stratum edges (session 39: 5 % of DEALRec's 20newsgroups picks changed)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, 500)
    x = (rng.normal(size=(20, 384))[y] * 0.15 + rng.normal(size=(500, 384))).astype(np.float32)
    weights = []
    for threads in (1, 2):
        with threadpool_limits(threads):
            weights.append(dealrec.surrogate_probs(x / np.linalg.norm(x, axis=1, keepdims=True), y, 1.0)[2])
    assert np.abs(weights[0] - weights[1]).max() < 1e-12


def test_dealrec_hard_prune_drops_the_top_scores():
    pool = make_pool(n=200)
    cfg = dealrec.DealRecConfig(score="el2n", hard_prune=0.25)
    sel = select.run_method("dealrec", pool, 100, 0, cfg)
    _, el2n, _ = dealrec.influence_scores(pool.embeddings, pool.labels, cfg)
    assert sel.info["pruned"] == 50 and sel.scores.max() <= np.sort(el2n)[-51] + 1e-12


def test_dealrec_hard_prune_within_label_drops_each_labels_own_top_scores():
    """On a skewed pool the top scores are the rare labels' (the surrogate fits them worst): pruning the pool's top
    fraction removes those labels first; `hard_prune_within: label` drops each label's own top fraction instead."""
    pool = make_pool(n=200)
    rare = np.flatnonzero(pool.labels == 3)[:8]
    pool.labels[np.flatnonzero(pool.labels == 3)[8:]] = 0  # label 3 keeps 8 examples
    score, _ = dealrec.scores(pool, 0, dealrec.DealRecConfig(score="el2n"))
    whole = select.run_method("dealrec", pool, 60, 0, dealrec.DealRecConfig(score="el2n", hard_prune=0.25))
    per_label = select.run_method("dealrec", pool, 60, 0, dealrec.DealRecConfig(score="el2n", hard_prune=0.25,
                                                                                hard_prune_within="label"))
    sizes = np.bincount(pool.labels)
    assert per_label.info["pruned"] == sum(int(0.25 * n) for n in sizes) and whole.info["pruned"] == 50
    for label, n in enumerate(sizes):  # each label's own top quarter is never picked, the rest may be
        members = np.flatnonzero(pool.labels == label)
        top = members[np.argsort(-score[members], kind="stable")[:int(0.25 * n)]]
        assert not set(top.tolist()) & set(per_label.indices.tolist())
    assert np.isin(rare, whole.indices).sum() < np.isin(rare, per_label.indices).sum()
    again = select.run_method("dealrec", pool, 60, 0, dealrec.DealRecConfig(score="el2n", hard_prune=0.25,
                                                                             hard_prune_within="label"))
    assert np.array_equal(per_label.indices, again.indices)


@pytest.mark.parametrize("stratify", ["label", "balanced"])
def test_dealrec_hard_prune_under_stratify_spends_every_quota(stratify):
    """Each label drops its own hardest fraction and still gives its quota. Under `balanced`, a label smaller than
    its share has a quota of its whole size, so any pruning left it short: that was an error ('fewer than the
    budget'); now the label drops only what its quota leaves over, and one warning names every such label."""
    pool = make_pool(n=200)
    for label, to in ((2, 1), (3, 0)):  # l2 and l3 keep 10 examples each
        small = np.flatnonzero(pool.labels == label)
        pool.labels[small[10:]] = to
    cfg = dealrec.DealRecConfig(score="el2n", hard_prune=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sel = select.run_method("dealrec", pool, 80, 0, cfg, stratify=stratify)
    said = [str(w.message) for w in caught if "hard_prune" in str(w.message)]
    counts = np.bincount(pool.labels[sel.indices], minlength=4).tolist()
    assert counts == list(sel.info["quotas"].values()) and sum(counts) == 80
    pruned = {name: part["pruned"] for name, part in sel.info["per_label"].items()}
    sizes = np.bincount(pool.labels)
    if stratify == "balanced":  # l2's and l3's quotas are all 10 of them: nothing can go
        assert counts[2:] == [10, 10] and pruned["l2"] == pruned["l3"] == 0
        assert said == ["select.dealrec.hard_prune=0.1 would leave fewer examples than the quota of 2 label(s): "
                        "'l2' (9 of 10, quota 10), 'l3' (9 of 10, quota 10); those labels drop only what their "
                        "quota leaves over"]
        assert sel.info["spared_for_quota"] == ["l2", "l3"]
    else:
        assert said == [] and pruned["l2"] == pruned["l3"] == 1 and "spared_for_quota" not in sel.info
    _, el2n, _ = dealrec.influence_scores(pool.embeddings, pool.labels, cfg)  # scored on the whole pool
    for label in range(2):  # the large labels drop their own top 10 %, never picked
        members = np.flatnonzero(pool.labels == label)
        hardest = members[np.argsort(-el2n[members], kind="stable")[:int(0.1 * sizes[label])]]
        assert pruned[f"l{label}"] == len(hardest) > 0 and not set(hardest) & set(sel.indices.tolist())


# ---- GOT-D ----------------------------------------------------------------------------------------

def test_gotd_potential_is_the_gradient_of_entropic_ot():
    """F = eps log u is d OT_eps / d a along mass-preserving moves (finite differences, float64)."""
    import ot
    import torch

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(9, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    cost = torch.from_numpy(1 - x @ y.T)
    eps = 0.1
    a0 = np.full(12, 1 / 12)
    b = torch.full((9,), 1 / 9, dtype=torch.float64)

    def value(a):  # entropic OT objective <P, C> + eps sum P log P at the optimum
        plan = ot.sinkhorn(torch.from_numpy(a), b, cost, eps, method="sinkhorn_log", stopThr=1e-14,
                           numItermax=100000)
        return float((plan * cost).sum() + eps * (plan * torch.log(plan)).sum())

    f, g, info = gotd.sinkhorn_potentials(cost, eps, tol=1e-12, max_iter=100000)
    assert info["converged"]
    h = 1e-6
    for i, j in [(0, 5), (3, 11), (7, 2)]:
        d = np.zeros(12)
        d[i], d[j] = h, -h
        fd = (value(a0 + d) - value(a0 - d)) / (2 * h)
        assert fd == pytest.approx(float(f[i] - f[j]), rel=1e-5, abs=1e-8)
    # the c-transform of the target potential gives back the pool potential (up to eps log a)
    assert np.allclose(gotd.c_transform(g, cost, eps).numpy(), f.numpy() - eps * np.log(1 / 12), atol=1e-9)


def test_gotd_moves_toward_target_and_subsample_agrees():
    pool = make_pool()
    full = select.run_method("gotd", pool, 40, 0, fast("gotd"))
    assert np.mean(pool.labels[full.indices] == 3) >= 0.9  # the target is cluster 3
    assert full.info["converged"] and full.info["ot_pool_size"] == 300
    small = fast("gotd").model_copy(update={"max_pool_for_ot": 100, "max_target": 20, "chunk": 64})
    part = select.run_method("gotd", pool, 40, 0, small)
    assert part.info["ot_pool_size"] == 100 and part.info["target_in_ot"] == 20
    assert len(np.intersect1d(full.indices, part.indices)) >= 30


def test_gotd_label_weight_follows_target_labels():
    pool = make_pool()
    pool.target_embeddings = pool.embeddings[pool.labels == 0][:40]  # near cluster 0 ...
    pool.target_labels = np.full(40, 2)  # ... but labelled 2
    blind = select.run_method("gotd", pool, 40, 0, fast("gotd"))
    aware = select.run_method("gotd", pool, 40, 0, fast("gotd").model_copy(update={"label_weight": 2.0}))
    assert np.mean(pool.labels[blind.indices] == 0) > 0.9 and np.mean(pool.labels[aware.indices] == 2) > 0.9



def test_gotd_label_weight_null_is_label_aware_with_labels_and_blind_without():
    """The default (null): AUTO_LABEL_WEIGHT with a labelled target (the validation split), 0 for a target file
    (no labels); selection.json's info records the weight used."""
    pool = make_pool()
    pool.target_embeddings = pool.embeddings[pool.labels == 0][:40]
    pool.target_labels = np.full(40, 2)
    auto = fast("gotd").model_copy(update={"label_weight": None})
    chosen = select.run_method("gotd", pool, 40, 0, auto)
    explicit = fast("gotd").model_copy(update={"label_weight": gotd.AUTO_LABEL_WEIGHT})
    same = select.run_method("gotd", pool, 40, 0, explicit)
    assert chosen.info["label_weight"] == gotd.AUTO_LABEL_WEIGHT > 0
    assert np.array_equal(chosen.indices, same.indices)
    pool.target_labels = None  # a select.gotd.target file
    unlabelled = select.run_method("gotd", pool, 40, 0, auto)
    blind = select.run_method("gotd", pool, 40, 0, fast("gotd"))
    assert unlabelled.info["label_weight"] == 0 and np.array_equal(unlabelled.indices, blind.indices)
    with pytest.raises(SouplineError, match="label_weight > 0 needs a labelled target set"):
        select.run_method("gotd", pool, 40, 0, fast("gotd").model_copy(update={"label_weight": 0.1}))


def test_gotd_eps_ignores_the_label_term():
    """eps comes from the embedding geometry alone; a label weight must not also widen the smoothing."""
    pool = make_pool()
    pool.target_embeddings, pool.target_labels = pool.embeddings[::5][:40], pool.labels[::5][:40]
    blind = select.run_method("gotd", pool, 40, 0, fast("gotd"))
    aware = select.run_method("gotd", pool, 40, 0, fast("gotd").model_copy(update={"label_weight": 2.0}))
    assert aware.info["eps"] == pytest.approx(blind.info["eps"], rel=1e-9)


def test_dealrec_el2n_solves_no_influence(monkeypatch):
    """score: el2n reads the surrogate's error norm alone: the influence solve (H u = v, a fifth of the select stage
    at 20,000 x 384 x 20 labels) is not run, and selection.json's info names no solver it did not use."""
    from soupline.select import dealrec

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pool = select.SelectionInput(x.astype(np.float32), rng.integers(0, 3, 200), list("abc"))
    expected = dealrec.scores(pool, 0, dealrec.DealRecConfig(score="el2n"))[0]

    def unused(*args, **kwargs):
        raise AssertionError("el2n ran the influence solve")

    monkeypatch.setattr(dealrec, "solve_influence", unused)
    sel = select.run_method("dealrec", pool, 30, 0, dealrec.DealRecConfig(score="el2n"))
    assert "solver" not in sel.info and np.allclose(sel.scores, expected[sel.indices])


def test_approximate_neighbours_print_no_faiss_warning_on_a_small_pool(capfd):
    """knn_exact_max below a small pool: faiss printed "WARNING clustering 185 points to 13 centroids: please provide
    at least 507 training points" on stderr, noise beside the same neighbours."""
    x = make_pool(n=185).embeddings
    dnc.cell_knn(x, 10, 0, 8)
    assert "WARNING clustering" not in capfd.readouterr().err
