import numpy as np
import pytest

from amint_pl.data.splits import CALIB_SLICES, ROLES, MembershipSplits, SplitSizes, build_splits
from amint_pl.errors import SplitError

SIZES = SplitSizes(
    members=400,
    members_unseen_fraction=0.25,
    external=300,
    nonmembers_calib=100,
    calib_fraction=0.1,
)


def test_roles_are_disjoint_and_sized():
    s = build_splits(1000, 500, SIZES, seed=0)
    assert len(s["members_seen"]) == 300 and len(s["members_unseen"]) == 100
    assert (
        len(s["external"]) == 300
        and len(s["nonmembers_calib"]) == 100
        and len(s["nonmembers_eval"]) == 400
    )
    train = np.concatenate([s["members_seen"], s["members_unseen"], s["external"]])
    assert len(np.unique(train)) == len(train)
    assert not set(s["nonmembers_calib"]) & set(s["nonmembers_eval"])
    for slice_name, role in CALIB_SLICES.items():
        assert set(s[slice_name]) <= set(s[role]) and len(s[slice_name]) == round(
            0.1 * len(s[role])
        )


def test_reported_sets_hold_every_sample_but_the_calibration_slices():
    s = build_splits(1000, 500, SIZES, seed=0)
    for protocol, role in (("paper", "members_seen"), ("strict", "members_unseen")):
        members, nonmembers = s.reported(protocol)
        assert set(members) == set(s[role]) - set(s[f"{role}_calib"])
        assert len(members) == len(s[role]) - len(s[f"{role}_calib"])
        assert np.array_equal(nonmembers, s["nonmembers_eval"]) and len(nonmembers) == 400


def test_population_is_the_rest_of_the_train_pool_and_touches_no_other_role(tmp_path):
    s = build_splits(1000, 500, SIZES, seed=0)
    trained = set(s.members) | set(s["external"])
    assert len(s["population"]) == 1000 - 700 and not set(s["population"]) & trained
    capped = build_splits(1000, 500, SplitSizes(**{**SIZES.__dict__, "population": 50}), seed=0)
    assert len(capped["population"]) == 50
    with pytest.raises(SplitError, match="population"):
        build_splits(1000, 500, SplitSizes(**{**SIZES.__dict__, "population": 301}), seed=0)
    # A splits file written before the role existed loads with an empty population.
    s.save(tmp_path / "splits.npz")
    data = {k: v for k, v in np.load(tmp_path / "splits.npz").items() if "population" not in k}
    np.savez(tmp_path / "old.npz", **data)
    old = MembershipSplits.load(tmp_path / "old.npz")
    assert len(old["population"]) == 0 and "population" not in old.fingerprints()


def test_same_seed_same_splits_other_seed_other_splits():
    a, b, c = (build_splits(1000, 500, SIZES, seed) for seed in (3, 3, 4))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert all(np.array_equal(a[r], b[r]) for r in ROLES)


def test_reload_is_identical(tmp_path):
    s = build_splits(1000, 500, SIZES, seed=1)
    s.save(tmp_path / "splits.npz")
    loaded = MembershipSplits.load(tmp_path / "splits.npz")
    assert loaded.fingerprints() == s.fingerprints() and loaded.seed == 1
    assert loaded.pool_sizes == {"train": 1000, "test": 500}
    assert np.array_equal(loaded.reported("paper")[0], s.reported("paper")[0])


def test_changed_file_is_refused(tmp_path):
    s = build_splits(1000, 500, SIZES, seed=1)
    s.save(tmp_path / "splits.npz")
    data = dict(np.load(tmp_path / "splits.npz"))
    data["external"] = data["external"].copy()
    data["external"][0] = 999_999
    np.savez(tmp_path / "splits.npz", **data)
    with pytest.raises(SplitError, match="fingerprint"):
        MembershipSplits.load(tmp_path / "splits.npz")


def test_sizes_larger_than_the_pool_are_refused():
    with pytest.raises(SplitError, match="exceeds the train pool"):
        build_splits(500, 500, SIZES, seed=0)
    with pytest.raises(SplitError, match="nonmembers_calib"):
        build_splits(1000, 100, SIZES, seed=0)
