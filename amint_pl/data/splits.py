"""Membership splits: the roles of every sample, built once from one seed, saved and checked.

Roles (all disjoint):

- from the train pool: `members_seen` (audited CE + MINT positives), `members_unseen` (audited CE
  only: the strict protocol's members), `external` (MINT negatives), `population` (never touched
  by the target: the reference models' data and RMIA's population samples);
- from the test pool: `nonmembers_calib` (threshold calibration, model selection) and
  `nonmembers_eval` (the reported non-members).

A small slice of each member role (`members_seen_calib`, `members_unseen_calib`) is trained on like
the rest of its role but only used for calibration, never reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amint_pl.errors import SplitError

# Every role a run scores and reports (the evaluation's scored sets).
ROLES = ("members_seen", "members_unseen", "external", "nonmembers_calib", "nonmembers_eval")
# The calibration slice of each member role: the role it is a slice of.
CALIB_SLICES = {"members_seen_calib": "members_seen", "members_unseen_calib": "members_unseen"}
# The calibration sets (validation during training).
CALIBRATION_ROLES = (*CALIB_SLICES, "nonmembers_calib")
TRAIN_POOL_ROLES = ("members_seen", "members_unseen", "external", "population")
# Roles a splits file may lack (files written before the role existed): they load empty.
OPTIONAL_ROLES = ("population",)
PROTOCOLS = {"paper": "members_seen", "strict": "members_unseen"}
# Role codes carried by every batch (`batch["role"]`).
ROLE_CODES = {
    "members_seen": 0,
    "members_unseen": 1,
    "external": 2,
    "nonmembers_calib": 3,
    "nonmembers_eval": 4,
    "members_seen_calib": 5,
    "members_unseen_calib": 6,
    "population": 7,
}
ROLE_NAMES = {code: name for name, code in ROLE_CODES.items()}
# The two pools, by the code every batch carries (`batch["pool"]`).
POOL_NAMES = ("train", "test")


def fingerprint(indices: np.ndarray) -> str:
    """SHA-256 of a role's sorted indices (int64, little endian)."""
    return hashlib.sha256(np.sort(np.asarray(indices, dtype="<i8")).tobytes()).hexdigest()


@dataclass(frozen=True)
class SplitSizes:
    """How many samples each role gets.

    members: |D|, the audited model's training data (seen + unseen members).
    members_unseen_fraction: the share of D that the MINT head never sees as positives.
    external: |E|, MINT negatives, disjoint from D.
    nonmembers_calib: test-pool samples for calibration; the rest of the test pool (up to
      nonmembers_eval, None = all) are the reported non-members.
    calib_fraction: the slice of each member role kept for calibration.
    population: train-pool samples the target never touches (None = all that D and E leave).
    """

    members: int
    members_unseen_fraction: float
    external: int
    nonmembers_calib: int
    nonmembers_eval: int | None = None
    calib_fraction: float = 0.1
    population: int | None = None


@dataclass(frozen=True)
class MembershipSplits:
    """Pool indices of every role, drawn with `seed`."""

    indices: dict[str, np.ndarray]
    seed: int
    pool_sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise SplitError unless roles are disjoint within their pool and slices are subsets."""
        for pool_roles in (TRAIN_POOL_ROLES, ("nonmembers_calib", "nonmembers_eval")):
            seen: set[int] = set()
            for role in pool_roles:
                idx = set(self[role].tolist())
                if len(idx) != len(self[role]):
                    raise SplitError(f"role {role} holds repeated indices")
                if seen & idx:
                    raise SplitError(f"role {role} overlaps another role of its pool")
                seen |= idx
        for slice_name, role in CALIB_SLICES.items():
            if not np.isin(self.indices[slice_name], self.indices[role]).all():
                raise SplitError(f"{slice_name} is not a subset of {role}")

    def __getitem__(self, role: str) -> np.ndarray:
        if role in OPTIONAL_ROLES and role not in self.indices:
            return np.zeros(0, dtype=np.int64)
        return self.indices[role]

    @property
    def members(self) -> np.ndarray:
        """D: every sample the audited model trains on."""
        return np.sort(np.concatenate([self["members_seen"], self["members_unseen"]]))

    def fingerprints(self) -> dict[str, str]:
        return {role: fingerprint(idx) for role, idx in sorted(self.indices.items())}

    def fingerprint(self) -> str:
        """One digest of all roles: what results.json and checkpoints record."""
        joined = "".join(f"{role}:{digest};" for role, digest in self.fingerprints().items())
        return hashlib.sha256(joined.encode()).hexdigest()

    def calibrated_protocols(self) -> list[str]:
        """The protocols whose calibration slice holds samples: those a run calibrates and reports."""
        return [p for p, role in PROTOCOLS.items() if len(self[f"{role}_calib"])]

    def reported(self, protocol: str) -> tuple[np.ndarray, np.ndarray]:
        """The reported sets of a protocol: (member indices, non-member indices).

        Every member of the protocol's role but its calibration slice, and every `nonmembers_eval`
        sample: nothing is subsampled (accuracies are balanced instead, see `metrics`).
        """
        role = PROTOCOLS[protocol]
        return np.setdiff1d(self[role], self[f"{role}_calib"]), self["nonmembers_eval"]

    def calibration(self, protocol: str) -> tuple[np.ndarray, np.ndarray]:
        """The calibration sets of a protocol: (member slice, nonmembers_calib)."""
        return self[f"{PROTOCOLS[protocol]}_calib"], self["nonmembers_calib"]

    def save(self, path: str | Path) -> None:
        arrays = {role: idx for role, idx in self.indices.items()}
        arrays.update(
            {f"fingerprint_{role}": np.array(d) for role, d in self.fingerprints().items()}
        )
        arrays["seed"] = np.array(self.seed)
        arrays.update({f"pool_size_{p}": np.array(n) for p, n in self.pool_sizes.items()})
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> MembershipSplits:
        """Load splits.npz and check every role against its stored fingerprint."""
        path = Path(path)
        try:
            with np.load(path) as data:
                names = [*ROLES, *CALIB_SLICES]
                names += [role for role in OPTIONAL_ROLES if role in data.files]
                indices = {role: data[role].astype(np.int64) for role in names}
                stored = {role: str(data[f"fingerprint_{role}"]) for role in names}
                seed = int(data["seed"])
                pool_sizes = {
                    k[len("pool_size_") :]: int(data[k])
                    for k in data.files
                    if k.startswith("pool_size_")
                }
        except (OSError, KeyError, ValueError) as err:
            raise SplitError(
                f"{path} is not a readable amint_pl splits file ({err}); delete it to rebuild"
            ) from err
        for role, idx in indices.items():
            if fingerprint(idx) != stored[role]:
                raise SplitError(
                    f"{path}: role {role} does not match its fingerprint; the file was changed"
                )
        return cls(indices, seed, pool_sizes)


def build_splits(n_train: int, n_test: int, sizes: SplitSizes, seed: int) -> MembershipSplits:
    """Draw every role from one seed.

    Args:
        n_train, n_test: the sizes of the benchmark's train and test pools.
        sizes: role sizes.
        seed: the experiment seed.

    Raises:
        SplitError: when the pools are too small for the requested sizes.
    """
    if sizes.members + sizes.external > n_train:
        raise SplitError(
            f"dataset.splits.members + external = {sizes.members} + {sizes.external} exceeds the "
            f"train pool ({n_train}): lower them"
        )
    if sizes.population is not None and sizes.members + sizes.external + sizes.population > n_train:
        raise SplitError(
            f"dataset.splits.population={sizes.population} exceeds what D and E leave of the "
            f"train pool ({n_train - sizes.members - sizes.external}): lower it, or null for all"
        )
    if sizes.nonmembers_calib >= n_test:
        raise SplitError(
            f"dataset.splits.nonmembers_calib={sizes.nonmembers_calib} leaves no test-pool "
            f"samples ({n_test}) to report: lower it"
        )
    if not 0.0 <= sizes.members_unseen_fraction < 1.0 or not 0.0 < sizes.calib_fraction < 1.0:
        raise SplitError(
            "dataset.splits.members_unseen_fraction must lie in [0, 1) and calib_fraction in (0, 1)"
        )
    rng = np.random.default_rng(seed)
    train_order = rng.permutation(n_train)
    test_order = rng.permutation(n_test)
    n_unseen = int(round(sizes.members * sizes.members_unseen_fraction))
    n_seen = sizes.members - n_unseen
    members_seen = train_order[:n_seen]
    members_unseen = train_order[n_seen : sizes.members]
    external = train_order[sizes.members : sizes.members + sizes.external]
    nonmembers_calib = test_order[: sizes.nonmembers_calib]
    rest = test_order[sizes.nonmembers_calib :]
    nonmembers_eval = rest if sizes.nonmembers_eval is None else rest[: sizes.nonmembers_eval]
    untouched = train_order[sizes.members + sizes.external :]
    population = untouched if sizes.population is None else untouched[: sizes.population]

    def calib_slice(role: np.ndarray) -> np.ndarray:
        n = int(round(len(role) * sizes.calib_fraction))
        return role[: max(n, 1)] if len(role) else role

    indices = {
        "members_seen": members_seen,
        "members_unseen": members_unseen,
        "external": external,
        "nonmembers_calib": nonmembers_calib,
        "nonmembers_eval": nonmembers_eval,
        "population": population,
        "members_seen_calib": calib_slice(members_seen),
        "members_unseen_calib": calib_slice(members_unseen),
    }
    indices = {role: np.sort(idx).astype(np.int64) for role, idx in indices.items()}
    return MembershipSplits(indices, seed, {"train": n_train, "test": n_test})


def load_or_build_splits(
    path: Path, n_train: int, n_test: int, sizes: SplitSizes, seed: int, write: bool = True
) -> MembershipSplits:
    """A run's splits: its splits.npz when there is one (checked against the pools), else drawn
    now and saved there (atomically; `write` False: not saved, e.g. on DDP ranks > 0)."""
    if path.exists():
        splits = MembershipSplits.load(path)
        if splits.pool_sizes and splits.pool_sizes != {"train": n_train, "test": n_test}:
            raise SplitError(
                f"{path} was built for pools {splits.pool_sizes}, the data set now has {n_train}/{n_test}"
            )
        return splits
    splits = build_splits(n_train, n_test, sizes, int(seed))
    if write:
        tmp = path.with_name(f"{path.stem}.tmp.npz")
        splits.save(tmp)
        tmp.replace(path)
    return splits
