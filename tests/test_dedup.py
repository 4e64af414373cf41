from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.tokenizer.dedup import (DedupConfig, Occupancy, build_trie, dedup, find_candidates, greedy_matching,
                                      reconstruction, sid_codes, sid_int, sinkhorn_sparse)


def constructed(seed=0, n=100, K=8):
    rng = np.random.default_rng(seed)
    cb = rng.standard_normal((3, K, 4)).astype(np.float32) * np.array([1, 0.5, 0.25], np.float32)[:, None, None]
    codes = np.stack([rng.integers(0, 2, n), rng.integers(0, 3, n), rng.integers(0, K, n)], 1)
    z = (reconstruction(codes, cb) + 0.01 * rng.standard_normal((n, 4))).astype(np.float32)
    return codes, z, cb


def test_unique_ids_and_only_colliders_move():
    codes, z, cb = constructed()
    new, rep = dedup(codes, z, cb, DedupConfig())
    ids, new_ids = sid_int(codes, 8), sid_int(new, 8)
    assert len(np.unique(new_ids)) == len(new) and rep["final_collision_rate"] == 0.0
    moved = (new != codes).any(1)
    _, inv, cnt = np.unique(ids, return_inverse=True, return_counts=True)
    collided = cnt[inv.ravel()] > 1
    assert not moved[~collided].any()  # unique items keep their ID
    assert rep["moved"] == int(moved.sum()) == int(collided.sum() - len(np.unique(ids[collided])))
    assert rep["moved_from_level_1"] == 0  # ~50 items per c1 fit in its 8*8 IDs: c1 never has to change
    assert rep["moved_from_level_2"] > 0  # but 3*8 IDs under the used (c1, c2) prefixes do not suffice
    assert sum(rep[f"moved_from_level_{l}"] for l in (1, 2, 3)) == rep["moved"]
    # one keeper per collision group: the closest to the group's reconstruction
    err = ((z - reconstruction(codes, cb)) ** 2).sum(1)
    for g in np.unique(ids[collided]):
        members = np.flatnonzero(ids == g)
        assert not moved[members[err[members].argmin()]]


def test_last_level_first_and_cheap_moves():
    # two items on one ID, plenty of free last-level codes: the mover changes only c3, to its nearest free code
    cb = np.zeros((3, 4, 2), np.float32)
    cb[2] = [[0, 0], [1, 0], [0, 1], [5, 5]]
    codes = np.array([[0, 0, 0], [0, 0, 0]])
    z = np.array([[0.0, 0.0], [0.2, 0.9]], np.float32)
    new, rep = dedup(codes, z, cb, DedupConfig())
    assert new.tolist() == [[0, 0, 0], [0, 0, 2]]
    assert rep["moved_from_level_3"] == 1 and rep["moved"] == 1


def test_too_many_items_is_an_error():
    with pytest.raises(ValueError, match="cannot have unique IDs"):
        dedup(np.zeros((9, 3), int), np.zeros((9, 2), np.float32), np.zeros((3, 2, 2), np.float32), DedupConfig())


def test_sinkhorn_marginals():
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(5), 4)
    cols = rng.integers(0, 12, 20)
    keep = np.unique(rows * 100 + cols, return_index=True)[1]
    rows, cols = rows[keep], cols[keep]
    mass = sinkhorn_sparse(rows, cols, rng.random(len(rows)), 5, 12, reg=0.1, iters=500)
    assert np.allclose(np.bincount(rows, mass, 5), 1, atol=1e-6)
    assert (np.bincount(cols, mass, 12) <= 1 + 1e-3).all()  # capacity one per free ID


def test_trie_csr():
    codes = np.array([[0, 1, 2], [0, 1, 3], [1, 0, 0]])
    t = build_trie(codes, 4)
    assert t["children_1"].tolist() == [0, 1]
    # level 3: prefixes (0,1) -> 4 and (1,0) -> 4
    assert t["prefix_3"].tolist() == [1, 4]
    assert t["children_3"].tolist() == [2, 3, 0] and t["indptr_3"].tolist() == [0, 2, 3]
    assert t["item_of_sid"].tolist() == [0, 1, 2] and t["sid"].tolist() == sid_int(codes, 4).tolist()
    assert (sid_codes(t["sid"].numpy(), 4, 3) == codes).all()


def test_last_level_first_under_contention_cheaper_mover_wins():
    # K=2, L=3. Three items on (0,0,0): one keeper, two movers; under the prefix (0,0) only (0,0,1) is
    # free. Both movers are *closer* to (0,1,0) than to (0,0,1), so a plain nearest-free-ID greedy would
    # change level 2 for the first mover. Last level first: the slot (0,0,1) goes to the mover for whom
    # it is cheaper (item 2, not item 1 by index order), and only the other one widens to level 2.
    cb = np.zeros((3, 2, 2), np.float32)
    cb[1] = [[0, 0], [0, 1]]  # c2 = 1 moves up
    cb[2] = [[0, 0], [1, 0]]  # c3 = 1 moves right
    codes = np.zeros((3, 3), int)
    z = np.array([[0.0, 0.0], [0.3, 0.9], [0.45, 0.6]], np.float32)
    new, rep = dedup(codes, z, cb, DedupConfig())
    assert new[0].tolist() == [0, 0, 0]  # keeper: exact reconstruction
    assert new[2].tolist() == [0, 0, 1]  # (0.45, 0.6): cost 0.6625 to (1,0) vs 1.30 for item 1
    assert new[1].tolist()[:2] == [0, 1]  # the other mover changes level 2
    assert rep["moved_from_level_3"] == 1 and rep["moved_from_level_2"] == 1 and rep["moved_from_level_1"] == 0


def _sequential_greedy(rows, cols, order):
    taken_r, taken_c, out = set(), set(), []
    for e in order:
        if rows[e] not in taken_r and cols[e] not in taken_c:
            taken_r.add(rows[e])
            taken_c.add(cols[e])
            out.append(int(e))
    return sorted(out)


def test_greedy_matching_is_the_sequential_greedy():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_r, n_c, E = (int(x) for x in rng.integers(1, 30, 3) * [1, 1, 6])
        rows, cols = rng.integers(0, n_r, E), rng.integers(0, n_c, E)
        order = np.lexsort((rng.random(E), -rng.integers(0, 4, E)))  # masses with ties, broken by cost
        got = greedy_matching(rows, cols, order, n_r, n_c)
        assert sorted(got.tolist()) == _sequential_greedy(rows, cols, order)
    for n in (500, 3000):  # large enough for passes of many edges (the sweep ends only the tail)
        rows, cols = rng.integers(0, n, 8 * n), rng.integers(0, n, 8 * n)
        order = np.lexsort((rng.random(8 * n), -rng.integers(0, 4, 8 * n)))
        assert sorted(greedy_matching(rows, cols, order, n, n).tolist()) == _sequential_greedy(rows, cols, order)


def test_candidate_search_with_a_full_beam_is_exhaustive():
    # beam >= K^(L-1): the search sees every ID, so it must return the n cheapest free IDs that keep levels < w
    rng = np.random.default_rng(1)
    K, L, d = 4, 3, 3
    cb = rng.standard_normal((L, K, d)).astype(np.float32)
    all_codes = sid_codes(np.arange(K ** L), K, L)
    used = rng.choice(K ** L, 40, replace=False)
    occ = Occupancy(used, K, L)
    z = rng.standard_normal((5, d)).astype(np.float32)
    prefix = all_codes[rng.integers(0, K ** L, 5)]
    for w in range(L):
        ids, costs = find_candidates(torch.from_numpy(z), torch.from_numpy(prefix), w, torch.from_numpy(cb), occ,
                                     n_keep=6, beam=K ** (L - 1))
        for i in range(5):
            ok = (all_codes[:, :w] == prefix[i, :w]).all(1) & ~np.isin(np.arange(K ** L), used)
            cand = np.flatnonzero(ok)
            c = ((z[i] - reconstruction(all_codes[cand], cb)) ** 2).sum(1)
            best = cand[np.argsort(c, kind="stable")[:6]]
            assert ids[i][ids[i] >= 0].tolist() == best.tolist()
            assert np.allclose(costs[i][: len(best)], np.sort(c)[:6], rtol=1e-5)


def test_a_narrow_beam_skips_full_prefixes():
    # K=3, beam 1. (0,0,*) and (0,1,*) are full; the mover on (0,0,0) is nearest to c2=1, then c2=0, then c2=2.
    # A beam that kept the nearest prefix would find nothing free under it; full prefixes leave the beam, so
    # the mover changes level 2 to the one open prefix (0,2) and keeps c1 (changing c1 costs ~100).
    cb = np.zeros((3, 3, 2), np.float32)
    cb[0] = [[0, 0], [10, 10], [10, -10]]
    cb[1] = [[0, 0], [0, 1], [0, 2]]
    cb[2] = [[0, 0], [1, 0], [2, 0]]
    codes = np.array([[0, a, b] for a in (0, 1) for b in range(3)] + [[0, 0, 0]])
    z = np.concatenate([reconstruction(codes[:6], cb), [[0.0, 0.9]]]).astype(np.float32)
    new, rep = dedup(codes, z, cb, DedupConfig(beam=1))
    assert new[6].tolist() == [0, 2, 0]
    assert rep["moved_from_level_2"] == 1 and rep["moved_from_level_1"] == 0


def test_sparse_occupancy_gives_the_same_ids(monkeypatch):
    codes, z, cb = constructed(seed=3, n=150)
    dense, _ = dedup(codes, z, cb, DedupConfig())
    monkeypatch.setattr(Occupancy, "DENSE_MAX", 0)  # as for K^L > 2^28: sorted arrays and bisection
    sparse, _ = dedup(codes, z, cb, DedupConfig())
    assert (dense == sparse).all()


def test_greedy_matching_of_a_chain_is_the_sequential_greedy():
    # a path whose edge ranks fall along it: one edge per pass of locally first edges (the sequential sweep ends it)
    n = 300
    rows = np.concatenate([np.arange(n), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.arange(n - 1)])
    path = np.ravel(np.column_stack([np.arange(n - 1), n + np.arange(n - 1)]))
    order = np.append(path, n - 1)[::-1]
    got = greedy_matching(rows, cols, order, n, n)
    assert sorted(got.tolist()) == _sequential_greedy(rows, cols, order)


@pytest.mark.parametrize("field,value", [("candidates", 0), ("beam", 0), ("chunk", -1), ("iters", 0), ("reg", 0.0),
                                         ("keep", "last")])
def test_bad_dedup_settings_are_one_line_errors(field, value):
    with pytest.raises(ValueError, match=f"dedup.{field} must"):
        DedupConfig(**{field: value})
