//! Reading a small file a user points at (a model artifact, a scenario) without trusting it
//! to be one: a pipe would block the reader for as long as nothing writes to it, and a link
//! to an endless device would be read without end.

use std::io::{self, Read};
use std::path::Path;

/// The text of the regular file at `path`, of at most `max` bytes; `what` names what it
/// should be in the error ("a model artifact").
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for a path that is not a regular file (a pipe, a
/// device, a folder) — refused before it is opened; [`io::ErrorKind::InvalidData`] for a
/// file larger than `max` bytes, or not UTF-8; whatever opening or reading reports.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> io::Result<String> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {what} may be ({max} bytes)"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_file_and_refuses_the_rest_by_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "12345").unwrap();
        assert_eq!(read_bounded(&file, 5, "x").unwrap(), "12345");
        let e = read_bounded(&file, 4, "a thing").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string()
                .contains("larger than a thing may be (4 bytes)"),
            "{e}"
        );
        let e = read_bounded(dir.path(), 4, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // A pipe is refused unopened (opening it would wait for a writer).
        let pipe = dir.path().join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&pipe)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(
            read_bounded(&pipe, 4, "x").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            read_bounded(&dir.path().join("none"), 4, "x")
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }
}
