//! Segment files: naming and listing.
//!
//! A segment is an NDJSON file named
//! `seg-<start ms, 13 digits>-<sequence, 6 digits>-<writer, 8 hex digits>.ndjson` — names
//! sort in the order segments were started, and the writer's random id keeps names from
//! different writers (hosts, runs) apart when their segments meet in one dataset. While its
//! writer has it open it carries an extra `.open` suffix; closing renames it. Only closed
//! segments are compacted.

use std::path::{Path, PathBuf};

use crate::CollectError;

/// The suffix of a closed segment.
pub const CLOSED: &str = ".ndjson";
/// The suffix of a segment still being written (or left by a writer that crashed).
pub const OPEN: &str = ".ndjson.open";

/// A segment file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    /// Its file name without suffix (`seg-1764000000000-000001-0a1b2c3d`).
    pub stem: String,
    /// Its path.
    pub path: PathBuf,
    /// Whether its writer closed it.
    pub closed: bool,
}

pub(crate) fn file_name(start_ms: u64, seq: u32, writer: u32, open: bool) -> String {
    format!(
        "seg-{start_ms:013}-{seq:06}-{writer:08x}{}",
        if open { OPEN } else { CLOSED }
    )
}

/// A random id for a writer, from the standard library's randomly seeded hasher.
pub(crate) fn writer_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() as u32
}

/// The segments of `dir`, oldest first; other files are ignored, and so is anything named
/// like a segment that is not a regular file (or a link to one), with a warning.
///
/// # Errors
/// [`CollectError::Io`] if the directory cannot be listed.
pub fn list(dir: &Path) -> Result<Vec<Segment>, CollectError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CollectError::io("list", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CollectError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("seg-") {
            continue;
        }
        let (stem, closed) = if let Some(s) = name.strip_suffix(OPEN) {
            (s, false)
        } else if let Some(s) = name.strip_suffix(CLOSED) {
            (s, true)
        } else {
            continue;
        };
        // A folder, a pipe or a device under a segment's name is none (a pipe would block
        // its reader for good, `/dev/zero` feed it forever): said and left out. A link to
        // a segment is one. (The entry's own type, from the listing; only a link costs a
        // look at what it points to. A segment renamed or removed meanwhile by its writer
        // or a compaction is passed over quietly.)
        let own = entry.file_type();
        let link = own.as_ref().is_ok_and(std::fs::FileType::is_symlink);
        let kind = if link {
            std::fs::metadata(entry.path()).map(|m| m.file_type())
        } else {
            own
        };
        match kind {
            Ok(t) if t.is_file() => {}
            Ok(_) => {
                tracing::warn!(path = %entry.path().display(), "named like a segment but not a regular file; skipping it");
                continue;
            }
            // (A broken link is worth a warning; a file gone since the listing is not.)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !link => continue,
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "named like a segment but unreadable (a broken link?); skipping it");
                continue;
            }
        }
        out.push(Segment {
            stem: stem.to_owned(),
            path: entry.path(),
            closed,
        });
    }
    out.sort();
    Ok(out)
}

/// What [`list_tree`] found under its root.
#[derive(Debug, Default)]
pub struct Tree {
    /// The segments, oldest first within each directory.
    pub segments: Vec<Segment>,
    /// How many directories held any segment.
    pub directories: usize,
    /// Directories below the root that could not be listed (no permission - a
    /// `lost+found` at a mount point - or removed while the tree was walked): whatever
    /// they hold is left where it is, and the caller says so.
    pub unlisted: Vec<PathBuf>,
}

/// The segments of every directory in the tree under `root` (`root` included), oldest
/// first within each, and how many directories held any: a recorder writes one directory,
/// the simulator one per policy (`sim run --record DIR`), a fleet one per writer.
/// Symbolic links are not followed; directories in `skip` (an archive inside the tree) are
/// left out, however their paths are spelled (`./`, `..`, absolute, through a link): a
/// directory is skipped when it is the same directory as one of them. A directory below
/// `root` that the process may not list, or that is gone by the time it is listed, is
/// left out and named in [`Tree::unlisted`] (with a warning), so that one such folder
/// does not stop the rest of the tree from being read.
///
/// # Errors
/// [`CollectError::Io`] if `root` cannot be listed, or a directory below it fails to list
/// for another reason.
pub fn list_tree(root: &Path, skip: &[&Path]) -> Result<Tree, CollectError> {
    walk(root, skip, |dir| {
        let mut subfolders = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            match entry.file_type() {
                Ok(t) if t.is_dir() => subfolders.push(entry.path()),
                Ok(_) => {}
                // Removed since the folder was listed: nothing to walk.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(subfolders)
    })
}

/// [`list_tree`], with `subfolders` listing a directory's subdirectories (a test makes
/// one fail).
fn walk(
    root: &Path,
    skip: &[&Path],
    mut subfolders: impl FnMut(&Path) -> std::io::Result<Vec<PathBuf>>,
) -> Result<Tree, CollectError> {
    let mut tree = Tree::default();
    let skipped: Vec<DirId> = skip.iter().filter_map(|s| DirId::of(s)).collect();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if !skipped.is_empty() && DirId::of(&dir).is_some_and(|id| skipped.contains(&id)) {
            continue;
        }
        // A folder below the root that may not be listed, or is gone - when its
        // subfolders are read, or when its segments are (a second read of it) - is left
        // out and named.
        let unlistable = |e: &std::io::Error| {
            dir != root
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
                )
        };
        let listed = subfolders(&dir)
            .map_err(|e| CollectError::io("list", &dir, e))
            .and_then(|below| Ok((below, list(&dir)?)));
        let (below, found) = match listed {
            Ok(listed) => listed,
            Err(CollectError::Io { source, .. }) if unlistable(&source) => {
                tracing::warn!(folder = %dir.display(), error = %source, "a folder below the segments' root cannot be listed: left out");
                tree.unlisted.push(dir);
                continue;
            }
            Err(e) => return Err(e),
        };
        if !found.is_empty() {
            tree.directories += 1;
        }
        tree.segments.extend(found);
        stack.extend(below);
    }
    tree.unlisted.sort();
    Ok(tree)
}

/// A directory's identity: its device and inode where there are such, its resolved path
/// elsewhere.
#[derive(Debug, PartialEq, Eq)]
enum DirId {
    #[cfg(unix)]
    Inode(u64, u64),
    #[cfg(not(unix))]
    Path(std::path::PathBuf),
}

impl DirId {
    /// The identity of the directory at `path` (links followed); none if there is none.
    fn of(path: &Path) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(path).ok().filter(|m| m.is_dir())?;
            Some(Self::Inode(m.dev(), m.ino()))
        }
        #[cfg(not(unix))]
        {
            path.canonicalize().ok().map(Self::Path)
        }
    }
}

/// Makes the written temporary file `tmp` durable as `path` in `dir`: fsync of the file,
/// rename, fsync of the directory (compaction's parts and rejected lines, the shipper's
/// spooled batches).
pub(crate) fn publish(tmp: &Path, path: &Path, dir: &Path) -> Result<(), CollectError> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| CollectError::io("sync", tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| CollectError::io("rename", tmp, e))?;
    sync_dir(dir).map_err(|e| CollectError::io("sync", dir, e))
}

/// Makes `dir`'s entries durable (a new or renamed file survives a crash).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and the folders missing above it, and makes each durable in its parent
/// (and `dir` in its parent always: one a crashed run created and never synced is synced
/// now), so that a crash cannot lose a folder whose contents were reported written - the
/// compaction's output before the segments it holds are removed, a model version before
/// it is reported.
///
/// # Errors
/// A folder cannot be created, or a parent cannot be synced.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    let existed = dir.is_dir();
    let parents = parents_to_sync(dir, Path::is_dir);
    std::fs::create_dir_all(dir)?;
    for p in parents {
        match sync_dir(&p) {
            Ok(()) => {}
            // A folder that was there already may sit in a parent this process cannot
            // open (`/data` at 0711 over a service's own `/data/attempts`): it was made
            // durable by whoever made it, or by an earlier run.
            Err(e) if existed => {
                tracing::debug!(parent = %p.display(), error = %e, "cannot sync the parent of an existing folder");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The folders whose entries [`create_dir_durable`] syncs once `dir` exists: the parent
/// of each level of `dir` that `is_dir` says is missing, and `dir`'s own parent. A
/// relative path's top level lives in the working directory (`.`), synced like any other
/// parent.
fn parents_to_sync(dir: &Path, is_dir: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let parent_of = |p: &Path| -> Option<PathBuf> {
        match p.parent() {
            // `.` (and `/`) is the top.
            _ if p == Path::new(".") => None,
            Some(parent) if parent.as_os_str().is_empty() => Some(PathBuf::from(".")),
            parent => parent.map(Path::to_path_buf),
        }
    };
    // The levels missing, innermost first.
    let mut missing = Vec::new();
    let mut cur = Some(dir.to_path_buf());
    while let Some(c) = cur.filter(|c| !is_dir(c)) {
        cur = parent_of(&c);
        missing.push(c);
    }
    let mut parents: Vec<PathBuf> = missing.iter().filter_map(|m| parent_of(m)).collect();
    parents.extend(parent_of(dir));
    parents.sort();
    parents.dedup();
    parents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_folder_is_made_with_every_level_missing_above_it() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("out").join("date=2026-12-06");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        // Again, when it is there: nothing to create, its parent synced all the same.
        create_dir_durable(&deep).unwrap();
        // A file where a folder should be is an error, not a success.
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_dir_durable(&file.join("below")).is_err());
    }

    #[test]
    fn a_new_relative_folder_is_made_durable_in_the_working_directory() {
        let none = |_: &Path| false;
        assert_eq!(parents_to_sync(Path::new("out"), none), [Path::new(".")]);
        assert_eq!(
            parents_to_sync(Path::new("data/parquet"), none),
            [Path::new("."), Path::new("data")]
        );
        // Only the missing levels' parents, and the folder's own parent always.
        let only_data = |p: &Path| p == Path::new("data") || p == Path::new(".");
        assert_eq!(
            parents_to_sync(Path::new("data/parquet/x"), only_data),
            [Path::new("data"), Path::new("data/parquet")]
        );
        assert_eq!(
            parents_to_sync(Path::new("/srv/new/attempts"), |p: &Path| p
                == Path::new("/srv")),
            [Path::new("/srv"), Path::new("/srv/new")]
        );
    }

    #[test]
    fn only_regular_files_are_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("seg-0000000000001-000001-00000001.ndjson")).unwrap();
        std::fs::write(d.join("seg-0000000000002-000001-00000001.ndjson"), b"").unwrap();
        // A device behind a segment's name would be read forever.
        std::os::unix::fs::symlink(
            "/dev/zero",
            d.join("seg-0000000000003-000001-00000001.ndjson"),
        )
        .unwrap();
        // A link to a segment is one; a broken link is none.
        std::os::unix::fs::symlink(
            d.join("seg-0000000000002-000001-00000001.ndjson"),
            d.join("seg-0000000000004-000001-00000001.ndjson"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            d.join("gone"),
            d.join("seg-0000000000005-000001-00000001.ndjson"),
        )
        .unwrap();
        let stems: Vec<String> = list(d).unwrap().into_iter().map(|s| s.stem).collect();
        assert_eq!(
            stems,
            [
                "seg-0000000000002-000001-00000001",
                "seg-0000000000004-000001-00000001"
            ]
        );
    }

    #[test]
    fn names_sort_by_start_then_sequence() {
        let mut names = vec![
            file_name(1_764_000_000_500, 2, 0xab, false),
            file_name(999_999_999_999, 7, 0xffff_ffff, false),
            file_name(1_764_000_000_500, 1, 0xab, false),
            file_name(1_764_000_000_001, 9, 1, true),
        ];
        names.sort();
        assert_eq!(
            names,
            [
                "seg-0999999999999-000007-ffffffff.ndjson",
                "seg-1764000000001-000009-00000001.ndjson.open",
                "seg-1764000000500-000001-000000ab.ndjson",
                "seg-1764000000500-000002-000000ab.ndjson",
            ]
        );
        assert_ne!(writer_id(), writer_id(), "ids differ between writers");
    }

    #[test]
    fn lists_the_segments_of_a_tree() {
        let root = tempfile::tempdir().unwrap();
        for (dir, name) in [
            ("", "seg-0000000000001-000001-00000001.ndjson"),
            ("exp", "seg-0000000000002-000001-00000002.ndjson"),
            (
                "exp/deeper",
                "seg-0000000000003-000001-00000003.ndjson.open",
            ),
            ("budget", "seg-0000000000004-000001-00000004.ndjson"),
            ("archive", "seg-0000000000005-000001-00000005.ndjson"),
            ("empty", "notes.txt"),
        ] {
            let d = root.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), "").unwrap();
        }
        // The archive spelled another way than the walk spells it: still skipped.
        let archive = root.path().join("exp/../archive");
        let Tree {
            segments: segs,
            directories: dirs,
            ..
        } = list_tree(root.path(), &[&archive]).unwrap();
        let mut stems: Vec<&str> = segs.iter().map(|s| &s.stem[4..17]).collect();
        stems.sort_unstable();
        assert_eq!(
            stems,
            [
                "0000000000001",
                "0000000000002",
                "0000000000003",
                "0000000000004"
            ]
        );
        assert_eq!(dirs, 4);
        assert_eq!(segs.iter().filter(|s| !s.closed).count(), 1);
    }

    #[test]
    fn lists_only_segments() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "seg-0000000000001-000001.ndjson",
            "seg-0000000000002-000001.ndjson.open",
            "notes.txt",
            "seg-x.json",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let segs = list(dir.path()).unwrap();
        assert_eq!(segs.len(), 2);
        assert!(segs[0].closed);
        assert!(!segs[1].closed);
        assert!(list(&dir.path().join("missing")).is_err());
    }

    /// A folder below the root that may not be listed (a `lost+found` at a mount point)
    /// is left out and named; the rest of the tree is read. The root itself, or another
    /// kind of failure, is still an error. (Tests run as root here, where no folder is
    /// unreadable: the listing fails by hand.)
    #[test]
    fn an_unlistable_subfolder_is_named_and_the_rest_read() {
        let root = tempfile::tempdir().unwrap();
        let (a, lost) = (root.path().join("a"), root.path().join("lost+found"));
        for dir in [&a, &lost] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("seg-0000000000001-000001.ndjson"), b"").unwrap();
        }
        std::fs::write(root.path().join("seg-0000000000002-000001.ndjson"), b"").unwrap();
        let real = |dir: &Path| -> std::io::Result<Vec<PathBuf>> {
            Ok(std::fs::read_dir(dir)?
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect())
        };
        let refusing = |kind: std::io::ErrorKind, at: PathBuf| {
            move |dir: &Path| {
                if dir == at {
                    Err(std::io::Error::from(kind))
                } else {
                    real(dir)
                }
            }
        };
        for kind in [
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::NotFound,
        ] {
            let tree = walk(root.path(), &[], refusing(kind, lost.clone())).unwrap();
            assert_eq!(tree.unlisted, std::slice::from_ref(&lost), "{kind:?}");
            assert_eq!((tree.segments.len(), tree.directories), (2, 2), "{kind:?}");
        }
        // Gone between the read of its subfolders and the read of its segments: named
        // too (it stopped the run).
        let doomed = lost.clone();
        let vanishing = move |dir: &Path| -> std::io::Result<Vec<PathBuf>> {
            if dir == doomed {
                std::fs::remove_dir_all(dir)?;
                return Ok(Vec::new());
            }
            real(dir)
        };
        let tree = walk(root.path(), &[], vanishing).unwrap();
        assert_eq!(tree.unlisted, std::slice::from_ref(&lost));
        assert_eq!((tree.segments.len(), tree.directories), (2, 2));
        std::fs::create_dir(&lost).unwrap();
        std::fs::write(lost.join("seg-0000000000001-000001.ndjson"), b"").unwrap();
        // Nothing refused: everything is read, nothing named.
        let all = list_tree(root.path(), &[]).unwrap();
        assert_eq!((all.segments.len(), all.directories), (3, 3));
        assert!(all.unlisted.is_empty());
        // The root, and a failure that is not about permission or a folder gone, stop it.
        let denied = std::io::ErrorKind::PermissionDenied;
        let e = walk(
            root.path(),
            &[],
            refusing(denied, root.path().to_path_buf()),
        )
        .unwrap_err();
        assert!(matches!(e, CollectError::Io { .. }), "{e}");
        let e = walk(root.path(), &[], refusing(std::io::ErrorKind::Other, lost)).unwrap_err();
        assert!(e.to_string().contains("lost+found"), "{e}");
    }
}
