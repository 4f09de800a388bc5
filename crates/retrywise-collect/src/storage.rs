//! The file system (and clock) under the segment writer, as a trait so that tests can make
//! it fail and move time without sleeping.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

/// The file operations the segment writer needs.
///
/// [`FileSystem`] is the real one. Tests substitute implementations that fail on demand
/// (a full disk, a vanished directory) to check that the writer drops and counts records,
/// never panics, and resumes when the fault clears.
pub trait Storage: Send + 'static {
    /// An open segment file.
    type File: Write + Send + 'static;

    /// Creates `path`, failing with `AlreadyExists` if it exists.
    ///
    /// # Errors
    /// Whatever the file system reports.
    fn create_new(&mut self, path: &Path) -> io::Result<Self::File>;

    /// Makes the file's data durable (`fdatasync`).
    ///
    /// # Errors
    /// Whatever the file system reports.
    fn sync(&mut self, file: &mut Self::File) -> io::Result<()>;

    /// Cuts the file to `len` bytes (drops a partly written tail).
    ///
    /// # Errors
    /// Whatever the file system reports.
    fn truncate(&mut self, file: &mut Self::File, len: u64) -> io::Result<()>;

    /// Renames `from` to `to`.
    ///
    /// # Errors
    /// Whatever the file system reports.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the directory's entries durable.
    ///
    /// # Errors
    /// Whatever the file system reports.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;

    /// The current time, for rotation by age, the fsync interval and error backoff.
    /// Defaults to the real clock.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSystem;

impl Storage for FileSystem {
    type File = File;

    fn create_new(&mut self, path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    fn sync(&mut self, file: &mut File) -> io::Result<()> {
        file.sync_data()
    }

    fn truncate(&mut self, file: &mut File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        crate::segment::sync_dir(dir)
    }
}
