//! The policies the scoreboard compares. Adding one is a few lines in [`CATALOG`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use retrywise::budget::{AdaptiveThrottle, CubicRateLimiter, RetryQuota, TokenBucket};
use retrywise::hedge::{Hedge, HedgeDelay};
use retrywise::model::{LogisticModel, SharedModel, SuccessModel};
use retrywise::policy::{DEFAULT_HEALTH_WINDOW, Policy, PolicyBuilder};
use retrywise::recorder::Recorder;
use retrywise::retry::{
    AttemptTimeout, Backoff, Exploration, Jitter, ModelDecider, RetryDecider, RetryRules,
    RuleBasedAdaptive,
};

use crate::SimError;
use crate::transport::SimClassifier;

/// The share of the model-driven policy's "not worth it" stops that retry anyway when a
/// run explores (records training data): [`ModelDeciderBuilder::explore`].
///
/// [`ModelDeciderBuilder::explore`]: retrywise::retry::ModelDeciderBuilder::explore
pub const STOP_EXPLORATION: f64 = 0.1;

/// The policy whose every mechanism the model drives ([`PolicyBuilder::adaptive`]).
pub const ADAPTIVE_FULL: &str = "adaptive-full";

/// What every policy of a run shares.
#[derive(Clone)]
pub struct PolicyContext {
    /// The target name in records (the scenario).
    pub target: Arc<str>,
    /// Each attempt's timeout.
    pub attempt_timeout: Duration,
    /// Each logical request's deadline.
    pub deadline: Duration,
    /// Seeds the policy's randomness.
    pub seed: u64,
    /// Where attempts are recorded, if anywhere.
    pub recorder: Option<Arc<dyn Recorder>>,
    /// Exploration of retry delays (for training data).
    pub explore: Option<(f64, f64, f64)>,
    /// The success model of the model-driven policy (`adaptive`); without one it decides
    /// by its fallback rules.
    pub model: Option<Arc<dyn SuccessModel>>,
}

/// How a policy runs.
pub enum Strategy {
    /// Through a retrywise [`Policy`].
    Policy(Policy<SimClassifier>),
    /// Looks at each attempt's fate before sending it (virtual time only): a reference,
    /// not a strict bound (see the `oracle` contender).
    Oracle,
}

/// A named policy.
pub struct Contender {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Builds it.
    pub build: fn(&PolicyContext) -> Result<Strategy, SimError>,
}

impl Contender {
    /// Whether it runs only in virtual time (the oracle: it looks at the upstream's fates
    /// before sending).
    pub fn virtual_only(&self) -> bool {
        self.name == ORACLE
    }
}

/// The oracle's name in the catalog.
const ORACLE: &str = "oracle";

/// A builder with what every policy shares: the classifier, the name, the recorder, the
/// exploration, and the decider (with the attempt timeout and deadline).
fn base(
    ctx: &PolicyContext,
    name: &str,
    decider: Arc<dyn RetryDecider>,
) -> Result<PolicyBuilder<SimClassifier>, SimError> {
    // Recorded call ids from the run's seed, the policy and the target: the same in every
    // run, so a split of the records by call is too.
    let fnv = |s: &str| {
        s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        })
    };
    let mut b = Policy::builder(Arc::clone(&ctx.target))
        .decider(decider)
        .label(name)
        .call_id_seed(ctx.seed ^ fnv(name) ^ fnv(&ctx.target).rotate_left(17))
        .classifier(SimClassifier);
    if let Some(r) = &ctx.recorder {
        b = b.recorder(Arc::clone(r));
    }
    if let Some((lo, hi, p)) = ctx.explore {
        // The simulated upstream is no server to offend: the training sample explores
        // waits short of a Retry-After too (what the shipped model learned from; the
        // library's default, which never does, gave a CI model that served the held-out
        // rolling-deploy 93.3 % against 95.2 % - README, "What counts as an attempt").
        b = b.explore(
            Exploration::new(lo, hi, p)?
                .seeded(ctx.seed ^ 0xE8)
                .below_retry_after(true),
        );
    }
    Ok(b)
}

/// A rule-based retry policy with the run's timeouts.
fn retry(
    ctx: &PolicyContext,
    max_attempts: u32,
    backoff: Backoff,
    jitter: Jitter,
) -> Result<Arc<dyn RetryDecider>, SimError> {
    Ok(Arc::new(
        RetryRules::builder()
            .max_attempts(max_attempts)
            .backoff(backoff)
            .jitter(jitter)
            .attempt_timeout(AttemptTimeout::Fixed(ctx.attempt_timeout))
            .deadline(ctx.deadline)
            .seed(ctx.seed)
            .build()?,
    ))
}

fn exp() -> Result<Backoff, SimError> {
    Ok(Backoff::exponential(
        Duration::from_millis(100),
        2.0,
        Duration::from_secs(10),
    )?)
}

fn policy(b: PolicyBuilder<SimClassifier>) -> Result<Strategy, SimError> {
    Ok(Strategy::Policy(b.build()?))
}

/// Every policy, in scoreboard order.
pub static CATALOG: &[Contender] = &[
    Contender {
        name: "none",
        description: "one attempt, no retry",
        build: |c| {
            policy(base(
                c,
                "none",
                retry(c, 1, Backoff::constant(Duration::ZERO)?, Jitter::None)?,
            )?)
        },
    },
    Contender {
        name: "immediate3",
        description: "three immediate retries",
        build: |c| {
            policy(base(
                c,
                "immediate3",
                retry(c, 4, Backoff::constant(Duration::ZERO)?, Jitter::None)?,
            )?)
        },
    },
    Contender {
        name: "retry-1s",
        description: "one retry after 1 s",
        build: |c| {
            policy(base(
                c,
                "retry-1s",
                retry(
                    c,
                    2,
                    Backoff::constant(Duration::from_secs(1))?,
                    Jitter::None,
                )?,
            )?)
        },
    },
    Contender {
        name: "exp",
        description: "exponential backoff 100 ms x2 (cap 10 s), no jitter, 4 attempts",
        build: |c| policy(base(c, "exp", retry(c, 4, exp()?, Jitter::None)?)?),
    },
    Contender {
        name: "exp-full-jitter",
        description: "exponential backoff 100 ms x2 (cap 10 s), full jitter, 4 attempts",
        build: |c| {
            policy(base(
                c,
                "exp-full-jitter",
                retry(c, 4, exp()?, Jitter::Full)?,
            )?)
        },
    },
    Contender {
        name: "decorrelated",
        description: "decorrelated jitter from 100 ms (cap 10 s), 4 attempts",
        build: |c| {
            let d =
                Backoff::decorrelated_jitter(Duration::from_millis(100), Duration::from_secs(10))?;
            policy(base(c, "decorrelated", retry(c, 4, d, Jitter::None)?)?)
        },
    },
    Contender {
        name: "budget",
        description: "exp-full-jitter within a gRPC token bucket (10 tokens, ratio 0.1)",
        build: |c| {
            let b = base(c, "budget", retry(c, 4, exp()?, Jitter::Full)?)?
                .budget(TokenBucket::new(10, 0.1)?);
            policy(b)
        },
    },
    Contender {
        name: "sre-throttle",
        description: "exp-full-jitter with client-side adaptive throttling (K = 2, 2 min window)",
        build: |c| {
            let t = AdaptiveThrottle::new(2.0, Duration::from_secs(120))?.seeded(c.seed ^ 0x7);
            policy(base(c, "sre-throttle", retry(c, 4, exp()?, Jitter::Full)?)?.throttle(t))
        },
    },
    Contender {
        name: "aws-adaptive",
        description: "the AWS SDKs' adaptive retry mode: 3 attempts, full jitter on 1 s x 2^n (cap 20 s), the retry quota (500; 5 a retry, 10 after a timeout) and the CUBIC client-side rate limiter",
        build: |c| {
            let backoff =
                Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(20))?;
            let b = base(c, "aws-adaptive", retry(c, 3, backoff, Jitter::Full)?)?
                .budget(RetryQuota::default())
                .rate_limiter(CubicRateLimiter::default());
            policy(b)
        },
    },
    Contender {
        name: "rule-adaptive",
        description: "the design sketch's adaptive delay (100 ms x 2^n; timeouts x2, 429 x5, connect /2; cap 30 s)",
        build: |c| {
            let d = RuleBasedAdaptive::new().deadline(c.deadline)?;
            let d: Arc<dyn RetryDecider> = Arc::new(WithTimeout(d, c.attempt_timeout));
            policy(base(c, "rule-adaptive", d)?)
        },
    },
    Contender {
        name: "adaptive",
        description: "the model decides: the wait worth the most by predicted p(success), attempt cost and deadline (ModelDecider; rules without a model), with the AWS quota on retries after timeouts",
        build: |c| {
            let d = model_decider(c, c.model.clone())?;
            // The model reads the target's health: track it as the training data did. The
            // quota on retries after timeouts is the one `PolicyBuilder::adaptive` sets.
            policy(
                base(c, "adaptive", d)?
                    .track_health(DEFAULT_HEALTH_WINDOW)
                    .budget(RetryQuota::after_timeouts()),
            )
        },
    },
    Contender {
        name: "adaptive-full",
        description: "the model decides everything: the adaptive retries, a predictive breaker, an adaptive concurrency limit shedding the least likely calls, a predictive hedge, the AWS quota on retries after timeouts (PolicyBuilder::adaptive, one swappable model)",
        build: |c| {
            let model = Arc::new(SharedModel::new(c.model.clone().unwrap_or_else(|| {
                // Without a model every prediction is "no evidence": the decider's rules,
                // the breaker's rate trigger.
                Arc::new(|_: &retrywise::attempt::AttemptContext| f64::NAN)
            })));
            let d = model_decider(c, Some(Arc::clone(&model) as Arc<dyn SuccessModel>))?;
            let b = base(c, ADAPTIVE_FULL, Arc::clone(&d))?
                .adaptive(model)?
                .decider(d);
            policy(b)
        },
    },
    Contender {
        name: "hedge-p95",
        description: "one hedge after the p95 latency (budget 5 %), no retry",
        build: |c| {
            let h = Hedge::builder()
                .delay(HedgeDelay::Percentile {
                    quantile: 0.95,
                    min_samples: 100,
                    fallback: Duration::from_millis(100),
                })
                .budget(0.05, 0)
                .build()?;
            policy(
                base(
                    c,
                    "hedge-p95",
                    retry(c, 1, Backoff::constant(Duration::ZERO)?, Jitter::None)?,
                )?
                .hedge(h),
            )
        },
    },
    Contender {
        name: ORACLE,
        description: "sends an attempt only when it will succeed within the deadline (virtual time only): a reference, not a strict bound - it has no attempt timeout, looks again every 50 ms, greedily",
        build: |_| Ok(Strategy::Oracle),
    },
];

/// The model-driven decider of `adaptive` and `adaptive-full`, with the run's deadline and
/// attempt timeout; when the run records for training, some stops retry anyway, to keep
/// learning.
fn model_decider(
    c: &PolicyContext,
    model: Option<Arc<dyn SuccessModel>>,
) -> Result<Arc<dyn RetryDecider>, SimError> {
    let d = ModelDecider::builder()
        .maybe_model(model)
        .deadline(c.deadline)
        .seed(c.seed ^ 0xADA)
        .explore(if c.explore.is_some() {
            STOP_EXPLORATION
        } else {
            0.0
        })
        .build()?;
    Ok(Arc::new(WithTimeout(d, c.attempt_timeout)))
}

/// A decider with the run's attempt timeout (for deciders that set none themselves).
struct WithTimeout<D>(D, Duration);

impl<D: RetryDecider> RetryDecider for WithTimeout<D> {
    fn decide(&self, ctx: &retrywise::attempt::AttemptContext) -> retrywise::retry::Decision {
        self.0.decide(ctx)
    }

    fn explain(&self, ctx: &retrywise::attempt::AttemptContext) -> retrywise::retry::Explained {
        self.0.explain(ctx)
    }

    fn decide_explored(
        &self,
        ctx: &retrywise::attempt::AttemptContext,
    ) -> (retrywise::retry::Decision, Option<f64>) {
        self.0.decide_explored(ctx)
    }

    fn replanned(
        &self,
        ctx: &retrywise::attempt::AttemptContext,
        decided_at: tokio::time::Instant,
        planned: Duration,
        sent: Option<Duration>,
    ) {
        self.0.replanned(ctx, decided_at, planned, sent);
    }

    fn attempt_timeout(&self, ctx: &retrywise::attempt::AttemptContext) -> Option<Duration> {
        Some(
            self.0
                .attempt_timeout(ctx)
                .map_or(self.1, |t| t.min(self.1)),
        )
    }
}

/// Loads the success model at `path`: a `model.json` file, a version directory holding one,
/// or a model directory (`models/NAME`), whose highest numbered version is taken.
///
/// # Errors
/// [`SimError::Io`] when it cannot be read, [`SimError::Model`] when the artifact is
/// invalid or of another feature set, [`SimError::NoModel`] when there is none.
pub fn load_model(path: &Path) -> Result<Arc<LogisticModel>, SimError> {
    let file = model_file(path)?;
    // A regular file of bounded size, as the service and the trainer read one (a pipe
    // would block, a link to an endless device read without end).
    let text = retrywise_collect::read_bounded(
        &file,
        retrywise::model::MAX_ARTIFACT_BYTES,
        "a model artifact",
    )
    .map_err(|source| SimError::Io {
        op: format!("read {}", file.display()),
        source,
    })?;
    LogisticModel::from_json(&text)
        .map(Arc::new)
        .map_err(|source| SimError::Model { path: file, source })
}

/// The `model.json` a model path stands for: the file itself, a version folder's, or a
/// model folder's latest version's (as [`load_model`] reads it).
///
/// # Errors
/// An unreadable folder, or one with no version holding a `model.json`.
pub fn model_file(path: &Path) -> Result<PathBuf, SimError> {
    Ok(if path.is_file() {
        path.to_path_buf()
    } else if path.join("model.json").is_file() {
        path.join("model.json")
    } else {
        let versions = std::fs::read_dir(path).map_err(|source| SimError::Io {
            op: format!("read model directory {}", path.display()),
            source,
        })?;
        let latest = versions
            .filter_map(Result::ok)
            .filter_map(|e| {
                // A version is its number as written (`7`, not `07` or `+7`): the folder
                // joined below is the one read here.
                let name = e.file_name();
                let v: u64 = name.to_str()?.parse().ok()?;
                let canonical = name.to_str() == Some(v.to_string().as_str());
                (canonical && e.path().join("model.json").is_file()).then_some(v)
            })
            .max()
            .ok_or_else(|| SimError::NoModel {
                path: path.to_path_buf(),
            })?;
        path.join(latest.to_string()).join("model.json")
    })
}

/// The policy named `name`.
///
/// # Errors
/// [`SimError::Unknown`] listing the known names.
pub fn find(name: &str) -> Result<&'static Contender, SimError> {
    CATALOG
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| SimError::Unknown {
            what: "policy",
            name: name.to_owned(),
            known: CATALOG
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}
