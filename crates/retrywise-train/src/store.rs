//! The models folder: `models/<name>/<version>/{model.json, metrics.json, report.html}`.
//!
//! A version is written into a hidden staging folder and renamed into place, so a reader
//! never sees half a version; an existing version is never overwritten (two trainers
//! racing for the same number: the loser takes the next one).
//!
//! Trainers in different containers may share one models volume, and there each may be
//! PID 1: a staging folder is therefore named at random and made with a call that fails
//! when the name is taken, and a writer removes no staging folder but its own — and those
//! a crashed trainer left, once they are older than [`STALE_STAGING`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use retrywise::model::{MAX_ARTIFACT_BYTES, ModelArtifact};

use crate::TrainError;
use crate::data::InputFile;

/// The versions present under `models/<name>`, ascending.
///
/// # Errors
/// I/O errors other than the folder not existing.
pub fn versions(model_dir: &Path) -> Result<Vec<u32>, TrainError> {
    let entries = match std::fs::read_dir(model_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io("read", model_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io("read", model_dir, e))?;
        if let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok().filter(|n| n.to_string() == s))
            && entry.path().is_dir()
        {
            out.push(v);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// How old a staging folder must be before a writer removes it as a crashed trainer's
/// leftover. Writing a version takes seconds; a folder an hour old belongs to no live
/// trainer, while a younger one may be another trainer's, still being written.
pub const STALE_STAGING: Duration = Duration::from_secs(60 * 60);

/// The prefix of every staging folder's name.
const STAGING_PREFIX: &str = ".staging-";

/// Removes the staging folders under `dir` last modified more than [`STALE_STAGING`] ago
/// (left by trainers that crashed before their rename), logging each one removed. A folder
/// whose age cannot be read, or whose time is ahead of this machine's clock, is left
/// alone; a failure to list or remove is logged and does not stop the write.
fn remove_stale_staging(dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list the model's folder for stale staging folders");
            return;
        }
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        // `symlink_metadata`: a link named like a staging folder is not followed.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let Some(age) = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
        else {
            continue;
        };
        if !meta.is_dir() || age <= STALE_STAGING {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(
                path = %path.display(),
                age_s = age.as_secs(),
                "removed a staging folder a crashed trainer left"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot remove a staging folder a crashed trainer left"
            ),
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| TrainError::io("create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| TrainError::io("write", path, e))?;
    f.sync_all().map_err(|e| TrainError::io("sync", path, e))
}

/// Makes a folder's entries durable (the files created or renamed in it).
fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TrainError::io("sync", dir, e))
}

/// Whether `name` can name a model under `models`: a plain folder name (not empty, not
/// hidden, no path separators), under a `models` that is not a file and can be written
/// (its nearest existing folder takes a new folder, made and removed at once) — checked
/// before any work, so none is found only when the model is written.
///
/// # Errors
/// [`TrainError::Input`] naming the folder it would have been (or the file), or the folder
/// that cannot be written.
pub fn check_name(models: &Path, name: &str) -> Result<(), TrainError> {
    if models.exists() && !models.is_dir() {
        return Err(TrainError::Input {
            path: models.to_path_buf(),
            problem: "is a file, not a models folder".into(),
        });
    }
    if !retrywise::model::is_model_name(name) {
        return Err(TrainError::Input {
            path: models.join(name),
            problem: "is not a valid model name (a plain folder name: not empty, not starting with a dot, no slashes, no control characters, no spaces at either end)".into(),
        });
    }
    let dir = models.join(name);
    if dir.exists() && !dir.is_dir() {
        return Err(TrainError::Input {
            path: dir,
            problem: "is a file, not a model's folder of versions".into(),
        });
    }
    let nearest = dir
        .ancestors()
        .find(|a| a.is_dir() || a.as_os_str().is_empty())
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .unwrap_or(Path::new("."));
    if let Err(e) = tempfile::Builder::new()
        .prefix(".probe-")
        .tempdir_in(nearest)
    {
        return Err(TrainError::Input {
            problem: format!(
                "cannot be written ({} refuses a new folder: {e})",
                nearest.display()
            ),
            path: dir.clone(),
        });
    }
    Ok(())
}

/// Writes `artifact` (with its version set), its metrics and its report (`report_html` of
/// the artifact as written, its version set) as the next version of `models/<name>`.
/// Returns the version and its folder.
///
/// The name is checked with [`check_name`]; callers that read and fit for a long time
/// before writing check it first. Staging folders under `models/<name>` older than
/// [`STALE_STAGING`] are removed first (each removal is logged).
///
/// Once the version is renamed into place it is visible and will be served, so the write
/// succeeds even if the model's folder then cannot be synced: that failure is logged as a
/// warning (the version's entry may not survive a crash of the machine), since reporting
/// it as a failure would have a retry publish the same model again as another version.
///
/// # Errors
/// I/O errors before the rename; a name that is not a plain folder name, or not the
/// artifact's own.
pub fn write_new_version(
    models: &Path,
    name: &str,
    artifact: &mut ModelArtifact,
    report_html: impl Fn(&ModelArtifact) -> Result<String, TrainError>,
) -> Result<(u32, PathBuf), TrainError> {
    write_version_with(models, name, artifact, report_html, sync_dir)
}

/// [`write_new_version`], syncing the model's folder after the rename with `sync_parent`
/// (tests make it fail).
fn write_version_with(
    models: &Path,
    name: &str,
    artifact: &mut ModelArtifact,
    report_html: impl Fn(&ModelArtifact) -> Result<String, TrainError>,
    sync_parent: impl Fn(&Path) -> Result<(), TrainError>,
) -> Result<(u32, PathBuf), TrainError> {
    check_name(models, name)?;
    let dir = models.join(name);
    // A version in the folder of another model's name is one no reader loads.
    if artifact.name != name {
        return Err(TrainError::Input {
            path: dir,
            problem: format!(
                "would hold an artifact named `{}`: a model's versions carry its folder's name",
                artifact.name
            ),
        });
    }
    // Sized before anything is written: a version no reader can load is refused.
    if let (_, Some(whole)) = model_json(artifact, &dir)? {
        tracing::warn!(
            bytes = whole,
            most = MAX_ARTIFACT_BYTES,
            "model.json leaves out its per-file and per-target detail to stay readable; metrics.json holds it"
        );
    }
    // The model's folder itself survives a crash, not only what is renamed into it.
    retrywise_collect::segment::create_dir_durable(&dir)
        .map_err(|e| TrainError::io("create", &dir, e))?;
    remove_stale_staging(&dir);
    for _ in 0..100 {
        let version = versions(&dir)?
            .last()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| TrainError::Input {
                path: dir.clone(),
                problem: "holds version 4294967295: no version number is left".into(),
            })?;
        artifact.version = version;
        // A staging folder no other writer holds: a random name, made by a call that fails
        // when the name exists (and is then tried again with another). A name built from
        // the pid and a counter was shared by trainers in two containers (both PID 1), and
        // one removed the other's half-written folder as its own crashed run's. Removed
        // when dropped, after a failed write; kept (as nothing) once renamed.
        let staging_dir = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{version}-"))
            .rand_bytes(12)
            .tempdir_in(&dir)
            .map_err(|e| TrainError::io("create a staging folder in", &dir, e))?;
        let staging = staging_dir.path().to_path_buf();
        write_file(
            &staging.join("model.json"),
            model_json(artifact, &dir)?.0.as_bytes(),
        )?;
        let metrics = serde_json::to_string_pretty(&serde_json::json!({
            "name": artifact.name,
            "version": version,
            "metrics": artifact.metrics,
            "training": artifact.training,
        }))
        .unwrap_or_default();
        write_file(&staging.join("metrics.json"), metrics.as_bytes())?;
        write_file(
            &staging.join("report.html"),
            report_html(artifact)?.as_bytes(),
        )?;
        // The staging folder's entries durable before it is renamed into place: a
        // version that appears after a crash holds its files.
        sync_dir(&staging)?;
        let target = dir.join(version.to_string());
        // A file or a broken link of the version's name is never a version (`versions`
        // passes over it), so the next number would be this one again on every try.
        if std::fs::symlink_metadata(&target).is_ok() && !target.is_dir() {
            return Err(TrainError::Input {
                path: target,
                problem: format!(
                    "is in the way of version {version}: not a version folder (a file, or a link to nothing); move it away"
                ),
            });
        }
        if target.exists() {
            continue;
        }
        match std::fs::rename(&staging, &target) {
            Ok(()) => {
                // Renamed: nothing is left for the staging folder's clean-up to remove.
                let _ = staging_dir.keep();
                // The rename made durable, so that a version reported written survives a
                // crash. The version is in place and will be served whatever the sync
                // says, so its failure is a warning, not an error a retry would answer
                // with another version of the same model.
                if let Err(e) = sync_parent(&dir) {
                    tracing::warn!(
                        version,
                        dir = %target.display(),
                        error = %retrywise_collect::error_chain(&e),
                        "the version is in place, but the model's folder could not be synced: its entry may not survive a crash of the machine"
                    );
                }
                return Ok((version, target));
            }
            // Someone else took the number between the check and the rename.
            Err(_) if target.exists() => {}
            Err(e) => return Err(TrainError::io("rename", &staging, e)),
        }
    }
    Err(TrainError::Input {
        path: dir,
        problem: "no free version number after 100 tries".into(),
    })
}

/// `model.json`'s text: the whole artifact when it fits in [`MAX_ARTIFACT_BYTES`] (the
/// most the service, `eval` and `inspect` read), otherwise without the detail that grows
/// with the input — the list of input files (kept as its count, beside the fingerprint),
/// each target's validation split time (kept as their count) and the metrics per target —
/// which `metrics.json` keeps whole. `detail` then names where the rest is. Returns the
/// text and, when the detail was left out, the whole artifact's size.
///
/// # Errors
/// [`TrainError::Input`] when even that is too large (`dir`: the model's folder).
fn model_json(artifact: &ModelArtifact, dir: &Path) -> Result<(String, Option<usize>), TrainError> {
    let text = artifact.to_json();
    if text.len() as u64 <= MAX_ARTIFACT_BYTES {
        return Ok((text, None));
    }
    let whole = text.len();
    let mut slim = artifact.clone();
    if let Some(t) = slim.training.as_object_mut() {
        if let Some(files) = t.remove("files") {
            let n = files.as_array().map_or(0, Vec::len);
            t.insert("file_count".into(), n.into());
        }
        if let Some(from) = t.remove("validation_from_ms") {
            let n = from.as_object().map_or(0, serde_json::Map::len);
            t.insert("validation_targets".into(), n.into());
        }
        t.insert("detail".into(), "metrics.json".into());
    }
    if let Some(m) = slim.metrics.as_object_mut()
        && m.remove("by_target").is_some()
    {
        m.insert("detail".into(), "metrics.json".into());
    }
    let text = slim.to_json();
    if text.len() as u64 <= MAX_ARTIFACT_BYTES {
        return Ok((text, Some(whole)));
    }
    Err(TrainError::Input {
        path: dir.to_path_buf(),
        problem: format!(
            "its model.json would take {} bytes even without its per-file and per-target detail, more than the {MAX_ARTIFACT_BYTES} any reader takes",
            text.len()
        ),
    })
}

/// The number of input files a model was trained on, as its `training` records them (a
/// list, or its count when `model.json` was too large to hold the list).
pub fn file_count(training: &serde_json::Value) -> usize {
    training["files"].as_array().map_or_else(
        || {
            training["file_count"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0)
        },
        Vec::len,
    )
}

/// Reads and validates `model.json` from a version folder (or the file itself).
///
/// # Errors
/// Unreadable files; [`TrainError::Model`] for an invalid artifact.
pub fn load_artifact(path: &Path) -> Result<ModelArtifact, TrainError> {
    let file = if path.is_dir() {
        path.join("model.json")
    } else {
        path.to_path_buf()
    };
    // A model's folder (`models/<name>`) rather than one of its versions: said so, with
    // the versions there, not "cannot read .../model.json".
    if path.is_dir() && !file.exists() {
        let there = versions(path)?;
        if let Some(latest) = there.last() {
            let listed: Vec<String> = there.iter().map(u32::to_string).collect();
            return Err(TrainError::Input {
                path: path.to_path_buf(),
                problem: format!(
                    "is a model's folder (versions {}), not one of its versions: give a version's folder, e.g. {}",
                    listed.join(", "),
                    path.join(latest.to_string()).display()
                ),
            });
        }
    }
    // A regular file of at most MAX_ARTIFACT_BYTES: a pipe would block, a link to an
    // endless device read without end.
    let text = retrywise_collect::read_bounded(&file, MAX_ARTIFACT_BYTES, "a model artifact")
        .map_err(|e| TrainError::io("read", &file, e))?;
    let artifact = ModelArtifact::from_json(&text).map_err(|source| TrainError::Model {
        path: file.clone(),
        source,
    })?;
    // In a version folder (`<name>/<version>/model.json`), the folder and the file must
    // agree on the version. On the model's name only a warning: a model copied anywhere
    // (`/tmp/3/`) may be read, but the service would refuse it where it sits.
    fn folder_name(p: Option<&Path>) -> Option<&str> {
        p.and_then(Path::file_name).and_then(|n| n.to_str())
    }
    let version_dir = file.parent();
    if let Some(version) = folder_name(version_dir).and_then(|n| n.parse::<u32>().ok()) {
        if let Some(problem) = artifact.misplaced(&artifact.name, version) {
            return Err(TrainError::Input {
                path: file,
                problem,
            });
        }
        let name = folder_name(version_dir.and_then(Path::parent)).unwrap_or_default();
        if let Some(problem) = artifact.misplaced(name, version) {
            tracing::warn!(path = %file.display(), %problem, "a service reading this models folder would refuse the model");
        }
    }
    Ok(artifact)
}

/// A fingerprint of the training files: BLAKE3 over each file's name, size and content.
///
/// # Errors
/// Unreadable files.
pub fn fingerprint(files: &[InputFile]) -> Result<String, TrainError> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    for f in files {
        h.update(f.path.to_string_lossy().as_bytes());
        h.update(&f.bytes.to_le_bytes());
        let mut file =
            std::fs::File::open(&f.path).map_err(|e| TrainError::io("open", &f.path, e))?;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| TrainError::io("read", &f.path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(format!("blake3:{}", h.finalize().to_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped model's artifact, named `name` (a model's versions carry its name).
    fn shipped_as(name: &str) -> ModelArtifact {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/1");
        let mut a = load_artifact(&dir).unwrap();
        a.name = name.to_owned();
        a
    }

    /// Writes the shipped model as the next version of `models/m`, with an empty report.
    fn write_m(models: &Path) -> Result<(u32, PathBuf), TrainError> {
        write_new_version(models, "m", &mut shipped_as("m"), |_| Ok(String::new()))
    }

    /// Trainers racing in one process (and so with one pid) each get a version of their
    /// own, whole: a staging folder is never shared, nor removed under another writer.
    #[test]
    fn writers_racing_in_one_process_each_write_a_whole_version() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path().join("models");
        let versions: Vec<u32> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut a = shipped_as("m");
                        write_new_version(&models, "m", &mut a, |a| {
                            Ok(format!("<html>version {}</html>", a.version))
                        })
                        .unwrap()
                        .0
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=8).collect::<Vec<_>>(), "{versions:?}");
        for v in 1..=8 {
            let dir = models.join("m").join(v.to_string());
            assert_eq!(load_artifact(&dir).unwrap().version, v);
            assert!(dir.join("metrics.json").is_file(), "{}", dir.display());
            // The report is of the version it is written as, whichever number it took.
            assert_eq!(
                std::fs::read_to_string(dir.join("report.html")).unwrap(),
                format!("<html>version {v}</html>")
            );
        }
        let left: Vec<_> = std::fs::read_dir(models.join("m"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "staging folders left: {left:?}");
    }

    /// A model's folder given where a version's is wanted is said to be one, naming its
    /// versions and the latest's folder (it was "cannot read …/model.json").
    #[test]
    fn a_models_folder_is_named_as_such_with_its_versions() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path().join("models");
        for _ in 0..2 {
            write_m(&models).unwrap();
        }
        let e = load_artifact(&models.join("m")).unwrap_err().to_string();
        assert!(
            e.contains("is a model's folder (versions 1, 2)") && e.contains("m/2"),
            "{e}"
        );
        // An empty folder is still the file it lacks.
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = load_artifact(&empty).unwrap_err().to_string();
        assert!(e.contains("model.json"), "{e}");
    }

    /// A staging folder named as this process's used to be (`.staging-<version>-<pid>-<n>`)
    /// may be another trainer's, in another container with the same pid, still being
    /// written: a write leaves it and its files alone (it used to remove it as its own
    /// crashed run's), and writes its version in a folder of its own.
    #[test]
    fn a_young_staging_folder_named_as_this_process_would_survives_a_write() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        std::fs::create_dir(&m).unwrap();
        // The names the old counter gave this process's first writes of version 1.
        let theirs: Vec<PathBuf> = (0..16)
            .map(|n| m.join(format!(".staging-1-{}-{n}", std::process::id())))
            .collect();
        for dir in &theirs {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("model.json"), "theirs").unwrap();
        }
        let (version, dir) = write_m(root.path()).unwrap();
        assert_eq!((version, load_artifact(&dir).unwrap().version), (1, 1));
        for dir in &theirs {
            assert_eq!(
                std::fs::read_to_string(dir.join("model.json")).unwrap(),
                "theirs",
                "{}",
                dir.display()
            );
        }
        let hidden = std::fs::read_dir(&m)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(
            hidden,
            theirs.len(),
            "only the other writer's folders are left"
        );
        // The version's folder is made as any folder is (the umask's mode, not a
        // temporary folder's owner-only one): a server running as another user reads it.
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
        };
        assert_eq!(mode(&dir), mode(&theirs[0]));
    }

    /// A staging folder older than [`STALE_STAGING`] is a crashed trainer's leftover: a
    /// write removes it (they used to pile up forever), and leaves a young one alone.
    #[test]
    fn a_staging_folder_older_than_the_bound_is_removed_by_a_write() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        std::fs::create_dir(&m).unwrap();
        let (old, young) = (m.join(".staging-3-1-0"), m.join(".staging-3-1-1"));
        for dir in [&old, &young] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("model.json"), "crashed").unwrap();
        }
        let then = SystemTime::now() - STALE_STAGING - Duration::from_secs(60);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(then)
            .unwrap();
        write_m(root.path()).unwrap();
        assert!(!old.exists(), "{} is left", old.display());
        assert!(
            young.join("model.json").is_file(),
            "{} is removed",
            young.display()
        );
    }

    /// Once a version is renamed into place it is served: a model's folder that cannot
    /// then be synced is a warning, not a failure a retry would answer with a second
    /// version of the same model.
    #[test]
    fn a_version_in_place_is_written_even_if_its_folder_cannot_be_synced() {
        let root = tempfile::tempdir().unwrap();
        let failing = |d: &Path| {
            Err(TrainError::io(
                "sync",
                d,
                std::io::Error::other("injected sync failure"),
            ))
        };
        let (version, dir) = write_version_with(
            root.path(),
            "m",
            &mut shipped_as("m"),
            |_| Ok(String::new()),
            failing,
        )
        .unwrap();
        assert_eq!(version, 1);
        assert_eq!(load_artifact(&dir).unwrap().version, 1);
        assert_eq!(versions(&root.path().join("m")).unwrap(), vec![1]);
    }

    /// A file or a broken link named like the next version is named in the error (it
    /// used to be passed over as no version and tried again 100 times, or blamed on the
    /// staging folder), and nothing is left behind.
    #[test]
    fn an_entry_in_the_way_of_the_next_version_is_named() {
        let root = tempfile::tempdir().unwrap();
        let write = || write_m(root.path());
        assert_eq!(write().unwrap().0, 1);
        let m = root.path().join("m");
        for make in [
            (|p: &Path| std::fs::write(p, "")) as fn(&Path) -> std::io::Result<()>,
            |p: &Path| std::os::unix::fs::symlink("/nonexistent/retrywise", p),
        ] {
            make(&m.join("2")).unwrap();
            let e = write().unwrap_err();
            match &e {
                TrainError::Input { path, problem } => {
                    assert_eq!(path, &m.join("2"));
                    assert!(problem.contains("in the way of version 2"), "{e}");
                }
                _ => panic!("{e}"),
            }
            std::fs::remove_file(m.join("2")).unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(&m)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("1")]);
        assert_eq!(write().unwrap().0, 2);
    }

    #[test]
    fn a_models_folder_that_cannot_be_written_is_found_before_any_work() {
        let e = check_name(Path::new("/proc/retrywise-models"), "m").unwrap_err();
        assert!(e.to_string().contains("cannot be written"), "{e}");
        let root = tempfile::tempdir().unwrap();
        check_name(&root.path().join("not/yet/there"), "m").unwrap();
        assert!(!root.path().join("not").exists(), "the check makes nothing");
        // A file where the model's folder would be.
        std::fs::write(root.path().join("m"), "").unwrap();
        let e = check_name(root.path(), "m").unwrap_err();
        assert!(e.to_string().contains("is a file"), "{e}");
    }

    /// A model trained on enough files and targets that its description outgrows what every
    /// reader takes is still written loadable: `model.json` leaves out the per-file and
    /// per-target detail (counted), `metrics.json` keeps it whole, and the model's p is
    /// the same.
    #[test]
    fn a_model_whose_detail_outgrows_the_readers_limit_is_written_loadable() {
        let mut a = shipped_as("big");
        let files: Vec<_> = (0..40_000)
            .map(|i| serde_json::json!({"path": format!("data/attempts/part-{i:08}.parquet"), "bytes": 1_000_000, "format": "parquet"}))
            .collect();
        a.training["files"] = files.into();
        let targets: serde_json::Map<_, _> = (0..2_000)
            .map(|i| {
                (
                    format!("target-{i}"),
                    serde_json::json!(1_764_000_000_000u64),
                )
            })
            .collect();
        a.training["validation_from_ms"] = targets.into();
        assert!(a.to_json().len() as u64 > MAX_ARTIFACT_BYTES);
        let root = tempfile::tempdir().unwrap();
        let (_, dir) =
            write_new_version(root.path(), "big", &mut a, |_| Ok(String::new())).unwrap();
        let back = load_artifact(&dir).unwrap();
        assert_eq!(
            (back.weights, back.intercept),
            (a.weights.clone(), a.intercept)
        );
        assert_eq!(file_count(&back.training), 40_000);
        assert_eq!(back.training["validation_targets"], 2_000);
        assert_eq!(back.training["detail"], "metrics.json");
        assert!(back.metrics.get("by_target").is_none());
        assert_eq!(back.metrics["validation"], a.metrics["validation"]);
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(
            metrics["training"]["files"].as_array().unwrap().len(),
            40_000
        );
        assert_eq!(metrics["metrics"]["by_target"], a.metrics["by_target"]);
        // A model that fits is written whole.
        let mut small = shipped_as("small");
        let (_, dir) =
            write_new_version(root.path(), "small", &mut small, |_| Ok(String::new())).unwrap();
        let back = load_artifact(&dir).unwrap();
        assert_eq!(back.training["files"], small.training["files"]);
        assert_eq!(file_count(&back.training), file_count(&small.training));
        assert!(file_count(&back.training) > 0);
    }

    /// A version is written only in the folder of the artifact's own name (the service
    /// refuses one that sits in another model's).
    #[test]
    fn an_artifact_is_written_only_under_its_own_name() {
        let root = tempfile::tempdir().unwrap();
        let e = write_new_version(root.path(), "other", &mut shipped_as("m"), |_| {
            Ok(String::new())
        })
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "would hold an artifact named `m`: a model's versions carry its folder's name"
            ),
            "{e}"
        );
        assert!(!root.path().join("other").exists());
    }
}
