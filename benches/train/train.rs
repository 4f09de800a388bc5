//! The trainer against scikit-learn, in one run.
//!
//! Generates (once, cached under the target directory) a deterministic synthetic set of
//! 1 M attempt records as Parquet, then times, three times each:
//! - retrywise: read the attempts Parquet with polars → rows → the encoder → time split →
//!   standardize → linfa-logistic (α = 1) → evaluate through `LogisticModel`;
//! - scikit-learn: read the *already encoded* feature matrix → StandardScaler →
//!   `LogisticRegression(C = 1, solver = "lbfgs")` → evaluate (`sklearn_pipeline.py`);
//!
//! and once each, the fit alone under linfa-logistic's default set-up and with each of
//! our fixes added in turn (why the default is slow), and ours once more with
//! single-threaded matrix products. Prints a table and writes
//! `train.json` under the target directory.
//!
//! Run: `pip install -r benches/train/requirements.txt`, then
//! `cargo bench -p retrywise-train-benches` (`-- --quick` skips the ablation).

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ndarray::{Array1, Array2};
use retrywise::model::SuccessModel;
use retrywise_train::data::{self, Filter};
use retrywise_train::fit::{self, FitOptions};
use retrywise_train::metrics::Metrics;

const ROWS: usize = 1_000_000;
const SEED: u64 = 20_261_127;
const ALPHA: f64 = 1.0;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Ours {
    read: f64,
    fit: f64,
    eval: f64,
    metrics: Metrics,
}

fn ours(attempts: &Path) -> Ours {
    let t0 = Instant::now();
    let files = data::resolve(&[attempts.to_string_lossy().into_owned()]).unwrap();
    let (rows, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    let t1 = Instant::now();
    let (tr, va, _) = retrywise_train::split_by_time(&rows, 0.2).unwrap();
    let opts = FitOptions {
        alphas: vec![ALPHA],
        ..FitOptions::default()
    };
    let (fitted, _) = fit::fit(&tr.contexts, &tr.success, &[], &[], &opts, |_| {}).unwrap();
    let t2 = Instant::now();
    let model = fitted.model().unwrap();
    let p: Vec<f64> = va.contexts.iter().map(|c| model.p_success(c)).collect();
    let metrics = Metrics::compute(&p, &va.success);
    let t3 = Instant::now();
    Ours {
        read: (t1 - t0).as_secs_f64(),
        fit: (t2 - t1).as_secs_f64(),
        eval: (t3 - t2).as_secs_f64(),
        metrics,
    }
}

fn sklearn(features: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sklearn_pipeline.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(features)
        .arg(ALPHA.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    assert!(
        out.status.success(),
        "the scikit-learn pipeline failed (pip install -r benches/train/requirements.txt?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One way of fitting, for the ablation.
#[derive(Debug, Clone, Copy, Default)]
struct Setup {
    scaled_tol: bool,
    standardized: bool,
    column_major: bool,
    warm: bool,
    f32: bool,
}

impl Setup {
    fn ours() -> Self {
        Self {
            scaled_tol: true,
            standardized: true,
            column_major: true,
            warm: true,
            f32: true,
        }
    }
}

/// Fits the training rows with `setup`: seconds (fit only) and training log-loss.
fn ablate(attempts: &Path, setup: Setup) -> (f64, f64) {
    let files = data::resolve(&[attempts.to_string_lossy().into_owned()]).unwrap();
    let (rows, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    let (tr, _, _) = retrywise_train::split_by_time(&rows, 0.2).unwrap();
    let mut x = fit::matrix(&tr.contexts);
    if setup.standardized {
        let s = fit::scaler(&x);
        fit::standardize(&mut x, &s);
    }
    if !setup.column_major {
        let mut c = Array2::zeros((x.nrows(), x.ncols()));
        c.assign(&x);
        x = c;
    }
    let y = Array1::from(tr.success);
    let n = x.nrows() as f64;
    let tol = if setup.scaled_tol { 1e-4 * n } else { 1e-4 };
    let xf: Option<Array2<f32>> = setup.f32.then(|| x.mapv(|v| v as f32));
    let t = Instant::now();
    let (w, b) = match &xf {
        Some(xf) => {
            let start = setup
                .warm
                .then(|| fit::initial_guess(xf, &y, ALPHA, 1e-4, 100).unwrap());
            fit::fit_penalty(xf, &y, ALPHA, tol, 100, start.as_ref()).unwrap()
        }
        None => {
            let start = setup
                .warm
                .then(|| fit::initial_guess(&x, &y, ALPHA, 1e-4, 100).unwrap());
            fit::fit_penalty(&x, &y, ALPHA, tol, 100, start.as_ref()).unwrap()
        }
    };
    let secs = t.elapsed().as_secs_f64();
    let z = x.dot(&w);
    let ll = z
        .iter()
        .zip(y.iter())
        .map(|(&z, &yy)| {
            let z = z + b;
            let m = if yy { -z } else { z };
            if m > 0.0 {
                m + (-m).exp().ln_1p()
            } else {
                m.exp().ln_1p()
            }
        })
        .sum::<f64>()
        / n;
    (secs, ll)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("train-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let attempts = dir.join(format!("attempts-{ROWS}-{SEED}.parquet"));
    let features = dir.join(format!("features-{ROWS}-{SEED}.parquet"));
    if std::env::args().any(|a| a == "--ours-only") {
        let (secs, ll) = ablate(&attempts, Setup::ours());
        println!(
            "{}",
            serde_json::json!({"seconds": secs, "training_log_loss": ll})
        );
        return;
    }
    if !attempts.exists() || !features.exists() {
        eprintln!("generating {ROWS} synthetic attempts…");
        let recs = retrywise_train_benches::records(ROWS, SEED);
        let from = recs[(ROWS as f64 * 0.8) as usize].started_at_ms;
        retrywise_train_benches::write(&recs, &attempts, &features, from).unwrap();
    }

    let mut ours_runs = Vec::new();
    let mut sk_runs = Vec::new();
    for i in 0..3 {
        let o = ours(&attempts);
        eprintln!(
            "retrywise run {i}: read {:.2} s, fit {:.2} s, eval {:.2} s, AUC {:.5}",
            o.read,
            o.fit,
            o.eval,
            o.metrics.auc.unwrap_or(f64::NAN)
        );
        ours_runs.push(o);
        let s = sklearn(&features);
        eprintln!("scikit-learn run {i}: {s}");
        sk_runs.push(s);
    }
    let col = |f: &dyn Fn(&Ours) -> f64| median(&ours_runs.iter().map(f).collect::<Vec<_>>());
    let skc = |k: &str| {
        median(
            &sk_runs
                .iter()
                .map(|s| s[k].as_f64().unwrap())
                .collect::<Vec<_>>(),
        )
    };
    let (o_read, o_fit, o_eval) = (col(&|o| o.read), col(&|o| o.fit), col(&|o| o.eval));
    let o_total = o_read + o_fit + o_eval;
    let (s_read, s_fit, s_eval, s_total) =
        (skc("read_s"), skc("fit_s"), skc("eval_s"), skc("total_s"));
    let m = &ours_runs[0].metrics;
    let s = &sk_runs[0];
    println!(
        "\n{ROWS} rows (80 % training by time), alpha {ALPHA}, median of 3 runs each, same machine, same run\n"
    );
    println!("| step | retrywise | scikit-learn | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| read (retrywise: attempts Parquet → contexts; sklearn: the encoded matrix) | {o_read:.2} s | {s_read:.2} s | {:.2} |",
        o_read / s_read
    );
    println!(
        "| fit (retrywise: + time split, encoding, standardizing) | {o_fit:.2} s | {s_fit:.2} s | {:.2} |",
        o_fit / s_fit
    );
    println!(
        "| evaluate | {o_eval:.2} s | {s_eval:.2} s | {:.2} |",
        o_eval / s_eval
    );
    println!(
        "| total | {o_total:.2} s | {s_total:.2} s | {:.2} |",
        o_total / s_total
    );
    let (sa, sb, sl) = (
        s["auc"].as_f64().unwrap(),
        s["brier"].as_f64().unwrap(),
        s["log_loss"].as_f64().unwrap(),
    );
    let (oa, ob) = (m.auc.unwrap(), m.brier);
    println!("\n| metric (validation) | retrywise | scikit-learn | difference |");
    println!("|---|---|---|---|");
    println!("| AUC | {oa:.5} | {sa:.5} | {:+.5} |", oa - sa);
    println!(
        "| Brier | {ob:.5} | {sb:.5} | {:+.2} % |",
        (ob / sb - 1.0) * 100.0
    );
    println!(
        "| log-loss | {:.5} | {sl:.5} | {:+.2} % |",
        m.log_loss,
        (m.log_loss / sl - 1.0) * 100.0
    );

    let mut ablation = Vec::new();
    if !quick {
        // The fit alone, from linfa-logistic's defaults to our set-up, one change at a time.
        let configs: [(&str, Setup); 6] = [
            (
                "linfa-logistic defaults (f64, tolerance 1e-4 absolute, raw features, row-major, start at 0)",
                Setup::default(),
            ),
            (
                "+ tolerance scaled by rows (scikit-learn's stopping rule)",
                Setup {
                    scaled_tol: true,
                    ..Setup::default()
                },
            ),
            (
                "+ standardized features",
                Setup {
                    scaled_tol: true,
                    standardized: true,
                    ..Setup::default()
                },
            ),
            (
                "+ column-major matrix",
                Setup {
                    scaled_tol: true,
                    standardized: true,
                    column_major: true,
                    ..Setup::default()
                },
            ),
            (
                "+ start from a fit on every 20th row",
                Setup {
                    scaled_tol: true,
                    standardized: true,
                    column_major: true,
                    warm: true,
                    ..Setup::default()
                },
            ),
            ("+ f32 features (our set-up)", Setup::ours()),
        ];
        println!("\n| fit set-up (training rows, alpha {ALPHA}) | seconds | training log-loss |");
        println!("|---|---|---|");
        for (name, setup) in configs {
            let (secs, ll) = ablate(&attempts, setup);
            println!("| {name} | {secs:.2} | {ll:.5} |");
            ablation
                .push(serde_json::json!({"setup": name, "seconds": secs, "training_log_loss": ll}));
        }
        // matrixmultiply reads its thread count once per process: ask a child.
        let out = Command::new(std::env::current_exe().unwrap())
            .arg("--ours-only")
            .env("MATMUL_NUM_THREADS", "1")
            .output()
            .unwrap();
        let child: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (secs, ll) = (
            child["seconds"].as_f64().unwrap(),
            child["training_log_loss"].as_f64().unwrap(),
        );
        let name = "our set-up with single-threaded matrix products (MATMUL_NUM_THREADS=1)";
        println!("| {name} | {secs:.2} | {ll:.5} |");
        ablation.push(serde_json::json!({"setup": name, "seconds": secs, "training_log_loss": ll}));
    }
    let json = serde_json::json!({
        "rows": ROWS,
        "retrywise": {"read_s": o_read, "fit_s": o_fit, "eval_s": o_eval, "total_s": o_total, "auc": oa, "brier": ob, "log_loss": m.log_loss},
        "sklearn": {"read_s": s_read, "fit_s": s_fit, "eval_s": s_eval, "total_s": s_total, "auc": sa, "brier": sb, "log_loss": sl, "iterations": s["iterations"]},
        "ablation": ablation,
    });
    std::fs::write(dir.join("train.json"), json.to_string()).unwrap();
}
