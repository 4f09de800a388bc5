//! A deterministic synthetic attempt set with a known success rule, for benchmarks, tests
//! and demonstrations.
//!
//! Attempts of many calls over a day: first attempts and retries after each error kind,
//! with delays, Retry-After hints and target health drawn per row, and success drawn from
//! a known, partly non-linear rule (waiting out a Retry-After helps a 429 a lot, waiting
//! helps a connect error a little, a high failure rate hurts everything, timeouts get worse
//! with the time since the call started, the wait included), so a linear model can do well
//! but not perfectly. A row's `elapsed` is the time before its wait, as recorded contexts
//! hold it. The generator is SplitMix64: the same seed gives the same records on every
//! machine.
//!
//! ```
//! let recs = retrywise_train::synthetic::records(1_000, 7);
//! assert_eq!(recs.len(), 1_000);
//! assert_eq!(recs, retrywise_train::synthetic::records(1_000, 7));
//! ```

use std::time::Duration;

use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, Failure, Verdict};

/// SplitMix64: deterministic on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        let n = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * n).exp()
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `n` synthetic attempt records, in time order (spread over one day from
/// 2025-11-24T16:00Z), from `seed`; about 55 % succeed.
pub fn records(n: usize, seed: u64) -> Vec<AttemptRecord> {
    records_shifted(n, seed, 0.0)
}

/// Like [`records`], with `logit_shift` added to every attempt's log-odds of success
/// (e.g. −4 makes success rare, +4 makes it common).
pub fn records_shifted(n: usize, seed: u64, logit_shift: f64) -> Vec<AttemptRecord> {
    let mut r = Rng(seed);
    let kinds = [
        (ErrorKind::Timeout, Some(504u16)),
        (ErrorKind::Connect, None),
        (ErrorKind::Reset, None),
        (ErrorKind::Http429, Some(429)),
        (ErrorKind::Http503, Some(503)),
        (ErrorKind::Http5xx, Some(500)),
        (ErrorKind::Http4xx, Some(408)),
        (ErrorKind::Other, None),
    ];
    let t0: u64 = 1_764_000_000_000;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut ctx = AttemptContext::first(if i % 3 == 0 { "payments" } else { "inventory" });
        // Health drifts over the day.
        let phase = (i as f64 / n as f64 * 12.0).sin();
        let rate = (0.1 + 0.15 * phase + 0.1 * r.unit()).clamp(0.0, 1.0);
        ctx.failure_rate = Some(rate);
        ctx.latency_p95 = Some(Duration::from_secs_f64(r.lognormal(0.08, 0.4)));
        ctx.in_flight = Some((r.unit() * 40.0) as u32);
        ctx.failure_rate_recent = Some((rate + 0.2 * (r.unit() - 0.5)).clamp(0.0, 1.0));
        ctx.permanent_rate = Some(0.02 * r.unit());
        ctx.since_success = Some(Duration::from_secs_f64(r.lognormal(0.02, 1.0)));
        let first = r.unit() < 0.45;
        let mut z;
        if first {
            z = 2.2 - 5.0 * rate;
        } else {
            let (kind, status) = kinds[(r.next() % 8) as usize];
            ctx.attempt = 2 + (r.next() % 4) as u32;
            ctx.error = Some(kind);
            ctx.status = status;
            let latency = r.lognormal(0.05, 0.8);
            ctx.latency = Some(Duration::from_secs_f64(latency));
            let delay = r.lognormal(0.3, 1.2).min(60.0);
            ctx.delay = Duration::from_secs_f64(delay);
            // The time since the call's first attempt started, before this wait (as
            // recorded contexts and the decider hold it): the previous attempt's latency
            // and the attempts and waits before it.
            let before = latency + r.lognormal(0.2, 1.0);
            ctx.elapsed = Duration::from_secs_f64(before);
            let ld = (delay * 1e3).ln_1p();
            z = 0.8 - 4.0 * rate - 0.25 * f64::from(ctx.attempt - 2);
            match kind {
                ErrorKind::Http429 => {
                    let ra = 0.5 + (r.next() % 5) as f64;
                    ctx.retry_after = Some(Duration::from_secs_f64(ra));
                    z += if delay >= ra { 1.5 } else { -2.5 };
                }
                ErrorKind::Http503 => {
                    if r.unit() < 0.3 {
                        let ra = 1.0 + (r.next() % 3) as f64;
                        ctx.retry_after = Some(Duration::from_secs_f64(ra));
                        z += if delay >= ra { 1.0 } else { -1.0 };
                    }
                    z += 0.15 * (ld - 5.0);
                }
                ErrorKind::Connect => z += -1.5 + 0.35 * (ld - 5.0),
                // The time since the call started when this attempt starts: after the wait.
                ErrorKind::Timeout => z += -0.5 - 0.3 * (before + delay).min(10.0),
                ErrorKind::Reset | ErrorKind::Http5xx => z += 0.5,
                ErrorKind::Http4xx | ErrorKind::Other => z += -0.8,
            }
        }
        // A little structure a linear model cannot capture.
        z += 0.6 * (phase * 3.0).sin() * rate + logit_shift;
        let ok = r.unit() < sigmoid(z);
        let verdict = if ok {
            Verdict::Success
        } else {
            let mut f = Failure::new(ErrorKind::Http503).with_status(503);
            if r.unit() < 0.2 {
                f = f.with_retry_after(Duration::from_secs(1));
            }
            Verdict::Retryable(f)
        };
        let started = t0 + (i as u64 * 86_400_000) / n as u64;
        out.push(AttemptRecord::new(
            i as u64,
            0,
            started,
            ctx,
            &verdict,
            Duration::from_millis(40),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retry's `elapsed` is the time before its wait, as recorded contexts hold it: at
    /// least the latency of the attempt that failed, and not moving with the wait (it
    /// used to count the wait in).
    #[test]
    fn a_retry_s_elapsed_time_is_before_its_wait() {
        let retries: Vec<AttemptContext> = records(20_000, 3)
            .into_iter()
            .map(|r| r.context)
            .filter(|c| c.attempt > 1)
            .collect();
        assert!(retries.len() > 5_000);
        for c in &retries {
            assert!(c.elapsed >= c.latency.unwrap_or_default(), "{c:?}");
        }
        // The correlation of ln(elapsed) and ln(delay): the wait is drawn apart.
        let pairs: Vec<(f64, f64)> = retries
            .iter()
            .map(|c| (c.elapsed.as_secs_f64().ln(), c.delay.as_secs_f64().ln()))
            .collect();
        let n = pairs.len() as f64;
        let (ma, mb) = pairs
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for (x, y) in &pairs {
            ab += (x - ma) * (y - mb);
            aa += (x - ma) * (x - ma);
            bb += (y - mb) * (y - mb);
        }
        let corr = ab / (aa * bb).sqrt();
        assert!(corr.abs() < 0.05, "ln(elapsed) follows ln(delay): {corr}");
    }
}
