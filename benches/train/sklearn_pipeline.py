#!/usr/bin/env python3
"""The reference pipeline: scikit-learn's LogisticRegression (lbfgs) on the same features.

Usage: sklearn_pipeline.py FEATURES.parquet ALPHA
Reads the feature matrix the trainer's encoder produced (columns f0.., success,
validation), standardizes, fits LogisticRegression(C=1/ALPHA, solver="lbfgs") on the
training rows, scores the validation rows, and prints one JSON line of timings and
metrics. Requirements: benches/train/requirements.txt.
"""
import json
import sys
import time

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

path, alpha = sys.argv[1], float(sys.argv[2])
t0 = time.perf_counter()
df = pl.read_parquet(path)
X = df.select([c for c in df.columns if c.startswith("f")]).to_numpy()
y = df["success"].to_numpy()
val = df["validation"].to_numpy()
t1 = time.perf_counter()
pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / alpha, solver="lbfgs", max_iter=100, tol=1e-4))
pipe.fit(X[~val], y[~val])
t2 = time.perf_counter()
classes = list(pipe.classes_)
p = pipe.predict_proba(X[val])[:, classes.index(True)]
yv = y[val]
out = {
    "read_s": t1 - t0,
    "fit_s": t2 - t1,
    "auc": roc_auc_score(yv, p),
    "brier": brier_score_loss(yv, p),
    "log_loss": log_loss(yv, p),
    "iterations": int(pipe[-1].n_iter_[0]),
    "train_rows": int((~val).sum()),
    "validation_rows": int(val.sum()),
}
out["eval_s"] = time.perf_counter() - t2
out["total_s"] = time.perf_counter() - t0
print(json.dumps(out))
