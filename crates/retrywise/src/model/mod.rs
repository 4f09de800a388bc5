//! Success models: the probability that an attempt succeeds, given its context.
//!
//! A model is what lets retrywise learn from its own traffic. The trainer fits one from
//! recorded attempts; deciders, the breaker's open duration and the hedge consult it
//! through this trait. Without a model every mechanism falls back to its rules, so a
//! model is always optional.

use std::time::Duration;

use crate::attempt::AttemptContext;

mod artifact;
mod shared;

pub use artifact::{
    ARTIFACT_FORMAT, ARTIFACT_SCHEMA, FeatureSpec, LOGISTIC, LabelSpec, LogisticModel,
    MAX_ARTIFACT_BYTES, ModelArtifact, ModelError, POSITIVE_LABEL, Regularization, Scaler,
    is_model_name, sigmoid,
};
pub use shared::SharedModel;

/// Predicts the probability that an attempt made in a given context succeeds.
///
/// `ctx.delay` is the wait before the attempt, so a decider can ask "what if I wait
/// 200 ms? 2 s?" by evaluating the same context with different delays.
///
/// Implementations must be cheap (they run on the retry path) and must return a number in
/// `[0, 1]`. Callers clamp anything else, and none takes NaN for an answer: the model
/// decider falls back to its rules, the breaker takes it for no prediction, and the
/// rule-based adaptive decider and the shedding queue read it as 0.5
/// ([`sanitize_probability`]).
///
/// ```
/// use retrywise::attempt::{AttemptContext, ErrorKind};
/// use retrywise::model::SuccessModel;
///
/// /// Rate limits clear after a second; nothing else does.
/// struct Patience;
///
/// impl SuccessModel for Patience {
///     fn p_success(&self, ctx: &AttemptContext) -> f64 {
///         match ctx.error {
///             Some(ErrorKind::Http429) if ctx.delay.as_secs_f64() >= 1.0 => 0.9,
///             Some(_) => 0.05,
///             None => 0.99,
///         }
///     }
/// }
///
/// let mut ctx = AttemptContext::first("api");
/// ctx.error = Some(ErrorKind::Http429);
/// ctx.delay = std::time::Duration::from_secs(2);
/// assert_eq!(Patience.p_success(&ctx), 0.9);
/// ```
pub trait SuccessModel: Send + Sync {
    /// The probability in `[0, 1]` that an attempt made in `ctx` succeeds.
    fn p_success(&self, ctx: &AttemptContext) -> f64;

    /// How many training rows were like `ctx` (in its region of the context space,
    /// [`crate::features::region`]), when the model knows: a decider does not trust a
    /// model about what it has barely seen.
    /// Defaults to unknown.
    fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
        let _ = ctx;
        None
    }

    /// The probability of success of the attempt in `ctx` after each wait of `delays`
    /// (`out[i]` for `delays[i]`; `out` is at least as long as `delays`): what a decider
    /// weighing many waits asks. The default evaluates [`p_success`](Self::p_success) once
    /// per wait; models that can share the work across waits override it.
    fn p_success_by_delay(&self, ctx: &AttemptContext, delays: &[Duration], out: &mut [f64]) {
        let mut c = ctx.clone();
        for (d, o) in delays.iter().zip(out.iter_mut()) {
            c.delay = *d;
            *o = self.p_success(&c);
        }
    }

    /// [`p_success_by_delay`](Self::p_success_by_delay), given each wait's `ln(1 + ms)`
    /// ([`crate::features::log_ms`]; `log_delays[i]` for `delays[i]`): a decider weighing
    /// the same grid of waits at every failure computes them once. The default ignores
    /// them.
    fn p_success_by_logged_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[Duration],
        log_delays: &[f64],
        out: &mut [f64],
    ) {
        let _ = log_delays;
        self.p_success_by_delay(ctx, delays, out);
    }

    /// The model answering questions about `ctx` now, for a model that can be swapped
    /// ([`shared::SharedModel`], a service's model that follows reloads): a
    /// decision that asks several questions asks them all of it, so that one model's
    /// support check never lets another model's predictions through. `None` (the
    /// default) for a model that is always itself.
    fn pinned(&self, ctx: &AttemptContext) -> Option<std::sync::Arc<dyn SuccessModel>> {
        let _ = ctx;
        None
    }
}

impl<F> SuccessModel for F
where
    F: Fn(&AttemptContext) -> f64 + Send + Sync,
{
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        self(ctx)
    }
}

impl<M: SuccessModel + ?Sized> SuccessModel for std::sync::Arc<M> {
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        (**self).p_success(ctx)
    }

    fn p_success_by_delay(&self, ctx: &AttemptContext, delays: &[Duration], out: &mut [f64]) {
        (**self).p_success_by_delay(ctx, delays, out);
    }

    fn p_success_by_logged_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[Duration],
        log_delays: &[f64],
        out: &mut [f64],
    ) {
        (**self).p_success_by_logged_delay(ctx, delays, log_delays, out);
    }

    fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
        (**self).trained_on(ctx)
    }

    fn pinned(&self, ctx: &AttemptContext) -> Option<std::sync::Arc<dyn SuccessModel>> {
        (**self).pinned(ctx)
    }
}

/// A model's answer made safe to use: clamped to `[0, 1]`, NaN read as 0.5.
pub fn sanitize_probability(p: f64) -> f64 {
    if p.is_nan() { 0.5 } else { p.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_is_object_safe_and_closures_implement_it() {
        let m: Box<dyn SuccessModel> = Box::new(|c: &AttemptContext| f64::from(c.attempt) / 10.0);
        assert_eq!(m.p_success(&AttemptContext::first("x")), 0.1);
    }

    #[test]
    fn sanitizing() {
        assert_eq!(sanitize_probability(f64::NAN), 0.5);
        assert_eq!(sanitize_probability(-1.0), 0.0);
        assert_eq!(sanitize_probability(7.0), 1.0);
        assert_eq!(sanitize_probability(0.25), 0.25);
    }
}
