//! Reading a small file a user points at (a model artifact, a scenario) without trusting it
//! to be one: a pipe would block the reader for as long as nothing writes to it, and a link
//! to an endless device would be read without end. And reading a log one line at a time
//! without trusting its lines to be short.

use std::io::{self, BufRead, Read};
use std::path::Path;

/// What [`read_line_bounded`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Bytes taken from the reader (the line and its newline); 0 at the end.
    pub consumed: u64,
    /// It ended with a newline (a last line may not).
    pub terminated: bool,
    /// Longer than the bound: read past, and none of it kept.
    pub too_long: bool,
    /// A line longer than the bound held nothing but ASCII white space (a blank line,
    /// however long); `false` for the others, whose text is in the buffer.
    pub blank: bool,
}

/// Reads the next line of `reader` into `line` (cleared first; the newline kept), holding
/// at most `max` bytes of it: a longer line is read through to its end and left out
/// (`line` empty, [`Line::too_long`]), so that memory holds `max` bytes however long a
/// line a file has (a corrupt or foreign file may be one endless line).
///
/// # Errors
/// What reading reports (an interrupted read is retried).
pub fn read_line_bounded<R: BufRead + ?Sized>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    line.clear();
    let mut read = Line {
        consumed: 0,
        terminated: false,
        too_long: false,
        blank: false,
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(read);
        }
        let (n, ends) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !read.too_long {
            if line.len() + n > max {
                read.too_long = true;
                read.blank = line.iter().all(u8::is_ascii_whitespace);
                line.clear();
            } else {
                line.extend_from_slice(&buf[..n]);
            }
        }
        if read.too_long && read.blank {
            read.blank = buf[..n].iter().all(u8::is_ascii_whitespace);
        }
        reader.consume(n);
        read.consumed += n as u64;
        if ends {
            read.terminated = true;
            return Ok(read);
        }
    }
}

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
    use proptest::prelude::*;

    fn lines_of(bytes: &[u8], capacity: usize, max: usize) -> Vec<(Vec<u8>, Line)> {
        let mut reader = io::BufReader::with_capacity(capacity, bytes);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            let read = read_line_bounded(&mut reader, &mut line, max).unwrap();
            if read.consumed == 0 {
                return out;
            }
            out.push((line.clone(), read));
        }
    }

    #[test]
    fn a_line_longer_than_the_bound_is_read_past_and_not_kept() {
        let mut text = b"short\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 10_000));
        text.extend(b"\nlast");
        let lines = lines_of(&text, 64, 100);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].0, b"short\n");
        assert!(lines[0].1.terminated && !lines[0].1.too_long);
        assert!(lines[1].0.is_empty() && lines[1].1.too_long && lines[1].1.terminated);
        assert!(!lines[1].1.blank);
        assert_eq!(lines[1].1.consumed, 10_001);
        // A long line of white space is a blank line, however long.
        let mut spaces = vec![b' '; 5_000];
        spaces.extend(b"\t\r\n");
        let read = lines_of(&spaces, 64, 100);
        assert!(read[0].1.too_long && read[0].1.blank, "{:?}", read[0].1);
        assert_eq!(lines[2].0, b"last");
        assert!(!lines[2].1.terminated && !lines[2].1.too_long);
    }

    proptest! {
        /// Within the bound, lines read as `read_until` reads them, whatever the buffer's
        /// size; every byte is consumed once; no line kept is longer than the bound.
        #[test]
        fn lines_within_the_bound_read_as_read_until_reads_them(
            text in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..400),
            capacity in 1usize..40,
            max in 1usize..60,
        ) {
            let lines = lines_of(&text, capacity, max);
            let mut expected = Vec::new();
            let mut reader = io::BufReader::new(text.as_slice());
            loop {
                let mut l = Vec::new();
                if reader.read_until(b'\n', &mut l).unwrap() == 0 {
                    break;
                }
                expected.push(l);
            }
            prop_assert_eq!(lines.len(), expected.len());
            let mut total = 0;
            for ((got, read), want) in lines.iter().zip(&expected) {
                total += read.consumed;
                prop_assert_eq!(read.consumed, want.len() as u64);
                prop_assert_eq!(read.terminated, want.ends_with(b"\n"));
                prop_assert_eq!(read.too_long, want.len() > max);
                prop_assert_eq!(
                    read.blank,
                    read.too_long && want.iter().all(u8::is_ascii_whitespace)
                );
                if read.too_long {
                    prop_assert!(got.is_empty());
                } else {
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(total, text.len() as u64);
        }
    }

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
