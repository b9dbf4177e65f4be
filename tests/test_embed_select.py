"""Embeddings (order, norm, cache) and the built-in selectors (contract, determinism, budgets)."""

import json
import re

import numpy as np
import pytest

from soupline import embed, select
from soupline.errors import SouplineError


def test_embeddings_unit_norm_order_independent_and_cached(tiny_model, tmp_path):
    texts = ["short one", "a somewhat longer text about sport and goals", "tech chips", "x"]
    encoder = embed.Encoder(tiny_model, batch_size=2, max_length=16)
    a, hit_a = embed.encode_cached(texts, encoder, tmp_path, progress=False)
    b, hit_b = embed.encode_cached(texts, embed.Encoder(tiny_model, batch_size=2, max_length=16), tmp_path,
                                   progress=False)
    assert a.dtype == np.float32 and a.shape == (4, 32)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert (hit_a, hit_b) == (False, True) and np.array_equal(a, b)
    single = encoder(texts[1:2], progress=False)
    assert np.allclose(single[0], a[1], atol=1e-5)  # padding in a batch does not change an embedding


def _pool(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, d))
    labels = rng.integers(0, 4, n)
    x = centers[labels] + 0.1 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return select.SelectionInput(embeddings=x, labels=labels, label_names=list("abcd"))


def test_truncation_count_is_cached_with_the_embeddings(tiny_model, tmp_path, monkeypatch):
    """An embed run served by the cache does not re-tokenise every text whole to count the truncated ones
    (70 % of such a run on long texts); a new max_length counts again."""
    texts = ["word " * 40, "short text", "word " * 31]
    counted = []
    real = embed.count_longer
    monkeypatch.setattr(embed, "count_longer", lambda *a, **k: counted.append(1) or real(*a, **k))
    short, long = embed.Encoder(tiny_model, max_length=32), embed.Encoder(tiny_model, max_length=64)
    assert embed.count_longer_cached(texts, short, tmp_path) == 2 and len(counted) == 1
    assert embed.count_longer_cached(texts, short, tmp_path) == 2 and len(counted) == 1  # from the cache
    assert embed.count_longer_cached(texts, long, tmp_path) == 0 and len(counted) == 2


def test_an_embed_run_the_cache_serves_loads_no_model(tiny_model, tmp_path):
    """The embed stage checked the base model and picked the device before looking in the cache, so a run the cache
    served whole still imported torch and transformers' model classes (most of such a run). It imports neither now;
    texts to encode still check the model first (test_run_cache: a max_length beyond the model's positions)."""
    import subprocess
    import sys

    from soupline import config
    from tasks import embed as embed_stage
    from tasks.layout import Layout
    from tests.conftest import make_frame

    layout = Layout(tmp_path)
    layout.prepared.mkdir(parents=True)
    for name, seed in (("pool", 0), ("validation", 1), ("test", 2)):
        make_frame(4, seed).to_parquet(layout.split(name), index=False)
    overrides = [f"model={tiny_model}", "device=cpu", "embed.max_length=32"]
    embed_stage.run(config.load(tmp_path / "none.yaml", overrides), layout, progress=False)
    code = ("import sys; from pathlib import Path; from soupline import config; from tasks import embed; "
            "from tasks.layout import Layout; embed.run(config.load(sys.argv[1], sys.argv[3:]), "
            "Layout(Path(sys.argv[2])), progress=False); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.yaml"), str(tmp_path), *overrides],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(cache hits: {'pool': True, 'validation': True, 'test': True})" in out.stdout
    assert out.stdout.splitlines()[-1] == "False"


@pytest.mark.parametrize("texts", [[], ["one"], ['a "quoted" café\n', "\u200b", "x" * 50, *map(str, range(9))]])
def test_cache_files_keep_the_names_of_hashing_the_whole_json(tiny_model, tmp_path, texts):
    """The cache's names, hashed a few texts at a time, are those of `sha256_obj` on the whole key (the entries
    written before are still served), at any chunk size."""
    from soupline.artifacts import sha256_obj

    encoder = embed.Encoder(tiny_model, batch_size=3, max_length=16)
    whole = [tmp_path / (sha256_obj({"encoder": encoder.fingerprint, "texts": texts, "batch_size": 3}) + ".npy"),
             tmp_path / (sha256_obj({"encoder": encoder.fingerprint, "texts": texts}) + ".truncated.json")]
    assert all(embed.cache_files(texts, encoder, tmp_path, chunk) == whole for chunk in (1, 2, 4096))


def test_an_embed_run_serialises_each_split_once(tiny_model, tmp_path, monkeypatch):
    """The embed stage turned every split's texts into JSON for the cache's names four times on a run the cache
    served (six on a miss), each whole: 1.7 s and twice its size in memory per pass at 50,000 texts of 1,700
    characters. Now once, a chunk at a time, with the same embeddings and cache entries."""
    import json as json_module

    from soupline import config
    from tasks import embed as embed_stage
    from tasks.layout import Layout
    from tests.conftest import make_frame

    layout = Layout(tmp_path)
    layout.prepared.mkdir(parents=True)
    for name, seed in (("pool", 0), ("validation", 1), ("test", 2)):
        make_frame(4, seed).to_parquet(layout.split(name), index=False)
    params = config.load(tmp_path / "none.yaml", [f"model={tiny_model}", "device=cpu", "embed.max_length=32"])
    real, serialised = json_module.dumps, []

    def counting(obj, *args, **kwargs):  # how many texts each JSON serialisation holds, whole or in part
        texts = obj.get("texts") if isinstance(obj, dict) else obj
        serialised.append(len(texts) if isinstance(texts, list) and all(isinstance(t, str) for t in texts) else 0)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(json_module, "dumps", counting)
    embeddings = []
    for _ in ("miss", "hit"):
        serialised.clear()
        embeddings.append(embed_stage.run(params, layout, progress=False) and np.load(layout.embedding("pool")))
        assert sum(serialised) == 3 * 12  # 12 texts per split, each serialised once
    assert np.array_equal(*embeddings)


def test_count_longer_counts_the_texts_the_models_truncate(tiny_model):
    from soupline.report import truncation

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["one two", " ".join(["word"] * 40), " ".join(["word"] * 30), " ".join(["word"] * 31)]
    assert embed.count_longer(tok, texts, 32) == 2  # 40 and 31 words + [CLS] [SEP] > 32 tokens; 30 fit
    assert embed.count_longer(tok, texts, 32, chunk=1) == 2
    info = {"max_length": 32, "shapes": {"pool": [4, 8], "test": [2, 8]}, "truncated": {"pool": 2, "test": 0}}
    assert truncation(info) == ("Longer than `embed.max_length` (32 tokens; the embeddings, and so the selection and "
                                "the probe, read only that many; a fine-tune reads up to `train.max_length`): pool 2 "
                                "of 4 (50%), test 0 of 2 (0%).")
    assert truncation({**info, "truncated": {"pool": 0}}) == "" and truncation({"shapes": {}}) == ""
    near = {"max_length": 32, "shapes": {"pool": [445, 8], "test": [1000, 8]}, "truncated": {"pool": 444, "test": 4}}
    assert "pool 444 of 445 (>99%), test 4 of 1000 (<1%)" in truncation(near)  # read 100 % and 0 %


@pytest.mark.parametrize("name", ["random", "kmeans"])
def test_builtin_selectors_contract_and_determinism(name):
    pool = _pool()
    cfg = select.REGISTRY[name].config()
    a = select.run_method(name, pool, 20, 7, cfg)
    b = select.run_method(name, pool, 20, 7, cfg)
    assert len(a.indices) == 20 and np.all(np.diff(a.indices) > 0)
    assert np.array_equal(a.indices, b.indices)
    assert len(a.scores) == 20


def test_kmeans_covers_every_cluster():
    pool = _pool()
    sel = select.run_method("kmeans", pool, 8, 0, select.REGISTRY["kmeans"].config())
    assert set(pool.labels[sel.indices]) == {0, 1, 2, 3}


def test_kmeans_a_well_placed_centroid_keeps_its_point():
    """Two centroids nearest the same point: the closer one claims it, the other takes its next nearest."""
    from soupline.select.kmeans import nearest_distinct

    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    near, on = np.array([0.9, 0.3], dtype=np.float32), np.array([1.0, 0.0], dtype=np.float32)
    idx, sims = nearest_distinct(x, np.stack([near, on]))
    assert idx.tolist() == [1, 0] and sims.tolist() == pytest.approx([0.3, 1.0])


def _pool_with_copies(n=300, copies=60, d=384, seed=0) -> np.ndarray:
    """Clustered unit rows, `copies` of them twice (a corpus with repeated texts), shuffled."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, d))[rng.integers(0, 8, n)] + rng.normal(size=(n, d))
    x = np.concatenate([x, x[rng.choice(n, copies, replace=False)]])[rng.permutation(n + copies)]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_kmeans_picks_do_not_depend_on_the_thread_count():
    """faiss's float32 BLAS products move by an ulp with the thread count: copies of a text split between
    centroids, and near-ties came back in another order, so 1 and 2 threads picked other points (this pool on
    the 2-core machine of session 34: centroids 0.19 apart, 2 picks)."""
    import faiss

    from soupline.select.kmeans import kmeans_centroids, nearest_distinct

    x, threads = _pool_with_copies(), faiss.omp_get_max_threads()
    runs = []
    try:
        for t in (1, 2):
            faiss.omp_set_num_threads(t)
            centroids = kmeans_centroids(x, 250, 0, 25, 1)
            runs.append((centroids, nearest_distinct(x, centroids)[0]))
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


def test_kmeans_trains_on_distinct_rows_weighted_by_their_copies(monkeypatch):
    import faiss

    from soupline.select.kmeans import kmeans_centroids

    seen = []
    real = faiss.Kmeans.train
    monkeypatch.setattr(faiss.Kmeans, "train", lambda self, x, weights=None: seen.append((x, weights))
                        or real(self, x, weights=weights))
    x = _pool_with_copies(n=40, copies=5, d=8)
    kmeans_centroids(x, 4, 0, 5, 1)
    rows, weights = seen[0]
    assert len(rows) == 40 and len(np.unique(rows, axis=0)) == 40 and weights.sum() == 45
    first = sorted(np.unique(x, axis=0, return_index=True)[1])
    assert np.array_equal(rows, x[first])  # pool order: the same start as before for a pool without copies
    kmeans_centroids(x[first], 4, 0, 5, 1)
    assert seen[1][1] is None
    kmeans_centroids(x, 42, 0, 5, 1)  # more centroids than distinct rows: every row, unweighted
    assert len(seen[2][0]) == 45 and seen[2][1] is None


def test_exact_top_ranks_by_float64_products_then_index_at_any_depth():
    import faiss

    from soupline.select.kmeans import exact_top

    x = _pool_with_copies(n=200, copies=40, d=32)
    q = _pool_with_copies(n=30, copies=0, d=32, seed=1)
    x[7] = x[150]  # a copy: equal products, the lower index first
    q[0] = x[7]
    index = faiss.IndexFlatIP(32)
    index.add(x)
    exact = (q[:, None, :].astype(np.float64) * x[None]).sum(-1)  # exact products, one summation order
    want = np.lexsort((np.broadcast_to(np.arange(len(x)), exact.shape), -exact), axis=1)[:, :5]
    for m in (1, 5):
        top, sims = exact_top(x, index, q, m)
        assert np.array_equal(top, want[:, :m]) and np.allclose(sims, np.take_along_axis(exact, top, 1))
    assert exact_top(x, index, q, 2)[0][0].tolist() == [7, 150]


def test_kmeans_budget_equal_to_pool():
    pool = _pool(n=30)
    sel = select.run_method("kmeans", pool, 30, 0, select.REGISTRY["kmeans"].config())
    assert sel.indices.tolist() == list(range(30))


def test_budget_resolution():
    assert select.resolve_budget(0.1, 1558) == 156
    assert select.resolve_budget(40, 100) == 40
    with pytest.raises(SouplineError, match="pool has only 100"):
        select.resolve_budget(150, 100)
    with pytest.raises(SouplineError, match="less than one example"):
        select.resolve_budget(0.001, 100)


def test_unknown_method_and_nan_embeddings():
    pool = _pool()
    with pytest.raises(SouplineError, match="unknown selection method"):
        select.run_method("nope", pool, 5, 0, None)
    pool.embeddings[3, 0] = np.nan
    with pytest.raises(SouplineError, match="NaN or inf"):
        select.run_method("random", pool, 5, 0, select.REGISTRY["random"].config())


def test_stratify_label_gives_proportional_quotas():
    pool = _pool(n=400)
    sel = select.run_method("kmeans", pool, 40, 0, select.REGISTRY["kmeans"].config(), stratify="label")
    counts = np.bincount(pool.labels[sel.indices], minlength=4)
    expected = select.quotas.label_quotas(pool.labels, 40)
    assert counts.tolist() == [expected[c] for c in range(4)] and counts.sum() == 40
    assert all(abs(counts[c] - 40 * np.mean(pool.labels == c)) < 1 for c in range(4))


def test_stratify_balanced_gives_equal_quotas_and_small_labels_all_they_have():
    pool = _pool(n=400)
    pool.labels = np.repeat([0, 1, 2, 3], [300, 60, 30, 10])
    cfg = select.REGISTRY["kmeans"].config()
    sel = select.run_method("kmeans", pool, 80, 0, cfg, stratify="balanced")
    counts = np.bincount(pool.labels[sel.indices], minlength=4)
    assert counts.tolist() == [24, 23, 23, 10]  # 20 each; label 3's missing 10 spread over the other three
    again = select.run_method("kmeans", pool, 80, 0, cfg, stratify="balanced")
    assert np.array_equal(sel.indices, again.indices)
    proportional = np.bincount(pool.labels[select.run_method("kmeans", pool, 80, 0, cfg, stratify="label").indices])
    assert proportional.tolist() == [60, 12, 6, 2]


def test_balanced_quotas_give_ties_to_the_larger_labels_not_the_first_names():
    """A budget below the number of labels (and the units left once each label has its equal share) goes to the
    labels with the most pool examples: before, to the lowest ids, so `01`, `7` and `Health` got one at a 1 % budget
    while `sports`, 18 % of the pool, got none."""
    labels = np.repeat([0, 1, 2, 3, 4], [5, 3, 400, 250, 8])  # ids in sorted-name order: 01, 7, Sports, sports, x
    assert select.quotas.label_quotas(labels, 3, balanced=True) == {2: 1, 3: 1, 4: 1}
    assert select.quotas.label_quotas(labels, 12, balanced=True) == {0: 2, 1: 2, 2: 3, 3: 3, 4: 2}
    assert select.quotas.label_quotas(np.repeat([0, 1, 2], [10, 10, 10]), 2, balanced=True) == {0: 1, 1: 1}


@pytest.mark.parametrize("stratify", ["label", "balanced"])
def test_stratify_warns_when_the_budget_leaves_a_label_out(stratify):
    pool = _pool(n=100)
    with pytest.warns(UserWarning, match=r"a budget of 3 gives no example to 1 label\(s\) \['[a-d]'\]"):
        sel = select.run_method("random", pool, 3, 0, select.REGISTRY["random"].config(), stratify=stratify)
    assert len(sel.indices) == 3


def test_a_rare_label_left_out_by_proportional_quotas_is_pointed_at_balanced_ones():
    """Proportional quotas (`stratify: label`) give a label with 1 of 100 pool examples none at a budget of 10, so
    the warning's advice is `balanced`, whose equal quotas do give it one (the advice used to be `label`)."""
    pool = _pool(n=100)
    pool.labels[:] = np.repeat([0, 1, 2, 3], [40, 30, 29, 1])
    cfg = select.REGISTRY["random"].config()
    with pytest.warns(UserWarning, match=r"raise select.budget, or set select.stratify: balanced, to train on every"):
        select.run_method("random", pool, 10, 0, cfg, stratify="label")
    sel = select.run_method("random", pool, 10, 0, cfg, stratify="balanced")
    assert set(pool.labels[sel.indices]) == {0, 1, 2, 3}


def test_stratify_with_a_single_example_class():
    pool = _pool(n=100)
    pool.labels[:] = 0
    pool.labels[0] = 1  # a class with a single example
    for budget in (10, 99, 100):
        sel = select.run_method("random", pool, budget, 0, select.REGISTRY["random"].config(), stratify="label")
        assert len(sel.indices) == budget and (pool.labels[sel.indices] == 1).sum() <= 1


@pytest.mark.parametrize("name", ["random", "kmeans", "gotd"])
def test_heldout_twins_are_never_picked(name):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 64))
    pool = _pool(n=100)
    pool.embeddings = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # spread: cosines near 0
    heldout = pool.embeddings[::10] + rng.normal(scale=0.01, size=(10, 64))  # near-copies of every tenth point
    heldout /= np.linalg.norm(heldout, axis=1, keepdims=True)
    pool.target_embeddings = heldout  # gotd's target: its nearest candidates are exactly the copies
    cfg = select.REGISTRY[name].config(**({"target_copy_threshold": None} if name == "gotd" else {}))
    plain = select.run_method(name, pool, 20, 0, cfg)
    sel = select.run_method(name, pool, 20, 0, cfg, heldout=heldout, heldout_threshold=0.99)
    assert not set(sel.indices.tolist()) & set(range(0, 100, 10))
    assert sel.info["heldout_twins_excluded"] == 10 and sel.info["candidates_after_dedup"] == 90
    if name == "gotd":
        assert set(plain.indices.tolist()) >= set(range(0, 100, 10))  # unguarded, GOT-D picks the copies first
    with pytest.raises(SouplineError, match=r"only 90 pool example\(s\) remain .*heldout_dedup_threshold=0.99"):
        select.run_method(name, pool, 91, 0, cfg, heldout=heldout, heldout_threshold=0.99)


def test_dedup_never_picks_exact_duplicates():
    pool = _pool(n=100)
    pool.embeddings[50:] = pool.embeddings[:50]  # every point twice
    sel = select.run_method("random", pool, 50, 0, select.REGISTRY["random"].config(), dedup_threshold=0.999)
    assert sel.indices.tolist() == list(range(50))
    with pytest.raises(SouplineError, match=r"only 50 pool example\(s\) remain after removing near-duplicates \(select.dedup_threshold=[0-9.]+\),"):
        select.run_method("random", pool, 51, 0, select.REGISTRY["random"].config(), dedup_threshold=0.999)


@pytest.mark.parametrize("name", ["random", "dnc", "gotd"])
def test_a_selection_holding_exact_copies_says_how_many_once(name):
    """Copies of one text share an embedding, so they tie on every score and a method may pick both: GOT-D and dnc
    picked up to 8 and 3 repeats on bbcnews, silently. selection.json's info counts them (and the texts picked under
    different labels) and one warning points at select.dedup_threshold: 1.0, under which none is picked."""
    import warnings

    pool = _pool(n=100)
    pool.embeddings[50:] = pool.embeddings[:50]  # every text twice, the copy upper-cased with more spaces
    pool.labels[50:] = pool.labels[:50]
    pool.labels[50:60] = (pool.labels[:10] + 1) % 4  # ten copies carry another label
    pool.texts = [f"news  item {i}" for i in range(50)] + [f"NEWS item {i}" for i in range(50)]
    target = _pool(n=40, seed=1)
    pool.target_embeddings, pool.target_labels = target.embeddings, target.labels
    cfg = select.REGISTRY[name].config()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sel = select.run_method(name, pool, 40, 0, cfg)
    picked = [i % 50 for i in sel.indices.tolist()]
    twice = {i for i in picked if picked.count(i) > 1}
    repeats, conflicts = 40 - len(set(picked)), len({i for i in twice if i < 10})
    assert repeats > 0 and (sel.info["repeated_picks"], sel.info["repeated_picks_conflicting_labels"]) == (
        repeats, conflicts)
    said = [str(w.message) for w in caught if "repeat another pick" in str(w.message)]
    assert said == [f"the selection holds {repeats} pick(s) that repeat another pick's text"
                    + (f" ({conflicts} text(s) picked under different labels)" if conflicts else "")
                    + ": the pool has exact copies, which tie on every score; set select.dedup_threshold: 1.0 to "
                    "keep one copy of each"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = select.run_method(name, pool, 40, 0, cfg, dedup_threshold=1.0)
    assert sel.indices.max() >= 50 and kept.indices.max() < 50 and "repeated_picks" not in kept.info
    assert not [w for w in caught if "repeat another pick" in str(w.message)]


@pytest.mark.parametrize("stratify", ["none", "label", "balanced"])
def test_dedup_that_removes_every_example_of_a_label_warns_under_every_stratify(stratify):
    """Every example of one label copies the pool's first point (of another label): the near-duplicate filter
    leaves none of it. Under `label` / `balanced` the quotas were split over the labels left, silently; under
    `none` only the select stage warned, advising select.stratify (which brings nothing back)."""
    import warnings

    pool = _pool(n=100)
    gone = (pool.labels[0] + 1) % 4
    pool.embeddings[pool.labels == gone] = pool.embeddings[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sel = select.run_method("random", pool, 20, 0, select.REGISTRY["random"].config(), stratify=stratify,
                                dedup_threshold=0.999)
    name = pool.label_names[gone]
    said = [str(w.message) for w in caught if "near-duplicates" in str(w.message)]
    assert len(said) == 1 and f"no example of 1 label(s) ['{name}']" in said[0], [str(w.message) for w in caught]
    assert "select.dedup_threshold=0.999" in said[0]
    assert sel.info["labels_removed_by_dedup"] == [name] and gone not in pool.labels[sel.indices]
    kept = select.run_method("random", _pool(n=100), 20, 0, select.REGISTRY["random"].config(), stratify=stratify,
                             dedup_threshold=0.999)
    assert kept.info["labels_removed_by_dedup"] == []


def test_dedup_memory_is_bounded_by_blocks_not_by_the_pairs(monkeypatch):
    """Many copies of one text: the neighbour search runs on blocks of rows, each returning at most
    `max_pairs` pairs (one search over every row held all 4 million pairs of 2,000 copies), and keeps
    exactly what the one-pass greedy rule keeps. Exact copies of an earlier row are dropped before the search, which
    then indexes each distinct row once (its 2,000 copies were 2,000 rows of every search)."""
    import faiss

    from soupline.select import dedup

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2050, 16)).astype(np.float32)
    x[:2000] = x[0]  # 2,000 copies of one point, then 50 distinct ones
    x[1000] = x[2040]  # a copy of a later point
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    results, indexed = [], []

    class Recording(faiss.IndexFlatIP):
        def range_search(self, q, radius):
            lims, d, i = super().range_search(q, radius)
            results.append(len(i))
            indexed.append(self.ntotal)
            return lims, d, i

    index = faiss.IndexFlatIP(16)
    index.add(x)
    lims, _, nbrs = index.range_search(x, 0.99 - 1e-6)
    dropped = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):  # the rule on the whole pair list
        if not dropped[i]:
            near = nbrs[lims[i]:lims[i + 1]]
            dropped[near[near > i]] = True
    monkeypatch.setattr(faiss, "IndexFlatIP", Recording)
    kept = dedup.dedup_candidates(x, 0.99, max_pairs=20_000)
    assert kept.tolist() == np.flatnonzero(~dropped).tolist() and 1000 in kept and 2040 not in kept
    assert max(results) <= 20_000 and sum(results) < 40_000  # rows already dropped are not searched again
    assert max(indexed) <= 51  # the 51 distinct rows
    assert dedup.dedup_candidates(x, 0.99, max_pairs=100).tolist() == kept.tolist()


def test_dedup_searches_each_row_against_the_later_rows_only_and_keeps_the_same_points():
    """A row drops only later rows, so each pool segment is searched against the rows from its start on (about half
    the products): the points kept are those of the rule on the whole pair list, whatever the segments and block
    sizes, with near-copies across segments and inside blocks."""
    from soupline.select import dedup

    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 8))[rng.integers(0, 20, 900)] + 0.15 * rng.normal(size=(900, 8))
    x[rng.integers(0, 900, 60)] = x[rng.integers(0, 900, 60)]  # exact copies, earlier and later
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    sims = x @ x.T
    dropped = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):
        if not dropped[i]:
            dropped[i + 1:] |= sims[i, i + 1:] >= 0.97 - dedup.SLACK
    expected = np.flatnonzero(~dropped).tolist()
    assert 0 < dropped.sum() < len(x) - 20
    for segments, max_pairs in ((1, 1 << 24), (8, 1 << 24), (8, 5_000), (3, 900), (2000, 100)):
        assert dedup.dedup_candidates(x, 0.97, max_pairs, segments).tolist() == expected
    short = np.zeros((6, 4), dtype=np.float32)  # rows no copy of which reaches the threshold: the search keeps them
    assert dedup.dedup_candidates(short, 0.9).tolist() == list(range(6))


def _stage_inputs(root, d=16):
    """What the select stage reads in `root`: prepared splits of 40 texts, their (synthetic, `d`-dimensional)
    embeddings and the label names."""
    import json

    from tasks.layout import Layout
    from tests.conftest import make_frame

    layout = Layout(root)
    layout.prepared.mkdir(parents=True)
    layout.embeddings.mkdir(parents=True)
    for name, seed in (("pool", 0), ("validation", 1), ("test", 2)):
        frame = make_frame(10, seed)
        frame.to_parquet(layout.prepared / f"{name}.parquet", index=False)
        np.save(layout.embeddings / f"{name}.npy", _pool(len(frame), d=d, seed=seed).embeddings)
    (layout.prepared / "labels.json").write_text(json.dumps(sorted(make_frame(1)["label"].unique())))
    return layout


@pytest.mark.parametrize("method", ["kmeans", "dealrec"])
def test_embeddings_of_another_prepare_run_are_one_line(tmp_path, method):
    """`soupline stage prepare` on a larger file, then `soupline stage select` without embed: dealrec's surrogate
    was scikit-learn's "inconsistent numbers of samples" traceback, and kmeans picked pool rows by the embeddings of
    other texts."""
    from soupline import config
    from tasks import select as select_stage
    from tests.conftest import make_frame

    layout = _stage_inputs(tmp_path)
    make_frame(20, 0).to_parquet(layout.split("pool"), index=False)  # prepare ran again: 60 pool rows, 30 embedded
    params = config.load(tmp_path / "none.yaml", [f"select.method={method}", "select.budget=6",
                                                  "select.dealrec.effort_weight=0"])
    with pytest.raises(SouplineError, match=r"pool.npy has 30 rows and .*pool.parquet 60: the embeddings are of "
                                            r"another prepare run; run the embed stage again"):
        select_stage.run(params, layout)


def test_the_select_stage_checks_the_model_only_for_settings_that_use_it(tmp_path):
    """kmeans, random and dnc's proxy run on the embeddings alone: the select stage checked the base model and
    picked the device anyway, importing torch and the model's transformers classes (most of a `dvc repro` select
    process for kmeans). DEALRec's effort, dnc's finetune scorer and GOT-D with a target file still get both; GOT-D
    without one (OT on the device) the device alone."""
    import subprocess
    import sys

    from soupline import config
    from soupline.select import REGISTRY

    _stage_inputs(tmp_path)
    code = ("import sys; from pathlib import Path; from soupline import config; from tasks import select; "
            "from tasks.layout import Layout; select.run(config.load(sys.argv[1], sys.argv[3:]), "
            "Layout(Path(sys.argv[2]))); print('torch' in sys.modules, 'transformers' in sys.modules)")
    for method, imported in (("kmeans", "False False"), ("dnc", "False False"), ("gotd", "True False")):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.yaml"), str(tmp_path),
                              f"select.method={method}", "select.budget=6", "model=/no/such/model"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.splitlines()[-1] == imported, (method, out.stdout, out.stderr)
    cfg = config.load(tmp_path / "none.yaml").select
    assert [name for name in REGISTRY if getattr(cfg, name).uses_model()] == ["dealrec"]
    assert [name for name in REGISTRY if getattr(cfg, name).uses_device()] == ["dealrec", "gotd"]
    assert cfg.gotd.model_copy(update={"target": "target.jsonl"}).uses_model()  # embedded with the base model
    assert not cfg.dealrec.model_copy(update={"effort_weight": 0}).uses_model()
    assert cfg.dnc.model_copy(update={"scorer": "finetune"}).uses_model()


def test_another_methods_settings_change_neither_the_selection_nor_its_key(tmp_path):
    """selection.json recorded the whole select section and select's key hashed it: `select.dnc.k=4` on a kmeans
    run rewrote selection.json with the same indices, and evaluate (the probe reads the selection) and report ran
    again under `soupline run`, the Prefect flow and `dvc repro` alike. Only the settings of the method in use
    count; its own still do."""
    from soupline import config
    from tasks import keys
    from tasks import select as select_stage

    layout = _stage_inputs(tmp_path)

    def selected(*overrides: str) -> tuple[bytes, str]:
        params = config.load(tmp_path / "none.yaml", ["select.budget=6", *overrides])
        select_stage.run(params, layout)
        return layout.selection.read_bytes(), keys.stage_key("select", params, layout.root)

    kmeans = selected()
    assert selected("select.dnc.k=4", "select.gotd.eps_scale=0.1") == kmeans
    assert json.loads(kmeans[0])["params"] == {"method": "kmeans", "budget": 6, "seed": None, "stratify": "none",
                                               "dedup_threshold": None, "heldout_dedup_threshold": None,
                                               "kmeans": {"niter": 25, "nredo": 1}}
    assert selected("select.kmeans.niter=5")[1] != kmeans[1]
    dnc = selected("select.method=dnc")
    assert selected("select.method=dnc", "select.dnc.k=4")[1] != dnc[1]
    assert selected("select.method=dnc", "select.kmeans.niter=5") == dnc


def test_the_select_line_says_how_many_candidates_the_near_duplicate_filters_left(tmp_path, capsys):
    """The count the filters left was only in selection.json: the stage's line said `chose 6/30` however much of the
    pool a threshold had removed."""
    from soupline import config
    from tasks import select as select_stage

    layout = _stage_inputs(tmp_path)
    validation = np.load(layout.embedding("validation"))
    validation[:3] = np.load(layout.embedding("pool"))[-3:]  # three pool texts copied into validation
    np.save(layout.embedding("validation"), validation)
    params = config.load(tmp_path / "none.yaml", ["select.budget=6", "select.dedup_threshold=0.995",
                                                  "select.heldout_dedup_threshold=0.999"])
    out = select_stage.run(params, layout)
    info = out["info"]
    assert info["candidates_after_dedup"] < 30 and info["heldout_twins_excluded"] > 0  # the filters did remove some
    assert (f"select: the near-duplicate filters left {info['candidates_after_dedup']} of 30 pool examples as "
            f"candidates ({info['heldout_twins_excluded']} removed as near-copies of a validation or test text)"
            ) in capsys.readouterr().out
    select_stage.run(config.load(tmp_path / "none.yaml", ["select.budget=6"]), layout)
    assert "near-duplicate" not in capsys.readouterr().out


def test_the_select_stage_writes_and_warns_the_picks_that_repeat_a_text(tmp_path):
    """`soupline run` and `dvc repro` show the stage's warnings: one line with the count; selection.json's info
    holds it for the report."""
    import json

    import pandas as pd

    from soupline import config
    from tasks import select as select_stage

    layout = _stage_inputs(tmp_path)
    pool = pd.read_parquet(layout.split("pool"))
    pd.concat([pool[:20], pool[:20]]).to_parquet(layout.split("pool"), index=False)  # 20 texts, each twice
    embeddings = np.load(layout.embedding("pool"))
    np.save(layout.embedding("pool"), np.vstack([embeddings[:20], embeddings[:20]]))
    params = config.load(tmp_path / "none.yaml", ["select.method=random", "select.budget=30"])
    with pytest.warns(UserWarning, match=r"^the selection holds (\d+) pick\(s\) that repeat another pick's text: "
                                         r"the pool has exact copies.*select.dedup_threshold: 1.0") as said:
        out = select_stage.run(params, layout)
    repeats = 30 - len({i % 20 for i in out["indices"]})
    assert repeats >= 10 and f"holds {repeats} pick(s)" in str(said[0].message)
    assert json.loads(layout.selection.read_text())["info"]["repeated_picks"] == repeats


@pytest.mark.parametrize("damage", ["cut", "garbage", "rows"])
def test_a_damaged_cache_entry_is_embedded_again_not_a_traceback(tiny_model, tmp_path, damage):
    """The embedding cache saves work only: an entry cut short, not an .npy / JSON record, or of another shape (on
    disk or by hand) is a miss, embedded again and rewritten (was: numpy's ValueError from the embed stage)."""
    texts = ["short one", "a somewhat longer text about sport and goals", "tech chips"]
    encoder = embed.Encoder(tiny_model, max_length=16)
    first, _ = embed.encode_cached(texts, encoder, tmp_path, progress=False)
    assert embed.count_longer_cached(texts, encoder, tmp_path) == 0
    npy, count = sorted(tmp_path.glob("*.npy"))[0], sorted(tmp_path.glob("*.truncated.json"))[0]
    if damage == "cut":
        npy.write_bytes(npy.read_bytes()[:100])
        count.write_text('{"trunc')
    elif damage == "garbage":
        npy.write_bytes(b"not an array")
        count.write_text('{"truncated": "none"}')
    else:
        np.save(npy, first[:2])
        count.write_text("[]")
    assert not embed.is_cached(texts, encoder, tmp_path)  # the embed stage checks the model and picks the device
    again, hit = embed.encode_cached(texts, encoder, tmp_path, progress=False)
    assert not hit and np.array_equal(again, first)
    assert embed.count_longer_cached(texts, encoder, tmp_path) == 0
    assert embed.is_cached(texts, encoder, tmp_path) and embed.encode_cached(texts, encoder, tmp_path)[1]


def test_a_gotd_target_file_edited_in_place_selects_again(tiny_model, tmp_path, capsys):
    """`select.gotd.target` is a path in params: the same path with new content changed no param and no dvc.yaml
    dep, so every driver kept the selection made toward the old texts. selection.json records the file's
    `target_hash`; the stage key (soupline run, the Prefect cache) hashes the file, and dvc.lock no longer vouches
    for a selection whose `target_hash` is not the file's."""
    from soupline import config
    from soupline.artifacts import read_json, sha256_file
    from tasks import keys
    from tasks import select as select_stage

    layout = _stage_inputs(tmp_path, d=32)  # the tiny model's width: the target texts are embedded with it
    target = tmp_path / "target.jsonl"
    target.write_text('{"text": "the match ended with a late goal"}\n{"text": "the striker scored twice"}\n')
    overrides = ["select.method=gotd", f"select.gotd.target={target}", "select.budget=6", f"model={tiny_model}",
                 "device=cpu", "select.gotd.target_copy_threshold=null"]
    params = config.load(tmp_path / "none.yaml", overrides)
    plain = config.load(tmp_path / "none.yaml", overrides[:1] + overrides[2:])  # the validation split as target
    key = keys.stage_key("select", params, layout.root)
    select_stage.run(params, layout)
    assert read_json(layout.selection)["target_hash"] == sha256_file(target)
    assert keys.dvc_can_vouch("select", params, layout.root)
    assert "`dvc repro` will not notice when its content changes" in capsys.readouterr().out
    unrelated = keys.stage_key("select", plain, layout.root)

    target.write_text('{"text": "shares fell as the bank cut its profit forecast"}\n')  # same path, new texts
    assert keys.stage_key("select", params, layout.root) != key
    assert keys.stage_key("select", plain, layout.root) == unrelated  # no target file: nothing new to hash
    assert not keys.dvc_can_vouch("select", params, layout.root)
    select_stage.run(params, layout)
    assert read_json(layout.selection)["target_hash"] == sha256_file(target)
    assert keys.dvc_can_vouch("select", params, layout.root)
    select_stage.run(plain, layout)
    assert read_json(layout.selection)["target_hash"] is None


def test_an_embedding_cache_entry_of_another_batch_size_is_not_served(tiny_model, tmp_path):
    """Texts are batched by length and what shares a batch moves a vector's last bits, so embeddings depend on
    embed.batch_size: an entry written at another batch size made a workspace's embeddings (and kmeans' picks)
    depend on what it embedded before, where a fresh workspace with the same params embedded anew."""
    texts = ["short one", "a somewhat longer text about sport and goals", "tech chips", "x"]
    first, _ = embed.encode_cached(texts, embed.Encoder(tiny_model, batch_size=2, max_length=16), tmp_path,
                                   progress=False)
    other, hit = embed.encode_cached(texts, embed.Encoder(tiny_model, batch_size=3, max_length=16), tmp_path,
                                     progress=False)
    assert not hit
    assert embed.encode_cached(texts, embed.Encoder(tiny_model, batch_size=3, max_length=16), tmp_path,
                               progress=False)[1]


def test_a_cache_entry_holding_nan_is_embedded_again(tiny_model, tmp_path):
    """A NaN in a cache entry (a hand-edited or damaged file) was served to every embed run, so select's "re-run the
    embed stage" could never fix it."""
    texts = ["short one", "a somewhat longer text about sport and goals", "tech chips"]
    encoder = embed.Encoder(tiny_model, max_length=16)
    first, _ = embed.encode_cached(texts, encoder, tmp_path, progress=False)
    npy = next(tmp_path.glob("*.npy"))
    bad = first.copy()
    bad[1, 3] = np.nan
    np.save(npy, bad)
    again, hit = embed.encode_cached(texts, encoder, tmp_path, progress=False)
    assert not hit and np.isfinite(again).all() and np.array_equal(again, first)


def test_heldout_embeddings_with_nan_or_inf_are_one_line_not_a_silent_miscount():
    pool = _pool()
    heldout = pool.embeddings[:10].copy()
    heldout[0, 0] = np.inf
    with pytest.raises(SouplineError, match="validation or test embeddings contain NaN or inf"):
        select.run_method("random", pool, 5, 0, select.REGISTRY["random"].config(), heldout=heldout,
                          heldout_threshold=0.9)


def test_a_model_whose_embeddings_hold_nan_stops_the_embed_stage_in_one_line(tiny_model, tmp_path):
    """A model with NaN weights (a checkpoint saved after its training diverged): the embed stage wrote NaN
    embeddings and its cache entry, and select said "re-run the embed stage", which made the same NaN again."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tasks.layout import Layout
    from tasks.pipeline import STAGES
    from tests.conftest import make_frame, one_ingredient_params

    model = tmp_path / "diverged"
    shutil.copytree(tiny_model, model)
    weights = load_file(model / "model.safetensors")
    weights["embeddings.word_embeddings.weight"][:] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", str(model))
    layout = Layout(tmp_path / "workspace")
    STAGES["prepare"](params, layout)
    with pytest.raises(SouplineError, match=rf"^model {re.escape(str(model))} gives NaN or inf embeddings for \d+ "
                                            r"of \d+ texts: its weights hold NaN or inf, or its activations overflow; "
                                            r"set model to another checkpoint"):
        STAGES["embed"](params, layout)
    assert not layout.embeddings.exists() and not list(layout.embed_cache.glob("*.npy"))  # nothing a run trusts
