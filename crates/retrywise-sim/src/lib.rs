//! # retrywise-sim
//!
//! A laboratory for retry policies: a fault-injecting upstream configured by scenario
//! files ([`scenario`], [`queueing`]), an open-loop load driver ([`driver`]) that runs the
//! same retrywise policies ([`policies`]) in virtual time (deterministic, fast) or over
//! HTTP on loopback ([`transport`], [`server`]: the upstream served on a port), a
//! scoreboard ([`score`](mod@score)) and plots ([`plot`]), the generator of training data
//! ([`generate`]), the learning loop ([`learn`]: record, train, gate, serve), the results
//! report ([`report`]) and the choice of the model that decides best ([`select`]).
//!
//! ```
//! use std::sync::Arc;
//! use retrywise_sim::driver::{RunOptions, run};
//! use retrywise_sim::policies::find;
//! use retrywise_sim::scenario::Scenario;
//! use retrywise_sim::score::score;
//!
//! let scenario = Arc::new(Scenario::load("blips")?);
//! let mut opts = RunOptions::new(Arc::clone(&scenario));
//! opts.requests = 2_000;
//! let result = run(find("exp-full-jitter")?, &opts)?;
//! let s = score(&result, &scenario, opts.rps);
//! assert!(s.success_rate > 0.99);
//! # Ok::<(), retrywise_sim::SimError>(())
//! ```

pub mod driver;
mod error;
pub mod generate;
pub mod learn;
pub mod plot;
pub mod policies;
pub mod queueing;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod score;
pub mod select;
pub mod server;
pub mod transport;

pub use error::SimError;

use driver::{Mode, PolicyRun, RunOptions};
use score::{Scoreboard, score};

/// Runs every policy in `policies` on `opts` and scores them. Virtual-time runs use every
/// CPU (each run is independent and deterministic); HTTP runs go one after another.
///
/// # Errors
/// Unknown policies, the oracle over HTTP, and run failures.
pub fn scoreboard(
    policies: &[String],
    opts: &RunOptions,
) -> Result<(Scoreboard, Vec<PolicyRun>), SimError> {
    scoreboard_with(policies, opts, |_| {})
}

/// [`scoreboard`], calling `on_run` with each policy's name as its run ends (a progress
/// bar's step: over HTTP each run takes the scenario's whole duration).
///
/// # Errors
/// As [`scoreboard`].
pub fn scoreboard_with(
    policies: &[String],
    opts: &RunOptions,
    on_run: impl Fn(&str) + Sync,
) -> Result<(Scoreboard, Vec<PolicyRun>), SimError> {
    let specs = policies
        .iter()
        .map(|p| policies::find(p))
        .collect::<Result<Vec<_>, _>>()?;
    // Refused before any run: not after the policies before it ran over HTTP for minutes.
    if opts.mode != Mode::Virtual
        && let Some(spec) = specs.iter().find(|s| s.virtual_only())
    {
        return Err(SimError::VirtualOnly(spec.name.to_owned()));
    }
    // The options every run shares, checked once before any: a run refused is not
    // reported done, nor after the others ran.
    driver::check(opts)?;
    let run = |spec: &&policies::Contender| {
        let r = driver::run(spec, opts);
        if r.is_ok() {
            on_run(spec.name);
        }
        r
    };
    let runs: Vec<Result<PolicyRun, SimError>> = if opts.mode == Mode::Virtual {
        par_map(&specs, run)
    } else {
        specs.iter().map(run).collect()
    };
    let runs = runs.into_iter().collect::<Result<Vec<_>, _>>()?;
    let board = Scoreboard {
        scenario: opts.scenario.name.clone(),
        mode: match opts.mode {
            Mode::Virtual => "virtual".into(),
            Mode::Http { .. } => "http".into(),
        },
        rps: opts.rps,
        seed: opts.seed,
        trigger_end_s: opts.scenario.trigger_end(),
        recovery_measurable: runs
            .first()
            .is_some_and(|r| score::recovery_measurable(r, &opts.scenario)),
        results: runs
            .iter()
            .map(|r| score(r, &opts.scenario, opts.rps))
            .collect(),
    };
    Ok((board, runs))
}

/// `f` over `items` on every CPU, results in order.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    let r = f(item);
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    // Every index below `items.len()` was taken by exactly one thread, and the scope
    // joined them all, so every slot is filled.
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every slot filled")
        })
        .collect()
}
