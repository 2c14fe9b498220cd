"""Property-based tests of the Collection (hypothesis): a state machine against a dict model, and junk input."""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memret.collection import Collection

DIM = 4
IDS = st.text(alphabet=string.ascii_letters + "é-_ ", min_size=1, max_size=6)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False,
                       allow_infinity=False) | st.text(max_size=8),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                       max_leaves=6)
META = st.dictionaries(st.text(max_size=6), JSONISH, max_size=3)


class CollectionMachine(RuleBasedStateMachine):
    """Random add / upsert / delete sequences, checked against a plain dict after every step."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.col = Collection.open(self.dir.name, encoder=False, dim=DIM)
        self.model: dict[str, tuple[str, dict]] = {}

    def vec(self, n: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(n, DIM)) + 0.1

    @rule(ids=st.lists(IDS, min_size=1, max_size=5, unique=True), texts=st.data(), seed=st.integers(0, 99))
    def add(self, ids, texts, seed):
        ts = [texts.draw(st.text(max_size=30).map(lambda s: s.encode("utf-8", "replace").decode()))
              for _ in ids]
        metas = [texts.draw(META) for _ in ids]
        if any(i in self.model for i in ids):
            with pytest.raises(KeyError):
                self.col.add(ids, ts, metas, vectors=self.vec(len(ids), seed))
        else:
            self.col.add(ids, ts, metas, vectors=self.vec(len(ids), seed))
            self.model.update({i: (t, m) for i, t, m in zip(ids, ts, metas)})

    @rule(ids=st.lists(IDS, min_size=1, max_size=5, unique=True), seed=st.integers(0, 99))
    def upsert(self, ids, seed):
        self.col.upsert(ids, ["upserted text"] * len(ids), [{"u": seed}] * len(ids), vectors=self.vec(len(ids), seed))
        self.model.update({i: ("upserted text", {"u": seed}) for i in ids})

    @rule(ids=st.lists(IDS, min_size=1, max_size=5, unique=True))
    def delete(self, ids):
        n = self.col.delete(ids)
        assert n == sum(i in self.model for i in ids)
        for i in ids:
            self.model.pop(i, None)

    @rule(junk=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
    def junk_input_raises_cleanly(self, junk):
        for call in (lambda: self.col.add(junk, junk, junk, vectors=junk),
                     lambda: self.col.search(junk, k=3, where=junk, mode="dense"),
                     lambda: self.col.delete(junk), lambda: self.col.get(junk)):
            try:
                call()
            except (TypeError, ValueError, KeyError):
                pass

    @invariant()
    def matches_model(self):
        assert len(self.col) == len(self.model)
        assert sorted(self.col.ids()) == sorted(self.model)
        if self.model:
            some = sorted(self.model)[:3]
            assert [(d.text, d.metadata) for d in self.col.get(some)] == [self.model[i] for i in some]
            hits = self.col.search(np.ones(DIM), k=len(self.model) + 2, mode="dense")
            assert sorted(h.id for h in hits) == sorted(self.model)

    def teardown(self) -> None:
        self.col.close()
        self.dir.cleanup()


CollectionMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=15, deadline=None,
                                               suppress_health_check=list(HealthCheck))
TestCollectionMachine = CollectionMachine.TestCase
