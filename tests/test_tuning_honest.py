"""Honest tuning: the inner-CV shortcuts are used only where they are exact for the head's actual
parameters (else the real pipeline), and what the tuning could not do lands in tuning.csv's
``note`` column and in :func:`featmammo.tuning.read_this_first`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_tuning import BLOCKS, LABELS, _data

from featmammo import heads, tuning
from featmammo.splits import grouped_kfold

CLASSES = list(LABELS)

# every parameter combination the shortcuts accept that a user can reach through --head-param or
# a tune_grid table (each list is one call: several points share a fold, as in tune())
ACCEPTED = [
    ("logreg", [{"C": c} for c in tuning.GRIDS["logreg"]["C"]]),
    ("logreg", [{"C": 1.0, "solver": "newton-cholesky"}, {"C": 1.0, "fit_intercept": False}]),
    ("logreg", [{"C": 1.0, "class_weight": None}, {"C": 1.0, "solver": "newton-cg"}]),
    ("svm-linear", [{"C": c} for c in tuning.GRIDS["svm-linear"]["C"]]),
    ("svm-linear", [{"C": 0.3, "loss": "hinge", "dual": True}, {"C": 0.3, "fit_intercept": False}]),
    ("svm-rbf", tuning.grid_points(tuning.GRIDS["svm-rbf"])),
    ("knn", [{"n_neighbors": k} for k in tuning.GRIDS["knn"]["n_neighbors"]]),
    ("knn", [{"n_neighbors": 7, "metric": "euclidean"}, {"n_neighbors": 7, "p": 2}]),
]
# parameters where a shortcut would not be exact: L1 / elastic-net / no penalty, a gamma that
# follows each calibration fold's rows, another kernel, distance weights, another metric
REFUSED = [
    ("logreg", {"C": 1.0, "l1_ratio": 1.0, "solver": "saga", "max_iter": 3000}),
    ("logreg", {"C": 1.0, "l1_ratio": 0.5, "solver": "saga", "max_iter": 3000}),
    ("logreg", {"C": float("inf")}),
    ("svm-linear", {"C": 0.3, "penalty": "l1", "dual": False}),
    ("svm-rbf", {"C": 1.0, "gamma": "scale"}),
    ("svm-rbf", {"C": 1.0, "gamma": 0.5, "kernel": "poly"}),
    ("knn", {"n_neighbors": 7, "weights": "distance"}),
    ("knn", {"n_neighbors": 7, "p": 1}),
    ("knn", {"n_neighbors": 7, "metric": "manhattan"}),
    ("rf", {"n_estimators": 20}),  # no shortcut for the others: the real pipeline always
    ("xgboost", {"n_estimators": 20, "device": "cpu", "n_jobs": 1}),
]


@pytest.fixture(scope="module")
def fold_data():
    X, y, g = _data(n=150, d=60, seed=3)
    inner = grouped_kfold(y, g, 3, seed=0)
    return X, y, g, inner


def _pipeline_oof(head, params, X, y, g, inner):
    """Out-of-fold probabilities of the real pipeline (heads.make + fit_head with the patients)."""
    out = np.zeros((len(y), len(CLASSES)))
    for tr, va in inner:
        model = heads.make(head, blocks=BLOCKS, **params)
        heads.fit_head(model, X[tr], y[tr], g[tr])
        out[va] = tuning.proba_in(model, X[va], CLASSES)
    return out


@pytest.mark.parametrize("head, points", ACCEPTED, ids=lambda v: str(v)[:60])
def test_every_accepted_shortcut_gives_the_real_pipelines_predictions(head, points, fold_data):
    X, y, g, inner = fold_data
    for p in points:
        assert tuning.shortcut(head, heads.make(head, **p)[-1]) in tuning.SHORTCUTS, p
    cv = tuning.InnerCV(X, y, g, inner, blocks=BLOCKS)
    fast = cv.oof_proba(head, points, {}, CLASSES, seed=0)
    for p, f in zip(points, fast, strict=True):
        slow = _pipeline_oof(head, p, X, y, g, inner)
        # the same optimum up to the solvers' tolerance (the pipeline fits float32 rows)
        tol = 3e-3 if head in ("logreg", "svm-linear") else 1e-6
        np.testing.assert_allclose(f, slow, atol=tol, err_msg=f"{head} {p}")


@pytest.mark.parametrize("head, params", REFUSED, ids=lambda v: str(v)[:60])
def test_refused_parameters_go_through_the_real_pipeline(head, params, fold_data, monkeypatch):
    X, y, g, inner = fold_data
    assert tuning.shortcut(head, heads.make(head, **params)[-1]) is None
    cv = tuning.InnerCV(X, y, g, inner, blocks=BLOCKS)

    def no_shortcut(self):
        raise AssertionError("a refused shortcut was used")

    monkeypatch.setattr(tuning._FoldData, "projected", no_shortcut)
    monkeypatch.setattr(tuning._FoldData, "sq_distances", no_shortcut)
    (fast,) = cv.oof_proba(head, [params], {}, CLASSES, seed=0)
    slow = _pipeline_oof(head, params, X, y, g, inner)
    np.testing.assert_allclose(fast, slow, atol=1e-9)


def test_the_l1_and_distance_weight_shortcuts_were_far_off(fold_data):
    """Why the refusals matter: forced through the shortcut, an L1 logreg and a distance-weighted
    k-NN give other probabilities than their real pipelines (issue 16: up to 0.35 and 0.02)."""
    X, y, g, inner = fold_data
    cv = tuning.InnerCV(X, y, g, inner, blocks=BLOCKS)
    l1 = {"C": 1.0, "l1_ratio": 1.0, "solver": "saga", "max_iter": 3000}
    fd = cv.fold(0)
    tr, va = inner[0]
    Z_tr, Z_va = fd.projected()
    forced = heads.make("logreg", **l1)[-1].fit(Z_tr, y[tr])
    real = heads.make("logreg", blocks=BLOCKS, **l1).fit(X[tr], y[tr])
    diff = np.abs(forced.predict_proba(Z_va) - real.predict_proba(X[va])).max()
    assert diff > 0.05, diff
    D_tr, D_va = fd.sq_distances()
    knn = {"n_neighbors": 7, "weights": "distance"}
    forced = heads.make("knn", **knn)[-1].set_params(estimator__metric="precomputed")
    forced.fit(D_tr, y[tr])
    real = heads.make("knn", blocks=BLOCKS, **knn).fit(X[tr], y[tr])
    diff = np.abs(forced.predict_proba(D_va) - real.predict_proba(X[va])).max()
    assert diff > 1e-3, diff


def test_the_svm_shortcuts_pass_the_patients_to_the_calibration(fold_data, monkeypatch):
    """Patient-grouped calibration folds inside the tuning too (the shortcut fits get groups)."""
    X, y, g, inner = fold_data
    seen = []
    real_fit = heads.PatientCalibratedClassifier.fit

    def spy(self, X, y, groups=None):
        seen.append(groups)
        return real_fit(self, X, y, groups=groups)

    monkeypatch.setattr(heads.PatientCalibratedClassifier, "fit", spy)
    cv = tuning.InnerCV(X, y, g, inner, blocks=BLOCKS)
    cv.oof_proba("svm-linear", [{"C": 0.1}], {}, CLASSES, seed=0)
    cv.oof_proba("svm-rbf", [{"C": 1.0, "gamma": 0.5}], {}, CLASSES, seed=0)
    assert len(seen) == 6
    for groups, (tr, _) in zip(seen, inner + inner, strict=True):
        np.testing.assert_array_equal(groups, g[tr])


# ------------------------------------------------------------------------ notes in tuning.csv
def test_dropped_knn_points_are_rows_with_a_note(fold_data):
    X, y, g, inner = fold_data
    cv = tuning.InnerCV(X, y, g, inner, blocks=BLOCKS)
    n_min = min(len(tr) for tr, _ in inner)
    chosen, rows = tuning.tune(
        cv, "knn", {"n_neighbors": [n_min + 50, 10, 5]}, classes=CLASSES, seed=0
    )
    assert [json.loads(r["params"])["n_neighbors"] for r in rows] == [10, 5, n_min + 50]
    dropped = rows[-1]
    assert np.isnan(dropped["inner_score"]) and not dropped["chosen"]
    assert dropped["note"].startswith("grid points dropped: ") and str(n_min) in dropped["note"]
    assert all(r["note"] == "" for r in rows[:2])
    assert sum(r["chosen"] for r in rows) == 1


def test_skipped_early_stopping_is_noted(fold_data):
    X, y, g, inner = fold_data
    one_patient_each = np.array([f"P{i % 3}" for i in range(len(y))], dtype=object)  # 3 big ones
    y3 = LABELS[np.arange(len(y)) % 3]
    cv = tuning.InnerCV(
        X,
        y3,
        one_patient_each,
        [(np.arange(0, 100), np.arange(100, 150)), (np.arange(50, 150), np.arange(0, 50))],
    )
    chosen, rows = tuning.tune(
        cv, "xgboost", {"max_depth": [2]}, classes=CLASSES,
        base={"device": "cpu", "n_jobs": 1, "n_estimators": 5},
    )  # fmt: skip
    assert rows[0]["note"].startswith("early stopping skipped: 2 of 2 inner fits: too few pat")
    model = heads.make("xgboost", device="cpu", n_jobs=1, n_estimators=5)
    heads.fit_head(model, X, y3, one_patient_each)
    assert heads.fit_notes(model) and tuning.refit_note(model).startswith(
        "early stopping skipped: "
    )
    heads.fit_head(model, X, y3, np.array([f"P{i}" for i in range(len(y))]))
    assert heads.fit_notes(model) == [] and tuning.refit_note(model) == ""


def test_failed_fits_and_an_all_nan_grid_fall_back_to_the_defaults(fold_data):
    X, y, g, inner = fold_data
    cv = tuning.InnerCV(X, y, g, inner, blocks=BLOCKS)
    # liblinear has no elastic net: every fit raises ValueError
    chosen, rows = tuning.tune(
        cv, "logreg", {"C": [1.0, 10.0]}, classes=CLASSES,
        base={"solver": "liblinear", "l1_ratio": 0.5},
    )  # fmt: skip
    assert chosen == {}
    assert [r["chosen"] for r in rows] == [False, False, True]
    assert all(r["note"].startswith("fit failed: ValueError in 3 of 3 inner") for r in rows[:2])
    assert rows[2]["params"] == "{}" and rows[2]["note"].startswith("all-NaN grid: ")


def test_nan_scores_are_noted(fold_data, monkeypatch):
    X, y, g, inner = fold_data
    cv = tuning.InnerCV(X, y, g, inner, blocks=BLOCKS)
    real = tuning.score
    calls = iter([np.nan, 0.5])
    monkeypatch.setattr(tuning, "score", lambda *a, **k: next(calls))
    chosen, rows = tuning.tune(cv, "logreg", {"C": [1.0, 10.0]}, classes=CLASSES)
    assert chosen == {"C": 10.0} and rows[0]["note"].startswith("nan score: ")
    monkeypatch.setattr(tuning, "score", real)


def test_read_this_first_groups_the_notes():
    rows = []
    for f in ("resnet50", "hybrid"):
        for h in ("logreg", "knn"):
            rows.append(
                {
                    "features": f,
                    "head": h,
                    "fold": "2",
                    **tuning.untuned_row("CV fold 2's training side has 2 patient(s)"),
                }
            )
            rows.append({"features": f, "head": h, "fold": "1", "params": '{"C": 1.0}',
                         "inner_score": 0.6, "chosen": True, "note": ""})  # fmt: skip
        note = "grid points dropped: n_neighbors 40 is more than the 33 rows"
        rows.append({"features": f, "head": "knn", "fold": "1", "params": '{"n_neighbors": 40}',
                     "inner_score": np.nan, "chosen": False, "note": note})  # fmt: skip
    df = pd.DataFrame(rows, columns=list(tuning.TUNING_COLUMNS))
    lines = tuning.read_this_first(df)
    assert len(lines) == 2, lines
    assert "fold 2 (every features set), every head ran **untuned**" in lines[0]
    assert "2 patient(s)" in lines[0]
    assert lines[1].startswith("Tuning (grid points dropped): knn, fold 1 (every features set)")
    assert '{"n_neighbors": 40}' in lines[1]
    # written and read back as fit and the report do (empty notes come back as nan or "")
    for kw in ({}, {"keep_default_na": False}):
        from io import StringIO

        buf = StringIO()
        df.to_csv(buf, index=False, na_rep="nan")
        assert tuning.read_this_first(pd.read_csv(StringIO(buf.getvalue()), **kw)) == lines
    # a tuning.csv from before the note column: nothing to say
    assert tuning.read_this_first(df.drop(columns="note")) == []
    assert tuning.read_this_first(None) == []


# ------------------------------------------------------------------------ successive halving
def _counted_rf(fold_data, monkeypatch):
    """An InnerCV of ``fold_data`` and the number of points of every ``_fit_points`` call (one
    call per inner fold), with the real ``_fit_points``."""
    X, y, g, inner = fold_data
    calls = []
    real = tuning._fit_points

    def counting(head, points, base, fd, classes, seed):
        calls.append(len(points))
        return real(head, points, base, fd, classes, seed)

    monkeypatch.setattr(tuning, "_fit_points", counting)
    return tuning.InnerCV(X, y, g, inner, blocks=BLOCKS), calls, real


def test_successive_halving_keeps_the_better_half_of_the_first_fold(fold_data, monkeypatch):
    X, y, g, inner = fold_data
    grid = {"min_samples_leaf": [5, 1], "max_features": ["sqrt", 0.5]}
    base = {"n_estimators": 15}
    cv, calls, real = _counted_rf(fold_data, monkeypatch)
    chosen, rows = tuning.tune(cv, "rf", grid, classes=CLASSES, base=base)
    assert calls == [4, 2, 2]  # 4 points on inner fold 1, the better 2 on folds 2 and 3
    pruned = [r for r in rows if r["note"].startswith("pruned: successive halving")]
    kept = [r for r in rows if not r["note"]]
    assert len(pruned) == 2 and len(kept) == 2 and len(rows) == 4
    assert all(np.isnan(r["inner_score"]) and not r["chosen"] for r in pruned)
    # the kept points are the best two on the first inner fold
    points = tuning.grid_points(grid)
    va0 = inner[0][1]
    first = [
        tuning.score("balanced_accuracy", y[va0], p, CLASSES)
        for p, _ in real("rf", points, base, cv.fold(0), CLASSES, 0)
    ]
    best_two = sorted(np.argsort([-s for s in first], kind="stable")[:2])
    assert [json.loads(r["params"]) for r in kept] == [points[i] for i in best_two]
    # the survivors' pooled scores are those of a full run; the winner is their best
    monkeypatch.setattr(tuning, "HALVING_HEADS", ())
    _, full = tuning.tune(cv, "rf", grid, classes=CLASSES, base=base)
    by_params = {r["params"]: r["inner_score"] for r in full}
    for r in kept:
        assert r["inner_score"] == by_params[r["params"]]
    best = max(kept, key=lambda r: r["inner_score"])
    assert best["chosen"] and json.loads(best["params"]) == chosen
    # a method note, not an event for "read this first"
    df = pd.DataFrame([{"features": "hybrid", "head": "rf", "fold": "1", **r} for r in rows])
    assert tuning.read_this_first(df) == []


def test_successive_halving_stops_when_one_point_is_left(fold_data, monkeypatch):
    """A grid of two points keeps one after inner fold 1: it is chosen there and fitted on no
    other fold (that would only score it); its inner_score is fold 1's and a note says so."""
    X, y, g, inner = fold_data
    grid = {"min_samples_leaf": [5, 1]}
    base = {"n_estimators": 15}
    cv, calls, real = _counted_rf(fold_data, monkeypatch)
    chosen, rows = tuning.tune(cv, "rf", grid, classes=CLASSES, base=base)
    assert calls == [2]  # both points on inner fold 1, nothing more
    (kept,) = [r for r in rows if r["chosen"]]
    (pruned,) = [r for r in rows if not r["chosen"]]
    assert kept["note"].startswith("halving: the only point left after inner fold 1 of 3")
    assert pruned["note"].startswith("pruned: ") and np.isnan(pruned["inner_score"])
    va0 = inner[0][1]
    points = tuning.grid_points(grid)
    first = [
        tuning.score("balanced_accuracy", y[va0], p, CLASSES)
        for p, _ in real("rf", points, base, cv.fold(0), CLASSES, 0)
    ]
    best = int(np.argmax(first))
    assert chosen == points[best] and kept["inner_score"] == first[best]
    df = pd.DataFrame([{"features": "hybrid", "head": "rf", "fold": "1", **r} for r in rows])
    assert tuning.read_this_first(df) == []  # method notes, not events


def test_report_states_how_halving_ran():
    """The tuning section's method statement says that halving pruned points and chose some
    heads on one inner fold (the statement matches what ran); nothing when it did not run."""
    from featmammo.report.markdown import _halving_statement

    rows = [
        {"head": "rf", "note": "pruned: successive halving: scored 0.4 on inner fold 1 of 3"},
        {"head": "rf", "note": ""},
        {"head": "xgboost", "note": "halving: the only point left after inner fold 1 of 3: ..."},
        {"head": "xgboost", "note": "pruned: successive halving: scored 0.3 on inner fold 1 of 3"},
        {"head": "logreg", "note": float("nan")},
    ]
    text = _halving_statement(pd.DataFrame(rows))
    assert text.startswith("Successive halving (rf, xgboost): every grid point fitted on inner")
    assert "2 grid row(s) pruned" in text and "in 1 tuning(s) one point was left" in text
    assert _halving_statement(pd.DataFrame([{"head": "logreg", "note": ""}])) == ""


def test_halving_falls_back_to_every_fold_when_fold_one_ranks_nothing(fold_data, monkeypatch):
    """Every point nan on inner fold 1 (its metric undefined there, or every fit failed): no
    pruning by index and no head left untuned by a lone nan survivor -- every point is fitted
    on every fold, as without halving."""
    cv, calls, real = _counted_rf(fold_data, monkeypatch)
    score = tuning.score

    def nan_on_fold_one(metric, y, proba, classes):
        return float("nan") if len(y) == len(cv.inner[0][1]) else score(metric, y, proba, classes)

    monkeypatch.setattr(tuning, "score", nan_on_fold_one)
    grid, base = {"min_samples_leaf": [5, 1]}, {"n_estimators": 15}
    chosen, rows = tuning.tune(cv, "rf", grid, classes=CLASSES, base=base)
    assert calls == [2, 2, 2]  # fold 1, then both points on folds 2 and 3
    assert chosen and all(np.isfinite(r["inner_score"]) for r in rows)
    assert not any(r["note"] for r in rows)
    monkeypatch.setattr(tuning, "HALVING_HEADS", ())
    assert tuning.tune(cv, "rf", grid, classes=CLASSES, base=base)[0] == chosen


def test_a_pruned_point_keeps_its_failed_fit_note(fold_data, monkeypatch):
    """A point whose fit failed on inner fold 1 is pruned, and its failure still reaches
    tuning.csv's note and 'read this first' (a pruned note alone hid it)."""
    cv, _, real = _counted_rf(fold_data, monkeypatch)

    def failing(head, points, base, fd, classes, seed):
        out = real(head, points, base, fd, classes, seed)
        return [
            (np.full_like(p, np.nan), ["failed: ValueError: boom"])
            if pt.get("min_samples_leaf") == 1
            else (p, n)
            for pt, (p, n) in zip(points, out, strict=True)
        ]

    monkeypatch.setattr(tuning, "_fit_points", failing)
    grid, base = {"min_samples_leaf": [5, 1]}, {"n_estimators": 15}
    chosen, rows = tuning.tune(cv, "rf", grid, classes=CLASSES, base=base)
    assert chosen == {"min_samples_leaf": 5}
    (bad,) = [r for r in rows if json.loads(r["params"]) == {"min_samples_leaf": 1}]
    assert (
        bad["note"].startswith("pruned: ")
        and "fit failed: ValueError: boom in 1 of 1" in bad["note"]
    )
    df = pd.DataFrame([{"features": "hybrid", "head": "rf", "fold": "1", **r} for r in rows])
    assert any("fit failed" in line for line in tuning.read_this_first(df))


def test_neg_log_loss_reads_the_columns_in_classes_order():
    """proba's columns are in ``classes`` order, not sorted: near-perfect probabilities must score
    near 0 whatever the classes' alphabetical order."""
    classes = ["normal", "malignant"]  # not sorted
    y = np.array(["normal", "malignant", "normal", "malignant"])
    good = np.array([[0.99, 0.01], [0.01, 0.99], [0.99, 0.01], [0.01, 0.99]])
    assert tuning.score("neg_log_loss", y, good, classes) > -0.02
    assert tuning.score("neg_log_loss", y, good[:, ::-1], classes) < -4
