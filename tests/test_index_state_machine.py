"""Property-based state machine: DenseIndex against a dict + numpy brute-force model.

Hypothesis drives random sequences of add / upsert / remove / compact / save+load / (filtered) search,
valid and invalid, on Flat and HNSW indexes with int and string ids. After every step the index holds
exactly the model's ids; every search equals brute force over the model (ties are improbable with
Gaussian vectors, and HNSW over <= 30 vectors with efSearch 64 searches its whole graph); a call that
raises must leave the index equal to the model, which it does not touch.
"""

import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memret import DenseIndex, exact_search

DIM = 8
KEYS = st.lists(st.integers(0, 29), min_size=1, max_size=6)
SEED = st.integers(0, 2**32 - 1)


class IndexMachine(RuleBasedStateMachine):
    factory, metric, str_ids = "Flat", "l2", False

    def __init__(self) -> None:
        super().__init__()
        self.idx = DenseIndex(DIM, self.factory, self.metric,
                              search_params={"efSearch": 64} if self.factory.startswith("HNSW") else None)
        self.model: dict = {}
        self.typed = False  # the id type is fixed by the first add; until then pads are -1
        self.folder = tempfile.mkdtemp(prefix="memret-sm-")

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def key(self, i: int):
        return f"k{i}" if self.str_ids else i

    def keys(self, nums: list[int]) -> list:
        return [self.key(i) for i in nums]

    @staticmethod
    def vectors(n: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)

    def rejected(self, call, errors=(KeyError, ValueError, TypeError)) -> None:
        """``call`` must raise; the index must still equal the model (checked by the invariant)."""
        try:
            call()
        except errors:
            return
        raise AssertionError("the call should have been rejected")

    # ------------------------------------------------------------------ writes
    @rule(nums=KEYS, seed=SEED)
    def add(self, nums, seed):
        keys, x = self.keys(nums), self.vectors(len(nums), seed)
        if len(set(keys)) < len(keys) or any(k in self.model for k in keys):
            self.rejected(lambda: self.idx.add(keys, x))
            return
        self.idx.add(keys, x)
        self.model.update(zip(keys, x))
        self.typed = True

    @rule(nums=KEYS, seed=SEED)
    def upsert(self, nums, seed):
        keys, x = self.keys(nums), self.vectors(len(nums), seed)
        if len(set(keys)) < len(keys):
            self.rejected(lambda: self.idx.upsert(keys, x))
            return
        self.idx.upsert(keys, x)
        self.model.update(zip(keys, x))
        self.typed = True

    @rule(nums=KEYS, skip=st.booleans())
    def remove(self, nums, skip):
        keys = self.keys(nums)
        missing = [k for k in keys if k not in self.model]
        if len(set(keys)) < len(keys) or (missing and not skip):
            self.rejected(lambda: self.idx.remove(keys, missing="skip" if skip else "raise"))
            return
        assert self.idx.remove(keys, missing="skip" if skip else "raise") == len(keys) - len(missing)
        for k in keys:
            self.model.pop(k, None)

    @rule()
    def compact(self):
        self.idx.compact()
        assert self.idx.n_tombstones == 0

    @rule()
    def save_and_load(self):
        self.idx.save(self.folder)
        self.idx = DenseIndex.load(self.folder)

    @rule(k=st.integers(-1, 0))
    def bad_k(self, k):
        self.rejected(lambda: self.idx.search(self.vectors(1, 0), k))

    # ------------------------------------------------------------------ reads
    @rule(seed=SEED, k=st.integers(1, 8), allowed=st.none() | st.lists(st.integers(0, 34), max_size=10))
    def search(self, seed, k, allowed):
        xq = self.vectors(3, seed)
        allowed_keys = None if allowed is None else self.keys(allowed)
        if allowed_keys == []:
            allowed_keys = None
        D, I = self.idx.search(xq, k, allowed=allowed_keys)
        pool = [key for key in self.model if allowed_keys is None or key in allowed_keys]
        pad = None if self.str_ids and self.typed else -1
        if not pool:
            assert all(v == pad for v in I.ravel().tolist())
            return
        xb = np.stack([self.model[key] for key in pool])
        De, Ie = exact_search(xb, xq, k, self.metric)
        expect = [[pool[j] if j >= 0 else pad for j in row] for row in Ie.tolist()]
        assert I.tolist() == expect
        np.testing.assert_allclose(D, De, rtol=1e-4, atol=1e-4)

    @invariant()
    def same_ids(self):
        assert len(self.idx) == len(self.model)
        assert sorted(self.idx.ids(), key=str) == sorted(self.model, key=str)


def machine(factory: str, metric: str, str_ids: bool):
    cls = type(f"Machine_{factory}_{metric}_{'str' if str_ids else 'int'}", (IndexMachine,),
               {"factory": factory, "metric": metric, "str_ids": str_ids})
    cls.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
    return cls.TestCase


TestFlatIntL2 = machine("Flat", "l2", False)
TestFlatStrIP = machine("Flat", "ip", True)
TestHNSWIntL2 = machine("HNSW32", "l2", False)
TestHNSWStrCosine = machine("HNSW32", "cosine", True)

