//! Retries: backoff curves, jitter, attempt limits, deadlines, per-attempt timeouts and
//! Retry-After — and the [`RetryDecider`] trait that lets a learned model replace the
//! rules without touching call sites.
//!
//! # Why the decision is a trait
//!
//! A fixed policy ("3 attempts, exponential backoff") is right for no failure in
//! particular: it waits too little for a rate limit, too long for a reset connection and
//! pointlessly for an outage. retrywise records every attempt so that a model can learn
//! what actually works for each target and failure. [`RetryDecider::decide`] sees the full
//! [`AttemptContext`](crate::attempt::AttemptContext) and returns
//! [`Decision::Retry`]`(wait)` or [`Decision::Stop`]`(reason)`; rule-based
//! ([`RetryRules`], [`RuleBasedAdaptive`]) and model-driven deciders are interchangeable.
//!
//! Budgets ([`crate::budget`]) sit beside the decider: a decider says whether a retry is
//! worth it for *this* call, a budget whether the fleet can afford it.

mod backoff;
pub mod calendar;
mod decider;
mod explore;
mod model_decider;
mod rule_adaptive;
mod rules;

pub use backoff::{Backoff, Jitter};
pub use calendar::RetryCalendar;
pub use decider::{Decision, Explained, NoRetry, RetryDecider, StopReason};
pub use explore::Exploration;
pub use model_decider::{
    Alternative, DEFAULT_MIN_SUPPORT, Fallback, MAX_COST_FAILURE_RATE, MAX_GRID, ModelDecider,
    ModelDeciderBuilder, Weighed, supports,
};
pub use rule_adaptive::RuleBasedAdaptive;
pub use rules::{AttemptTimeout, RetryRules, RetryRulesBuilder};
