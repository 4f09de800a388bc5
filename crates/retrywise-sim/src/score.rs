//! The scoreboard: what each policy achieved, in numbers.

use serde::Serialize;

use crate::driver::PolicyRun;
use crate::scenario::Scenario;

/// One policy's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// The policy.
    pub policy: String,
    /// Logical requests that succeeded.
    pub success_rate: f64,
    /// Requests sent upstream per logical request (amplification).
    pub attempts_per_request: f64,
    /// The busiest bin's upstream load (a second by default: `RunOptions::bin`), over the
    /// load offered in a bin (the rate's share; a burst's whole run).
    pub peak_load_ratio: f64,
    /// Median end-to-end latency of successes, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile, ms.
    pub p999_ms: Option<f64>,
    /// Seconds from the end of the trigger until goodput (the successes that end in a bin,
    /// whenever their request arrived) is back to 90 % of the offered load (the requests
    /// that arrive in it) for three bins in a row that had arrivals (empty bins skipped);
    /// `None` if it never comes back (or the scenario has no trigger).
    pub recovery_s: Option<f64>,
    /// Logical requests offered.
    pub requests: u64,
    /// Requests sent upstream.
    pub attempts: u64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
    /// Calls the policy gave up on, by reason (`max_attempts`, `budget_exhausted`,
    /// `low_success_probability`, …): why its requests that failed stopped retrying. At
    /// most the failed requests: one the driver's deadline cancelled while it waited or
    /// ran (a rate limiter's token, a bulkhead's queue) is not a stop.
    pub stops: std::collections::BTreeMap<String, u64>,
}

/// The `q`-quantile of `sorted` by nearest rank: its `ceil(q·n)`-th smallest (the first
/// for `q` = 0); none of an empty slice. The scoreboard's quantiles, and the demo's.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The first whole bin at or after `end_s` seconds (in nanoseconds: a float division
/// would put 1.1 s over 0.1 s bins at 12, not 11).
fn first_bin_after(end_s: f64, bin: std::time::Duration) -> usize {
    let end = (end_s * 1e9).round() as u128;
    let bin = bin.as_nanos().max(1);
    usize::try_from(end.div_ceil(bin)).unwrap_or(usize::MAX)
}

/// Whether `run` lasts long enough to measure recovery from `scenario`'s trigger: three
/// bins with arrivals after its end (a run shortened with `--requests` may not have
/// them). Without a trigger there is nothing to measure.
pub fn recovery_measurable(run: &PolicyRun, scenario: &Scenario) -> bool {
    scenario
        .trigger_end()
        .is_some_and(|end| busy_bins_after(&run.series, end).len() >= 3)
}

/// The bins after `end` (seconds) that had arrivals: recovery is judged on them alone (a
/// bin nobody arrived in says nothing either way; at a few requests a second one in seven
/// is empty, and counted unhealthy it made recovery a matter of luck).
fn busy_bins_after(s: &crate::driver::Series, end: f64) -> Vec<usize> {
    (first_bin_after(end, s.bin)..s.offered.len())
        .filter(|&i| s.offered[i] > 0)
        .collect()
}

/// Scores a run of `scenario` at `rps`.
pub fn score(run: &PolicyRun, scenario: &Scenario, rps: f64) -> Score {
    let n = run.outcomes.len() as u64;
    let ok = run.outcomes.iter().filter(|o| o.ok).count() as u64;
    let attempts: u64 = run.outcomes.iter().map(|o| u64::from(o.attempts)).sum();
    let mut lat: Vec<f64> = run
        .outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| (o.done.saturating_sub(o.arrival)).as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(f64::total_cmp);
    let s = &run.series;
    let bin_s = s.bin.as_secs_f64();
    // The load offered in a bin: the rate's share of it, or - a burst sends every request
    // at once, however many `--requests` asked for - the whole run's.
    let offered_per_bin = match scenario.arrivals {
        crate::scenario::Arrivals::Poisson => rps * bin_s,
        crate::scenario::Arrivals::Burst => (n as f64).max(1.0),
    };
    let peak = s.attempts.iter().copied().max().unwrap_or(0) as f64 / offered_per_bin;
    let recovery_s = scenario.trigger_end().and_then(|end| {
        let healthy =
            |i: usize| s.goodput.get(i).copied().unwrap_or(0) as f64 >= 0.9 * s.offered[i] as f64;
        // Three bins in a row that had arrivals, all healthy; the last three the run holds
        // are the last window.
        busy_bins_after(s, end)
            .windows(3)
            .find(|w| w.iter().all(|&i| healthy(i)))
            .map(|w| (w[0] as f64 * bin_s - end).max(0.0))
    });
    Score {
        policy: run.policy.clone(),
        success_rate: if n == 0 { 0.0 } else { ok as f64 / n as f64 },
        attempts_per_request: if n == 0 {
            0.0
        } else {
            attempts as f64 / n as f64
        },
        peak_load_ratio: peak,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        p999_ms: quantile(&lat, 0.999),
        recovery_s,
        requests: n,
        attempts,
        wall_s: run.wall.as_secs_f64(),
        stops: run.stops.clone(),
    }
}

/// A scoreboard of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scoreboard {
    /// The scenario.
    pub scenario: String,
    /// `"virtual"` or `"http"`.
    pub mode: String,
    /// Offered rate.
    pub rps: f64,
    /// Seed.
    pub seed: u64,
    /// When the scenario's trigger ends, seconds (recovery is measured from there).
    pub trigger_end_s: Option<f64>,
    /// Whether the runs last three bins past the trigger's end, so that a recovery can be
    /// seen: when not, no policy's `recovery_s` says anything ("n/a" in the table).
    pub recovery_measurable: bool,
    /// One score per policy, in the order run.
    pub results: Vec<Score>,
}

impl Scoreboard {
    /// The scoreboard as a table.
    pub fn table(&self) -> String {
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        let mut out = format!(
            "scenario {} ({}, {} requests at {}/s, seed {})\n",
            self.scenario,
            self.mode,
            self.results.first().map_or(0, |r| r.requests),
            self.rps,
            self.seed
        );
        out.push_str(&format!(
            "{:<16} {:>8} {:>9} {:>9} {:>7} {:>7} {:>8} {:>9}\n",
            "policy", "success", "attempts", "peak", "p50 ms", "p99 ms", "p99.9 ms", "recovery"
        ));
        for r in &self.results {
            let recovery = match (r.recovery_s, self.trigger_end_s) {
                (Some(s), _) => format!("{s:.0} s"),
                (None, Some(_)) if self.recovery_measurable => "never".to_owned(),
                (None, Some(_)) => "n/a".to_owned(),
                (None, None) => "-".to_owned(),
            };
            out.push_str(&format!(
                "{:<16} {:>7.1}% {:>9.2} {:>8.2}x {:>7} {:>7} {:>8} {:>9}\n",
                r.policy,
                r.success_rate * 100.0,
                r.attempts_per_request,
                r.peak_load_ratio,
                fmt(r.p50_ms),
                fmt(r.p99_ms),
                fmt(r.p999_ms),
                recovery
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Series;

    fn run(offered: Vec<u64>, goodput: Vec<u64>) -> PolicyRun {
        PolicyRun {
            policy: "p".into(),
            outcomes: Vec::new(),
            series: Series {
                bin: std::time::Duration::from_secs(1),
                attempts: offered.clone(),
                offered,
                goodput,
            },
            wall: std::time::Duration::ZERO,
            stops: Default::default(),
        }
    }

    fn ended_at(end_s: u32) -> Scenario {
        let text = format!(
            "name = \"t\"\nrps = 10\nduration_s = 6\ntrigger_end_s = {end_s}\n\
             [upstream]\nworkers = 4\n[upstream.latency]\nmedian_ms = 20\n\
             [[phases]]\nstart_s = 1\nend_s = {end_s}\noutage = true\n"
        );
        Scenario::parse(&text, "t").unwrap()
    }

    /// Recovery is the first of three healthy bins in a row after the trigger, the last
    /// three of the run included.
    #[test]
    fn recovery_counts_the_last_three_bins_of_the_run() {
        let ten = || vec![10; 6];
        assert_eq!(recovery(ten(), vec![0, 0, 0, 10, 10, 10], 3), Some(0.0));
        assert_eq!(
            recovery(ten(), vec![0, 0, 0, 0, 10, 10], 3),
            None,
            "two healthy bins are not a recovery"
        );
        assert_eq!(recovery(ten(), vec![0, 0, 10, 9, 10, 10], 2), Some(0.0));
        assert_eq!(
            recovery(ten(), vec![0, 0, 8, 10, 10, 10], 2),
            Some(1.0),
            "under 90 % is not healthy"
        );
    }

    /// The recovery a run with these counts per 1 s bin scores after a trigger ending at
    /// `end_s`.
    fn recovery(offered: Vec<u64>, goodput: Vec<u64>, end_s: u32) -> Option<f64> {
        score(&run(offered, goodput), &ended_at(end_s), 10.0).recovery_s
    }

    /// A burst offers every request at once: its peak is over the whole run's requests,
    /// however many `--requests` asked for (over the scenario's rate, 1,000 requests
    /// sent once each read as a peak of 10x); a Poisson run's, over the rate's share of
    /// a bin.
    #[test]
    fn a_burst_s_peak_is_over_the_requests_it_offered_at_once() {
        let burst = Scenario::load("contention").expect("built-in");
        let once = |n: usize| {
            let mut r = run(vec![n as u64], vec![n as u64]);
            r.outcomes = (0..n)
                .map(|_| crate::driver::Outcome {
                    arrival: std::time::Duration::ZERO,
                    done: std::time::Duration::from_millis(5),
                    ok: true,
                    attempts: 1,
                    status: Some(200),
                })
                .collect();
            r
        };
        assert_eq!(score(&once(1_000), &burst, burst.rps).peak_load_ratio, 1.0);
        assert_eq!(score(&once(40), &burst, burst.rps).peak_load_ratio, 1.0);
        let mut twice = once(40);
        twice.series.attempts = vec![80];
        assert_eq!(score(&twice, &burst, burst.rps).peak_load_ratio, 2.0);
        let s = score(&run(vec![10; 6], vec![10; 6]), &ended_at(3), 10.0);
        assert_eq!(s.peak_load_ratio, 1.0);
    }

    /// A bin nobody arrived in says nothing of recovery: the three healthy bins in a row
    /// are three with arrivals (at a few requests a second an empty one made recovery a
    /// matter of luck).
    #[test]
    fn recovery_skips_bins_without_arrivals() {
        assert_eq!(
            recovery(
                vec![10, 10, 10, 0, 10, 0, 10, 10],
                vec![0, 0, 0, 0, 10, 0, 10, 10],
                3
            ),
            Some(1.0)
        );
        assert_eq!(
            recovery(
                vec![10, 10, 10, 0, 10, 0, 10, 0],
                vec![0, 0, 0, 0, 10, 0, 10, 0],
                3
            ),
            None,
            "two busy healthy bins are not a recovery"
        );
    }

    /// A run that ends within three bins of the trigger's end cannot show a recovery: it
    /// says so rather than "never".
    #[test]
    fn recovery_is_measurable_only_with_three_bins_after_the_trigger() {
        assert!(recovery_measurable(
            &run(vec![10; 6], vec![0; 6]),
            &ended_at(3)
        ));
        assert!(!recovery_measurable(
            &run(vec![10; 6], vec![0; 6]),
            &ended_at(4)
        ));
        let board = |measurable| Scoreboard {
            scenario: "t".into(),
            mode: "virtual".into(),
            rps: 10.0,
            seed: 1,
            trigger_end_s: Some(4.0),
            recovery_measurable: measurable,
            results: vec![score(&run(vec![10; 6], vec![0; 6]), &ended_at(4), 10.0)],
        };
        assert!(
            board(false).table().contains("n/a"),
            "{}",
            board(false).table()
        );
        assert!(board(true).table().contains("never"));
        // Bins counted in whole nanoseconds: 1.1 s over 0.1 s bins starts at bin 11.
        assert_eq!(
            first_bin_after(1.1, std::time::Duration::from_millis(100)),
            11
        );
        assert_eq!(first_bin_after(3.0, std::time::Duration::from_secs(1)), 3);
    }
}
