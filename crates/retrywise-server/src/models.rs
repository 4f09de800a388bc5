//! The serving models: the highest valid version of each name under the models folder,
//! swapped in availability-first.
//!
//! [`Models::reload`] scans `models/<name>/<version>/model.json`; for each name whose
//! highest valid version on disk differs from the one serving (newer, or older after a
//! rollback, or rewritten under the same number), it loads and validates it off
//! the request path, then swaps the whole set atomically ([`ArcSwap`]). Requests take a
//! snapshot ([`Models::snapshot`]) once and keep it, so no request fails, waits or mixes two
//! versions during a swap. A version that fails to load is refused — logged, counted, and
//! remembered (by its file's size and modification time) so it is not retried every
//! poll — and the version serving before keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use retrywise::attempt::AttemptContext;
use retrywise::model::{LogisticModel, MAX_ARTIFACT_BYTES, ModelArtifact, SuccessModel};

/// One loaded model version.
#[derive(Debug)]
pub struct LoadedModel {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// The artifact (for metadata).
    pub artifact: ModelArtifact,
    /// The model, ready to evaluate.
    pub model: LogisticModel,
    /// What told the file it was loaded from apart when it was read ([`Stamp`]).
    pub stamp: Stamp,
}

/// What tells one content of a model file from another without reading it: its size, its
/// modification time, and — where the platform has them — its inode and status-change
/// time. A copy that keeps the modification time (`cp -p`, `rsync -t`, `tar x`) still
/// changes the status-change time, which no program sets, or the inode, when it renames a
/// new file into place.
pub type Stamp = (u64, Option<SystemTime>, Option<(u64, i64, i64)>);

/// A refused version: the stamp of the file refused, and why.
type Refused = HashMap<(String, u32), (Stamp, String)>;

/// The models serving now, by name.
pub type ModelSet = BTreeMap<String, Arc<LoadedModel>>;

/// What one reload did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadReport {
    /// `(name, version)` swapped in.
    pub loaded: Vec<(String, u32)>,
    /// `(name, version, why)` refused.
    pub failed: Vec<(String, u32, String)>,
    /// `(name, version, why)` refused by an earlier reload and not tried again (its file
    /// has not changed since), where it would otherwise serve: above the version serving.
    pub still_refused: Vec<(String, u32, String)>,
    /// What an operator should know that is not a refusal: the models folder gone while
    /// models serve from memory, a serving version removed from disk.
    pub warnings: Vec<String>,
    /// The models folder was not there: the scan read nothing (no successful reload, for
    /// the staleness gauge), whether or not models serve from memory.
    pub folder_missing: bool,
}

/// The serving models and how to refresh them.
#[derive(Debug)]
pub struct Models {
    dir: PathBuf,
    current: ArcSwap<ModelSet>,
    /// Versions refused, with the size and modification time of the file refused.
    refused: Mutex<Refused>,
    /// One reload at a time (the poller and `/admin/reload`).
    reloading: tokio::sync::Mutex<()>,
    /// The last reload's warnings: each is logged when it first appears, not at every poll.
    warned: Mutex<std::collections::HashSet<String>>,
}

fn read_dir(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(name) = e.file_name().to_str()
            && !name.starts_with('.')
            && e.path().is_dir()
        {
            out.push((name.to_owned(), e.path()));
        }
    }
    Ok(out)
}

/// Why a version was not loaded.
#[derive(Debug)]
struct Refusal {
    why: String,
    /// Whether it holds until the file changes (what it holds, its size, its type), so
    /// that the version is not read again before: not a read the system failed (too many
    /// open files, an I/O error), which the next scan tries again.
    lasting: bool,
}

impl Refusal {
    fn lasting(why: String) -> Self {
        Self { why, lasting: true }
    }
}

/// Whether a failed read of a `model.json` holds until the file changes (its stamp): it
/// is not there, not a regular file, too large, not UTF-8, or not readable by the
/// service (changing its mode changes its stamp) - rather than a read the system failed
/// this once.
fn read_error_lasts(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::NotFound | K::InvalidInput | K::InvalidData | K::PermissionDenied
    )
}

/// A `model.json`'s text: a regular file (a pipe would block the reload for as long as
/// nothing writes to it) of at most [`MAX_ARTIFACT_BYTES`].
fn read_artifact(file: &Path) -> Result<String, Refusal> {
    retrywise_collect::read_bounded(file, MAX_ARTIFACT_BYTES, "a model artifact").map_err(|e| {
        Refusal {
            why: format!("cannot read {}: {e}", file.display()),
            lasting: read_error_lasts(e.kind()),
        }
    })
}

fn load_version(
    path: &Path,
    name: &str,
    version: u32,
    stamp: Stamp,
) -> Result<LoadedModel, Refusal> {
    let file = path.join("model.json");
    let text = read_artifact(&file)?;
    let artifact = ModelArtifact::from_json(&text)
        .map_err(|e| Refusal::lasting(format!("{}: {e}", file.display())))?;
    if let Some(problem) = artifact.misplaced(name, version) {
        return Err(Refusal::lasting(format!("{}: {problem}", file.display())));
    }
    let model = LogisticModel::from_artifact(&artifact)
        .map_err(|e| Refusal::lasting(format!("{}: {e}", file.display())))?;
    Ok(LoadedModel {
        name: name.to_owned(),
        version,
        artifact,
        model,
        stamp,
    })
}

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path.join("model.json")).map_or((0, None, None), |m| {
        #[cfg(unix)]
        let changed = {
            use std::os::unix::fs::MetadataExt;
            Some((m.ino(), m.ctime(), m.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let changed = None;
        (m.len(), m.modified().ok(), changed)
    })
}

impl Models {
    /// No models yet, reading from `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            current: ArcSwap::from_pointee(ModelSet::new()),
            refused: Mutex::new(HashMap::new()),
            warned: Mutex::default(),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The models folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The models serving now; keep the snapshot for the whole request.
    pub fn snapshot(&self) -> Arc<ModelSet> {
        self.current.load_full()
    }

    /// Scans the folder and swaps in every name's highest version that is new and valid.
    ///
    /// For each name, versions are tried from the highest down to the one serving (or to
    /// the lowest, at start-up); the first that loads wins. A refused version is reported
    /// in `failed` once, then in `still_refused` (it is not tried again until its file
    /// changes).
    ///
    /// # Errors
    /// The folder cannot be read (the models serving keep serving).
    pub async fn reload(&self) -> std::io::Result<ReloadReport> {
        let _one = self.reloading.lock().await;
        let dir = self.dir.clone();
        let current = self.snapshot();
        let refused = self.refused.lock().map(|r| r.clone()).unwrap_or_default();
        // Reading and validating files is blocking work: off the request threads.
        let (next, mut report, newly_refused) =
            tokio::task::spawn_blocking(move || scan(&dir, &current, &refused))
                .await
                .map_err(std::io::Error::other)??;
        if let Ok(mut r) = self.refused.lock() {
            r.extend(newly_refused);
        }
        if report.loaded.is_empty()
            && report.failed.is_empty()
            && report.still_refused.is_empty()
            && self.snapshot().is_empty()
        {
            // Nothing serves and nothing could: say where that leaves the service.
            report.warnings.push(format!(
                "no model version found under {}",
                self.dir.display()
            ));
        }
        if let Ok(mut last) = self.warned.lock() {
            for w in report.warnings.iter().filter(|w| !last.contains(*w)) {
                tracing::warn!("{w}");
            }
            *last = report.warnings.iter().cloned().collect();
        }
        if !report.loaded.is_empty() {
            self.current.store(Arc::new(next));
        }
        Ok(report)
    }
}

type Scan = (
    ModelSet,
    ReloadReport,
    Vec<((String, u32), (Stamp, String))>,
);

fn scan(dir: &Path, current: &ModelSet, refused: &Refused) -> std::io::Result<Scan> {
    let mut next = current.clone();
    let mut report = ReloadReport::default();
    let mut newly = Vec::new();
    let names = match read_dir(dir) {
        Ok(n) => n,
        // No models folder yet: nothing to serve, not an error (one may be created).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // (A scan of no folder read nothing: not a successful reload.)
            report.folder_missing = true;
            if !current.is_empty() {
                let why = format!(
                    "the models folder {} does not exist: the versions loaded keep serving from memory",
                    dir.display()
                );
                report.warnings.push(why);
            }
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    // (When the whole folder is gone, that one warning says it.)
    for gone in current
        .keys()
        .filter(|n| !report.folder_missing && !names.iter().any(|(name, _)| name == *n))
    {
        let why = format!(
            "the folder of model `{gone}` was removed: its version loaded keeps serving from memory"
        );
        report.warnings.push(why);
    }
    for (name, path) in names {
        let mut versions: Vec<(u32, PathBuf)> = match read_dir(&path) {
            Ok(v) => v
                .into_iter()
                .filter_map(|(v, p)| match v.parse::<u32>() {
                    // Version 0 is the answers' word for "no model: the rules decided".
                    // Written as numbers are (`3`, not `03` or `+3`): two spellings of one
                    // number would take turns serving.
                    Ok(n) if n > 0 && n.to_string() == v => Some((n, p)),
                    _ => {
                        // A model in a folder that is not a version number (`v3`,
                        // `2025-12-06`, `0`): never served, and said so.
                        if p.join("model.json").is_file() {
                            report.warnings.push(format!(
                                "{name}/{v} holds a model.json but `{v}` is not a version \
                                 number (a whole number from 1 to {}; 0 stands for no model \
                                 in the answers): it is not served",
                                u32::MAX
                            ));
                        }
                        None
                    }
                })
                .collect(),
            Err(e) => {
                tracing::warn!(model = %name, error = %e, "cannot read model folder");
                continue;
            }
        };
        versions.sort_unstable_by_key(|v| std::cmp::Reverse(v.0));
        let cur = current.get(&name);
        let serving = cur.map(|m| m.version);
        if let Some(c) = cur
            && !versions.iter().any(|(v, _)| *v == c.version)
        {
            report.warnings.push(format!(
                "{name}/{} was removed from disk; the highest valid version left serves (it keeps serving from memory if none is)",
                c.version
            ));
        }
        // The highest valid version on disk serves: a newer one, or an older one when the
        // serving version was removed (a rollback) or rewritten under the same number.
        for (version, vpath) in versions {
            let st = stamp(&vpath);
            if cur.is_some_and(|c| c.version == version && c.stamp == st) {
                break;
            }
            if let Some((at, why)) = refused.get(&(name.clone(), version))
                && *at == st
            {
                report
                    .still_refused
                    .push((name.clone(), version, why.clone()));
                // The serving version, refused when rewritten: it keeps serving from memory
                // at every later scan too, not only the first.
                if serving == Some(version) {
                    break;
                }
                continue;
            }
            match load_version(&vpath, &name, version, st) {
                Ok(m) => {
                    tracing::info!(model = %name, version, previous = ?serving, "model loaded");
                    report.loaded.push((name.clone(), version));
                    next.insert(name.clone(), Arc::new(m));
                    break;
                }
                Err(Refusal { why, lasting }) => {
                    match serving {
                        Some(serving) => {
                            tracing::error!(model = %name, refused = version, serving, error = %why, "model version refused; the version serving keeps serving")
                        }
                        None => {
                            tracing::error!(model = %name, refused = version, error = %why, "model version refused; an earlier version is tried, and none serves until one loads")
                        }
                    }
                    // Remembered until the file changes - unless the system failed the
                    // read (too many open files, say): the next scan reads it again.
                    if lasting {
                        newly.push(((name.clone(), version), (st, why.clone())));
                    }
                    report.failed.push((name.clone(), version, why));
                    // The serving version itself, rewritten and now refused (a copy caught
                    // half-written, say): it keeps serving from memory - no older version
                    // takes its place.
                    if serving == Some(version) {
                        break;
                    }
                }
            }
        }
    }
    Ok((next, report, newly))
}

/// The model serving under one name, as a [`SuccessModel`] that follows reloads: every
/// question goes to the version serving when it is asked (the fleet's shared breakers
/// consult it) - with [`per_target`](Self::per_target), to the model named after the
/// question's target when one is serving. Without a model to ask it answers NaN — no
/// evidence — and knows of no training rows.
#[derive(Debug, Clone)]
pub struct Serving {
    models: Arc<Models>,
    name: String,
    per_target: bool,
}

impl Serving {
    /// The model serving as `name` in `models`, whichever version that is when asked.
    pub fn new(models: Arc<Models>, name: impl Into<String>) -> Self {
        Self {
            models,
            name: name.into(),
            per_target: false,
        }
    }

    /// Asks the model named after each question's target instead, when one is serving
    /// (the service's `model_per_target`).
    pub fn per_target(mut self, per_target: bool) -> Self {
        self.per_target = per_target;
        self
    }

    fn current(&self, target: &str) -> Option<Arc<LoadedModel>> {
        let set = self.models.snapshot();
        let own = if self.per_target {
            set.get(target)
        } else {
            None
        };
        own.or_else(|| set.get(&self.name)).cloned()
    }
}

impl SuccessModel for Serving {
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        self.current(&ctx.target)
            .map_or(f64::NAN, |m| m.model.p_success(ctx))
    }

    fn p_success_by_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[std::time::Duration],
        out: &mut [f64],
    ) {
        match self.current(&ctx.target) {
            Some(m) => m.model.p_success_by_delay(ctx, delays, out),
            None => out.iter_mut().for_each(|p| *p = f64::NAN),
        }
    }

    fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
        self.current(&ctx.target)
            .map_or(Some(0), |m| m.model.rows_like(ctx))
    }

    /// The version serving for `ctx`'s target now: a breaker's recovery asks it all its
    /// questions, even if a reload swaps it meanwhile.
    fn pinned(&self, ctx: &AttemptContext) -> Option<Arc<dyn SuccessModel>> {
        self.current(&ctx.target)
            .map(|m| m as Arc<dyn SuccessModel>)
    }
}

/// A loaded version answers as its model does (what [`Serving::pinned`] hands out).
impl SuccessModel for LoadedModel {
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        self.model.p_success(ctx)
    }

    fn p_success_by_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[std::time::Duration],
        out: &mut [f64],
    ) {
        self.model.p_success_by_delay(ctx, delays, out);
    }

    fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
        self.model.rows_like(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read the system failed this once is tried again at the next scan; what holds
    /// until the file changes (and so its stamp) is remembered.
    #[test]
    fn only_reads_that_hold_until_the_file_changes_are_remembered() {
        use std::io::ErrorKind as K;
        for kind in [
            K::NotFound,
            K::InvalidInput,
            K::InvalidData,
            K::PermissionDenied,
        ] {
            assert!(read_error_lasts(kind), "{kind:?}");
        }
        for kind in [K::Interrupted, K::OutOfMemory, K::Other, K::TimedOut] {
            assert!(!read_error_lasts(kind), "{kind:?}");
        }
        // Too many open files (EMFILE) reads as no kind of its own.
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(!read_error_lasts(emfile.kind()), "{emfile}");
        // As read: a folder where the file should be is refused for good (until changed).
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("model.json")).unwrap();
        let r = read_artifact(&dir.path().join("model.json")).unwrap_err();
        assert!(r.lasting, "{}", r.why);
        assert!(r.why.contains("not a regular file"), "{}", r.why);
    }
}
