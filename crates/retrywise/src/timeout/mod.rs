//! Timeouts that cost nothing when the call is quick.
//!
//! [`Timeout`] polls the inner future first and arms its timer only if the future is not
//! ready on the first poll, so a call that completes at once never touches the timer
//! wheel. The time limit therefore counts from the first time the call has to wait (the
//! first poll's own CPU time is not counted), unless it is given from a start already read
//! ([`Timeout::starting`], what `Policy` uses) or as an absolute deadline
//! ([`Timeout::until`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The call did not finish within its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {after:?}")]
pub struct Elapsed {
    /// The limit that was exceeded.
    pub after: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    None,
    After(Duration),
    At(Instant, Duration),
}

pin_project! {
    /// A future that fails with [`Elapsed`] if `future` takes longer than its limit.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: Option<Sleep>,
        limit: Limit,
    }
}

impl<F: Future> Timeout<F> {
    /// Limits `future` to `after`; `None` means no limit (the wrapper then only forwards).
    pub fn new(future: F, after: Option<Duration>) -> Self {
        Self {
            future,
            sleep: None,
            limit: after.map_or(Limit::None, Limit::After),
        }
    }

    /// Limits `future` to `after` counted from `started` (an instant already read: the
    /// request's start, so that the first poll's own work counts against the limit and the
    /// limit reads no clock); `None` means no limit.
    pub fn starting(future: F, started: Instant, after: Option<Duration>) -> Self {
        let limit = match after {
            None => Limit::None,
            // (Beyond what an `Instant` holds: counted from the first wait, as `new`'s.)
            Some(after) => started
                .checked_add(after)
                .map_or(Limit::After(after), |at| Limit::At(at, after)),
        };
        Self {
            future,
            sleep: None,
            limit,
        }
    }

    /// Limits `future` to finish by `deadline`.
    pub fn until(future: F, deadline: Instant) -> Self {
        let after = deadline.saturating_duration_since(Instant::now());
        Self {
            future,
            sleep: None,
            limit: Limit::At(deadline, after),
        }
    }
}

/// Limits `future` to `after`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use retrywise::timeout::timeout;
///
/// let quick = timeout(Duration::from_millis(10), async { 42 }).await;
/// assert_eq!(quick, Ok(42));
/// let slow = timeout(Duration::from_millis(10), tokio::time::sleep(Duration::from_secs(1))).await;
/// assert!(slow.is_err());
/// # }
/// ```
pub fn timeout<F: Future>(after: Duration, future: F) -> Timeout<F> {
    Timeout::new(future, Some(after))
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let (deadline, after) = match *this.limit {
            Limit::None => return Poll::Pending,
            Limit::After(d) => (None, d),
            Limit::At(at, d) => (Some(at), d),
        };
        if this.sleep.is_none() {
            // A limit beyond what an `Instant` holds never fires (tokio's own far future).
            let at = deadline.unwrap_or_else(|| {
                let now = Instant::now();
                now.checked_add(after)
                    .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
            });
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| Err(Elapsed { after })),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime without a timer panics when a timer is armed on it: a quick future's
    /// timeout must not arm one (nor `until`'s), and a slow one's does.
    #[test]
    fn a_quick_call_never_touches_the_timer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(timeout(Duration::from_secs(1), async { 7 }).await, Ok(7));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            assert_eq!(Timeout::until(async { 8 }, deadline).await, Ok(8));
        });
        let armed = std::panic::catch_unwind(|| {
            rt.block_on(timeout(Duration::from_secs(1), tokio::task::yield_now()))
        });
        assert!(armed.is_err(), "a pending future arms the timer");
    }

    /// A limit counted from a start already read: time spent before the first wait (here
    /// 600 ms of a 1 s limit) counts against it.
    #[tokio::test(start_paused = true)]
    async fn a_limit_from_a_start_counts_the_time_before_the_first_wait() {
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(600)).await;
        let slow = tokio::time::sleep(Duration::from_secs(5));
        let r = Timeout::starting(slow, t0, Some(Duration::from_secs(1))).await;
        assert_eq!(
            r,
            Err(Elapsed {
                after: Duration::from_secs(1)
            })
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert_eq!(Timeout::starting(async { 3 }, t0, None).await, Ok(3));
        let far = Timeout::starting(async { 4 }, t0, Some(Duration::MAX)).await;
        assert_eq!(far, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_slow_futures() {
        let t0 = Instant::now();
        let r = timeout(
            Duration::from_secs(2),
            tokio::time::sleep(Duration::from_secs(5)),
        )
        .await;
        assert_eq!(
            r,
            Err(Elapsed {
                after: Duration::from_secs(2)
            })
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_quick_futures() {
        let r = timeout(Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        })
        .await;
        assert_eq!(r, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_beyond_what_an_instant_holds_never_fires() {
        // `Instant::now() + Duration::MAX` overflows: such a limit is no limit.
        let r = timeout(Duration::MAX, async {
            tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
            5
        })
        .await;
        assert_eq!(r, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_means_no_timeout() {
        let r = Timeout::new(tokio::time::sleep(Duration::from_secs(3600)), None).await;
        assert_eq!(r, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn absolute_deadlines() {
        let t0 = Instant::now();
        let r = Timeout::until(
            tokio::time::sleep(Duration::from_secs(5)),
            t0 + Duration::from_secs(3),
        )
        .await;
        assert!(r.is_err());
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
    }
}
