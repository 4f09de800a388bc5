//! A model that can be replaced while deciders, breakers and bulkheads use it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::attempt::AttemptContext;

use super::SuccessModel;

/// A [`SuccessModel`] handle whose model can be swapped at run time: every question goes
/// to the model current when it is asked, so the components built with one handle (a
/// `ModelDecider`, a breaker's `Prediction`, a bulkhead's `shed_by`) all move to a new
/// model at once — an embedded service that reloads its model file swaps it here. A
/// question is answered by one model whole: a swap never mixes two in one answer; and a
/// decision that asks several questions (a `ModelDecider`'s, a breaker's recovery) asks
/// them all of the model current when it began ([`SuccessModel::pinned`]).
///
/// ```
/// use std::sync::Arc;
/// use retrywise::attempt::AttemptContext;
/// use retrywise::model::{SharedModel, SuccessModel};
///
/// let shared = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.2)));
/// let ctx = AttemptContext::first("api");
/// assert_eq!(shared.p_success(&ctx), 0.2);
/// shared.swap(Arc::new(|_: &AttemptContext| 0.9));
/// assert_eq!(shared.p_success(&ctx), 0.9);
/// ```
pub struct SharedModel {
    current: RwLock<Arc<dyn SuccessModel>>,
}

impl std::fmt::Debug for SharedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedModel").finish_non_exhaustive()
    }
}

impl SharedModel {
    /// A handle on `model`.
    pub fn new(model: Arc<dyn SuccessModel>) -> Self {
        Self {
            current: RwLock::new(model),
        }
    }

    /// The model answering now.
    pub fn current(&self) -> Arc<dyn SuccessModel> {
        // A reader cannot leave the slot half-written: poisoning carries no broken state.
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `model` in place of the current one, which it returns; questions already being
    /// answered finish with the old one.
    pub fn swap(&self, model: Arc<dyn SuccessModel>) -> Arc<dyn SuccessModel> {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *slot, model)
    }
}

impl SuccessModel for SharedModel {
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        self.current().p_success(ctx)
    }

    fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
        self.current().trained_on(ctx)
    }

    fn pinned(&self, ctx: &AttemptContext) -> Option<Arc<dyn SuccessModel>> {
        // The model now in place, pinned in turn if it can itself be swapped (a shared
        // handle inside a shared handle, a service's serving set).
        let current = self.current();
        Some(current.pinned(ctx).unwrap_or(current))
    }

    fn p_success_by_delay(&self, ctx: &AttemptContext, delays: &[Duration], out: &mut [f64]) {
        self.current().p_success_by_delay(ctx, delays, out);
    }

    fn p_success_by_logged_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[Duration],
        log_delays: &[f64],
        out: &mut [f64],
    ) {
        self.current()
            .p_success_by_logged_delay(ctx, delays, log_delays, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Decision, ModelDecider, RetryDecider, StopReason, Weighed};

    /// A decider asking `shared` (no calendar, seed 1), and the retry after a 503 to ask.
    fn deciding_with(shared: &Arc<SharedModel>) -> (ModelDecider, AttemptContext) {
        let decider = ModelDecider::builder()
            .model(shared.clone())
            .seed(1)
            .without_calendar()
            .build()
            .unwrap();
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = 2;
        ctx.error = Some(crate::attempt::ErrorKind::Http503);
        (decider, ctx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_swap_under_load_moves_every_decider_at_once_and_never_mixes_models() {
        // Before: retrying is hopeless. After: a retry after any wait succeeds.
        let shared = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.01)));
        let (decider, ctx) = deciding_with(&shared);
        let stop = Decision::Stop(StopReason::LowSuccessProbability);
        // Decisions made, by both workers: the swap comes once each has decided.
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (d, c, made) = (decider.clone(), ctx.clone(), Arc::clone(&made));
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    // Until 200 decisions with the new model (at most a million in all).
                    for _ in 0..1_000_000 {
                        let w = d.weigh(&c);
                        // Every wait of one decision was weighed by the same model.
                        let ps: Vec<f64> = w.alternatives.iter().map(|a| a.p_success).collect();
                        assert!(ps.iter().all(|p| *p == ps[0]), "{ps:?}");
                        seen.push(ps[0]);
                        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seen.iter().rev().take_while(|p| **p == 0.99).count() >= 200 {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    seen
                })
            })
            .collect();
        while made.load(std::sync::atomic::Ordering::Relaxed) < 100 {
            tokio::task::yield_now().await;
        }
        shared.swap(Arc::new(|_: &AttemptContext| 0.99));
        for w in workers {
            let seen = w.await.unwrap();
            // Each worker saw the old model, then, from one decision on, only the new one.
            let first_new = seen.iter().position(|p| *p == 0.99);
            let first_new = first_new.expect("every worker saw the new model");
            assert!(seen[..first_new].iter().all(|p| *p == 0.01));
            assert!(seen[first_new..].iter().all(|p| *p == 0.99));
        }
        assert_ne!(decider.decide(&ctx), stop);
    }

    /// A model answering 0.01 (with plenty of rows like every context) that holds the
    /// first question asked of it - in `p_success`, or in `trained_on` - until the test
    /// has swapped it out: the decision made while `swap` swaps, and the next one. (Each
    /// hand-over waits at most 10 s: a decider that stopped asking the model fails the
    /// test.)
    fn swapped_mid_decision(
        hold_in_support: bool,
        swap: impl FnOnce(&SharedModel),
    ) -> (Weighed, Weighed) {
        use std::sync::Mutex;
        use std::sync::mpsc::{Receiver, Sender, channel};
        use std::time::Duration as D;
        struct Held {
            in_support: bool,
            inside: Mutex<Option<Sender<()>>>,
            swapped: Mutex<Receiver<()>>,
        }
        impl Held {
            fn hold(&self) {
                if let Some(tell) = self.inside.lock().unwrap().take() {
                    tell.send(()).unwrap();
                    self.swapped
                        .lock()
                        .unwrap()
                        .recv_timeout(D::from_secs(10))
                        .expect("swapped within 10 s");
                }
            }
        }
        impl SuccessModel for Held {
            fn p_success(&self, _: &AttemptContext) -> f64 {
                if !self.in_support {
                    self.hold();
                }
                0.01
            }
            fn trained_on(&self, _: &AttemptContext) -> Option<u64> {
                if self.in_support {
                    self.hold();
                }
                Some(1_000_000)
            }
        }
        let (tell_inside, inside) = channel();
        let (tell_swapped, swapped) = channel();
        let held = Arc::new(Held {
            in_support: hold_in_support,
            inside: Mutex::new(Some(tell_inside)),
            swapped: Mutex::new(swapped),
        });
        let shared = Arc::new(SharedModel::new(held));
        let (decider, ctx) = deciding_with(&shared);
        let during = std::thread::scope(|s| {
            let d = s.spawn(|| decider.weigh(&ctx));
            inside
                .recv_timeout(D::from_secs(10))
                .expect("the decision asked the model within 10 s");
            swap(&shared);
            tell_swapped.send(()).unwrap();
            d.join().unwrap()
        });
        (during, decider.weigh(&ctx))
    }

    /// A shared handle inside a shared handle: what the outer one pins is the model in
    /// place in the inner one, not the inner handle, which a swap there would change.
    #[test]
    fn a_handle_inside_a_handle_pins_the_model_inside() {
        let inner = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.25)));
        let outer = SharedModel::new(Arc::clone(&inner) as Arc<dyn SuccessModel>);
        let ctx = AttemptContext::first("api");
        let pinned = outer.pinned(&ctx).expect("a shared handle pins");
        inner.swap(Arc::new(|_: &AttemptContext| 0.75));
        assert_eq!(pinned.p_success(&ctx), 0.25);
        assert_eq!(outer.p_success(&ctx), 0.75);
    }

    /// The swap lands while a decision is inside the model (held there until it has):
    /// that decision is the old model's throughout, the next one the new model's.
    #[test]
    fn a_swap_in_the_middle_of_a_decision_leaves_it_whole() {
        let (during, after) = swapped_mid_decision(false, |shared| {
            shared.swap(Arc::new(|_: &AttemptContext| 0.99));
        });
        let ps: Vec<f64> = during.alternatives.iter().map(|a| a.p_success).collect();
        assert!(ps.len() > 1 && ps.iter().all(|p| *p == 0.01), "{ps:?}");
        assert_eq!(
            during.explained.decision,
            Decision::Stop(StopReason::LowSuccessProbability)
        );
        assert!(after.alternatives.iter().all(|a| a.p_success == 0.99));
        assert!(matches!(after.explained.decision, Decision::Retry(_)));
    }

    /// The model whose support check a decision passed is the one that answers it: a swap
    /// between the check and the predictions (to a model that never saw such a context)
    /// does not let the new model's predictions through (it did: the decision was the new
    /// model's retry, on the old model's support).
    #[test]
    fn a_swap_after_the_support_check_leaves_the_decision_to_the_model_checked() {
        /// Sure of success, about contexts it never saw.
        struct Unseen;
        impl SuccessModel for Unseen {
            fn p_success(&self, _: &AttemptContext) -> f64 {
                0.99
            }
            fn trained_on(&self, _: &AttemptContext) -> Option<u64> {
                Some(0)
            }
        }
        let (during, _) = swapped_mid_decision(true, |shared| {
            shared.swap(Arc::new(Unseen));
        });
        let ps: Vec<f64> = during.alternatives.iter().map(|a| a.p_success).collect();
        assert!(ps.len() > 1 && ps.iter().all(|p| *p == 0.01), "{ps:?}");
        assert_eq!(
            during.explained.decision,
            Decision::Stop(StopReason::LowSuccessProbability)
        );
    }
}
