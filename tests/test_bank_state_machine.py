"""Property-based state machine: ExemplarBank against a plain dict + numpy model.

Hypothesis drives random sequences of update (every policy, new and seen classes, per-class and
total budgets, int and string refs, refs reused across samples), rejected updates, kNN with and
without leave-one-out, class means / NCM and save + load. The model keeps, per class, how many
exemplars the budget allows and every (feature, label) ever offered under each ref; after every
step the bank must hold exactly that many exemplars of each class, only offered samples, only seen
classes, within the budget; kNN must equal brute force over the bank's rows; a save + load must
give back an equal bank (generator included); a rejected call must change nothing.
"""

import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from memret import ExemplarBank

DIM = 4
POLICIES = ["herding", "random", "closest", "reservoir"]
SEED = st.integers(0, 2**32 - 1)
LABELS = st.lists(st.integers(0, 6), max_size=10)


def state(bank: ExemplarBank) -> tuple:
    """Everything a call may change, as comparable plain values."""
    return (bank.features.tolist(), bank.labels.tolist(), bank.refs.tolist(), bank.refs.dtype == object,
            bank.classes.tolist(), repr(bank._rng.bit_generator.state), dict(bank._class_seen), bank._seen)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def brute_scores(rows: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) similarity (ip, cosine) or squared distance (l2), in float64."""
    rows, q = rows.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        return ((q[:, None, :] - rows[None, :, :]) ** 2).sum(-1)
    if metric == "cosine":
        rows, q = normalize(rows), normalize(q)
    return q @ rows.T


class BankMachine(RuleBasedStateMachine):
    @initialize(per_class=st.booleans(), size=st.integers(1, 5), policy=st.sampled_from(POLICIES),
                metric=st.sampled_from(["cosine", "ip", "l2"]), seed=st.integers(0, 1000), str_refs=st.booleans())
    def setup(self, per_class, size, policy, metric, seed, str_refs):
        budget = {"per_class": size} if per_class else {"total": size + 2}
        self.bank = ExemplarBank(DIM, policy=policy, metric=metric, seed=seed, **budget)
        self.str_refs = str_refs
        self.classes: list[int] = []  # arrival order
        self.count: dict[int, int] = {}  # exemplars the budget lets each class keep
        self.seen: dict[int, int] = {}  # samples offered per class
        self.offered: dict = {}  # ref -> list of (feature tuple, label) offered under it
        self.next_ref = 0
        self.stream_sampled = False  # a total-budget reservoir ran: per-class counts are random from then on
        self.folder = tempfile.mkdtemp(prefix="memret-bank-sm-")
        self.saves = 0

    def teardown(self) -> None:
        if hasattr(self, "folder"):
            shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def ref(self, i: int):
        return f"s{i}" if self.str_refs else i

    def batch(self, labels: list[int], seed: int, reuse: bool):
        g = np.random.default_rng(seed)
        x = g.normal(size=(len(labels), DIM)).astype(np.float32)
        nums = list(range(self.next_ref, self.next_ref + len(labels)))
        if reuse and nums:  # the first (up to) three samples share one ref, maybe an earlier sample's
            nums[:3] = [int(g.integers(0, self.next_ref + 1))] * len(nums[:3])
        return x, np.asarray(labels, dtype=np.int64), np.asarray([self.ref(i) for i in nums], dtype=object
                                                                 if self.str_refs else np.int64)

    def rejected(self, call, errors=(ValueError, TypeError)) -> None:
        before = state(self.bank)
        try:
            call()
        except errors:
            assert state(self.bank) == before, "a rejected call changed the bank"
            return
        raise AssertionError("the call should have been rejected")

    def quota(self, n_classes: int) -> int:
        b = self.bank
        return b.per_class if b.per_class is not None else b.total // max(n_classes, 1)

    # ------------------------------------------------------------------ writes
    @rule(labels=LABELS, seed=SEED, policy=st.sampled_from(POLICIES + [None]), reuse=st.booleans())
    def update(self, labels, seed, policy, reuse):
        b = self.bank
        x, y, refs = self.batch(labels, seed, reuse)
        new_classes = [c for c in dict.fromkeys(labels) if c not in self.count]
        classes = self.classes + new_classes
        used = policy or b.policy
        if used != "reservoir" and b.total is not None and len(classes) > b.total:
            self.rejected(lambda: b.update(x, y, refs=refs, policy=policy))
            return
        before = {c: b.features[b.labels == c].copy() for c in self.classes}
        b.update(x, y, refs=refs, policy=policy)
        self.next_ref += len(labels)
        for xi, yi, ri in zip(x, labels, refs.tolist()):
            self.offered.setdefault(ri, []).append((tuple(xi.tolist()), yi))
            self.seen[yi] = self.seen.get(yi, 0) + 1
        self.classes = classes
        if used == "reservoir" and b.total is not None:  # one reservoir over the whole stream
            assert len(b) == min(b.total, sum(self.count.values()) + len(labels))
            self.count = {c: int((b.labels == c).sum()) for c in classes}
            self.stream_sampled = True
            return
        m = self.quota(len(classes))
        for c in classes:
            self.count[c] = min(m, self.count.get(c, 0) + labels.count(c))
            if c not in labels and c in before:  # an untouched class keeps the top of its priority order
                np.testing.assert_array_equal(b.features[b.labels == c], before[c][:m])

    @rule(labels=st.lists(st.integers(0, 6), min_size=1, max_size=5), seed=SEED,
          how=st.sampled_from(["policy", "nan", "length", "negative", "bool", "float", "refs", "ref_kind", "dim"]))
    def bad_update(self, labels, seed, how):
        b = self.bank
        x, y, refs = self.batch(labels, seed, False)
        policy = None
        if how == "policy":
            policy = "bogus"
        elif how == "nan":
            x[-1, 0] = np.nan
        elif how == "length":
            y = y[:-1]
        elif how == "negative":
            y = y - 7
        elif how == "bool":
            y = y.astype(bool)
        elif how == "float":
            y = y.astype(float)
        elif how == "refs":
            refs = refs[:-1]
        elif how == "ref_kind":
            if not len(b):
                return  # an empty bank takes either kind
            refs = np.arange(len(y)) if self.str_refs else np.asarray([f"s{i}" for i in range(len(y))])
        elif how == "dim":
            x = np.zeros((len(y), DIM + 1), np.float32)
        self.rejected(lambda: b.update(x, y, refs=refs, policy=policy))

    @rule(data=st.data())
    def bad_lookup(self, data):
        b = self.bank
        q = np.zeros((2, DIM), np.float32)
        k = data.draw(st.sampled_from([0, -1, True, 1.5]))
        exclude = data.draw(st.sampled_from([None, [self.ref(0), self.ref(1)]]))
        self.rejected(lambda: b.knn(q, k, exclude=exclude))
        self.rejected(lambda: b.knn(q, 2, exclude=[self.ref(0)]))  # one ref per query
        if len(b):
            self.rejected(lambda: b.replace_features(b.features[:-1]))

    # ------------------------------------------------------------------ lookups
    @rule(nq=st.integers(0, 4), k=st.integers(1, 8), seed=SEED, loo=st.booleans())
    def knn(self, nq, k, seed, loo):
        b = self.bank
        q = np.random.default_rng(seed).normal(size=(nq, DIM)).astype(np.float32)
        exclude = None
        if loo:  # refs the bank holds (possibly several times) or never saw
            pool = [self.ref(i) for i in range(self.next_ref + 2)] + ([] if self.str_refs else [-1])
            picks = np.random.default_rng(seed + 1).integers(0, len(pool), nq)
            exclude = np.asarray([pool[i] for i in picks], dtype=object if self.str_refs else np.int64)
        D, I = b.knn(q, k, exclude=exclude)
        assert D.shape == I.shape == (nq, k) and D.dtype == np.float32 and I.dtype == np.int64
        l2 = b.metric == "l2"
        S = brute_scores(b.features, q, b.metric)
        for i in range(nq):
            allowed = np.ones(len(b), bool)
            if exclude is not None and not (not self.str_refs and exclude[i] == -1):
                allowed = np.asarray([r != exclude[i] for r in b.refs.tolist()], dtype=bool)
            n_ok = min(k, int(allowed.sum()))
            rows = I[i, :n_ok]
            assert (I[i, n_ok:] == -1).all() and (D[i, n_ok:] == (np.inf if l2 else -np.inf)).all()
            assert (rows >= 0).all() and len(set(rows.tolist())) == n_ok and allowed[rows].all()
            best = np.sort(S[i, allowed]) if l2 else -np.sort(-S[i, allowed])
            np.testing.assert_allclose(D[i, :n_ok], best[:n_ok], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(S[i, rows], best[:n_ok], rtol=1e-4, atol=1e-4)

    @rule(nq=st.integers(0, 4), seed=SEED)
    def class_means_and_ncm(self, nq, seed):
        b = self.bank
        q = np.random.default_rng(seed).normal(size=(nq, DIM)).astype(np.float32)
        held = [c for c in self.classes if self.count[c] > 0]
        cls, means = b.class_means()
        assert cls.tolist() == held and means.shape == (len(held), DIM)
        for c, mu in zip(held, means):
            np.testing.assert_allclose(mu, normalize(normalize(b.features[b.labels == c]).mean(0)), atol=1e-5)
        if not held:
            self.rejected(lambda: b.predict_ncm(q))
            return
        pred = b.predict_ncm(q)
        assert pred.shape == (nq,) and set(pred.tolist()) <= set(held)
        S = brute_scores(means, q, "cosine")
        chosen = S[np.arange(nq), [held.index(c) for c in pred.tolist()]]
        np.testing.assert_allclose(chosen, S.max(1) if nq else chosen, atol=1e-5)

    @rule(same_folder=st.booleans())
    def save_load(self, same_folder):
        self.saves += 0 if same_folder else 1
        path = f"{self.folder}/bank{self.saves}"
        self.bank.save(path)
        back = ExemplarBank.load(path)
        assert state(back) == state(self.bank)
        assert (back.dim, back.per_class, back.total, back.policy, back.metric) == (
            self.bank.dim, self.bank.per_class, self.bank.total, self.bank.policy, self.bank.metric)
        self.bank = back  # the rest of the run continues on the loaded bank

    # ------------------------------------------------------------------ invariants
    @invariant()
    def matches_model(self):
        if not hasattr(self, "bank"):
            return
        b = self.bank
        assert b.classes.tolist() == self.classes
        assert set(b.labels.tolist()) <= set(self.classes)
        assert {c: int((b.labels == c).sum()) for c in self.classes} == self.count
        assert len(b) <= b.capacity and b.features.shape == (len(b), DIM)
        if not self.stream_sampled:  # balance: every class holds min(quota, samples it offered)
            assert all(self.count[c] == min(self.quota(len(self.classes)), self.seen[c]) for c in self.classes)
        for f, y, r in zip(b.features.tolist(), b.labels.tolist(), b.refs.tolist()):
            assert (tuple(f), y) in self.offered[r]  # only offered samples, with their own label
        assert len(set(zip(b.refs.tolist(), map(tuple, b.features.tolist())))) == len(b)  # no sample kept twice


BankMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=20, deadline=None, derandomize=True,
                                         suppress_health_check=[HealthCheck.too_slow])
TestBankMachine = BankMachine.TestCase
