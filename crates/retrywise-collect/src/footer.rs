//! A Parquet file's footer, checked before polars decodes it.
//!
//! A Parquet file ends with its metadata (a Thrift compact-protocol `FileMetaData`), the
//! metadata's length (4 bytes, little-endian) and `PAR1`. polars' footer decoder reserves
//! room for a list as soon as it reads the list's length: a damaged length (up to 2³¹
//! elements of a hundred bytes and more) asks for more memory than there is, and Rust
//! aborts the process on a failed allocation — no `catch_unwind` can turn that into an
//! error. [`check`] walks the metadata first without building anything, and refuses a
//! footer whose lengths cannot fit in the bytes that follow them (every element of a list,
//! set or map takes at least one byte), so that polars only ever reserves room for what is
//! there. The trainer checks every Parquet file it reads with it, and compaction an
//! existing part before it reads it back.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How deep structures may nest: Parquet's own schema nests a few levels; a damaged
/// footer must not recurse the stack away.
const MAX_DEPTH: usize = 64;

/// The footer of the Parquet file at `path` is whole: it ends with `PAR1`, its metadata's
/// length fits in the file, and the metadata is Thrift whose every length fits in it.
///
/// # Errors
/// What is wrong, as a phrase to follow the file's name ("is corrupt: …"); or the I/O
/// error reading it.
pub fn check(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?
        .len();
    if len < 12 {
        return Err(format!(
            "is not a Parquet file: {len} bytes, fewer than its header and footer take"
        ));
    }
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::End(-8))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if &tail[4..] != b"PAR1" {
        return Err("is not a Parquet file, or is cut short: it does not end with PAR1".into());
    }
    let meta_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if meta_len > len - 12 {
        return Err(format!(
            "is corrupt: its footer says its metadata takes {meta_len} bytes, more than the file's {len} hold"
        ));
    }
    let mut meta = vec![0u8; usize::try_from(meta_len).map_err(|_| "is too large".to_owned())?];
    f.seek(SeekFrom::Start(len - 8 - meta_len))
        .and_then(|_| f.read_exact(&mut meta))
        .map_err(|e| format!("cannot be read: {e}"))?;
    skim(&meta)
        .map(drop)
        .map_err(|why| format!("is corrupt: its footer's metadata {why}"))
}

/// Walks the Thrift compact-protocol struct at the start of `bytes`, checking every length
/// against the bytes that follow it. Returns how many bytes the struct took.
pub(crate) fn skim(bytes: &[u8]) -> Result<usize, String> {
    let mut r = Reader { bytes, at: 0 };
    r.structure(0)?;
    Ok(r.at)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| format!("ends early, at byte {}", self.at))?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "claims {n} bytes at byte {} where {} are left",
                self.at,
                self.left()
            ));
        }
        self.at += n;
        Ok(())
    }

    /// An unsigned LEB128 varint, read as polars reads it (any length, shifts wrapping).
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).wrapping_shl(shift);
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift = shift.wrapping_add(7);
        }
    }

    /// A list's or set's length as polars reads it - the varint cut to an `i32`, a
    /// negative one an empty list - when each element takes at least one byte of those
    /// left.
    fn list_len(&self, n: u64) -> Result<usize, String> {
        // Truncation is the point: it is what polars' decoder does.
        #[allow(clippy::cast_possible_truncation)]
        let n = u64::try_from(n as i32).unwrap_or(0);
        self.count(n, "list")
    }

    /// A count of elements that each take at least one byte.
    fn count(&self, n: u64, what: &str) -> Result<usize, String> {
        match usize::try_from(n) {
            Ok(n) if n <= self.left() => Ok(n),
            _ => Err(format!(
                "claims a {what} of {n} elements at byte {} where {} bytes are left",
                self.at,
                self.left()
            )),
        }
    }

    /// A struct's fields to its STOP (their values check the depth).
    fn structure(&mut self, depth: usize) -> Result<(), String> {
        loop {
            let header = self.byte()?;
            let kind = header & 0x0f;
            if kind == 0 {
                return Ok(()); // STOP
            }
            if header >> 4 == 0 {
                self.varint()?; // a field id given in full (zigzag i16)
            }
            self.value(kind, depth, true)?;
        }
    }

    /// A value of compact type `kind`; a boolean field carries its value in its type, a
    /// boolean element of a list takes a byte.
    fn value(&mut self, kind: u8, depth: usize, field: bool) -> Result<(), String> {
        // Structs, lists and maps nest: each level is a frame of this recursion.
        if depth > MAX_DEPTH {
            return Err(format!("nests deeper than {MAX_DEPTH} levels"));
        }
        match kind {
            1 | 2 if field => Ok(()),
            1..=3 => self.skip(1),
            4..=6 => self.varint().map(drop),
            7 => self.skip(8),
            8 => {
                let n = self.varint()?;
                self.skip(usize::try_from(n).unwrap_or(usize::MAX))
            }
            9 | 10 => {
                let header = self.byte()?;
                let n = match header >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let n = self.list_len(n)?;
                let elem = header & 0x0f;
                for _ in 0..n {
                    self.value(elem, depth + 1, false)?;
                }
                Ok(())
            }
            11 => {
                let n = self.varint()?;
                let n = self.count(n, "map")?;
                if n == 0 {
                    return Ok(());
                }
                let types = self.byte()?;
                for _ in 0..n {
                    self.value(types >> 4, depth + 1, false)?;
                    self.value(types & 0x0f, depth + 1, false)?;
                }
                Ok(())
            }
            12 => self.structure(depth + 1),
            13 => self.skip(16), // UUID
            other => Err(format!(
                "holds an unknown Thrift type {other} at byte {}",
                self.at
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Field 1 (an i32 of 3), field 2 a list of two structs each with a string, stop.
    const GOOD: &[u8] = &[
        0x15, 0x06, // field 1, i32, zigzag 3
        0x19, 0x2c, // field 2, list of 2 structs
        0x18, 0x01, b'a', 0x00, // struct: field 1 binary "a", stop
        0x18, 0x01, b'b', 0x00, // struct: field 1 binary "b", stop
        0x11, // field 3, boolean true (in the type)
        0x00, // stop
    ];

    #[test]
    fn a_whole_structure_is_read_to_its_end() {
        assert_eq!(skim(GOOD).unwrap(), GOOD.len());
    }

    #[test]
    fn a_length_beyond_the_bytes_left_is_refused_before_anything_is_reserved() {
        // Field 4, a list of structs whose length (2^31 - 1) is given in full.
        let e = skim(&[0x49, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00]).unwrap_err();
        assert!(e.contains("list of 2147483647 elements"), "{e}");
        let e = skim(&[0x18, 0xff, 0xff, 0x03, b'x', 0x00]).unwrap_err();
        assert!(e.contains("claims 65535 bytes"), "{e}");
        let e = skim(&[0x1b, 0x80, 0x80, 0x04, 0x00]).unwrap_err();
        assert!(e.contains("map of 65536 elements"), "{e}");
    }

    /// Lengths are read as polars reads them: cut to an `i32`, and a negative one is an
    /// empty list (2^32 - 1 is -1), so the walk goes on where polars' does.
    #[test]
    fn a_length_is_read_as_polars_reads_it() {
        let bytes = [0x49, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert_eq!(skim(&bytes).unwrap(), bytes.len());
        // A varint of more than ten bytes wraps, as polars' does.
        let mut long = vec![0x15];
        long.extend([0x80; 12]);
        long.extend([0x01, 0x00]);
        assert_eq!(skim(&long).unwrap(), long.len());
    }

    #[test]
    fn a_truncated_or_too_deep_structure_is_refused() {
        for n in 0..GOOD.len() {
            assert!(skim(&GOOD[..n]).is_err(), "{n} bytes");
        }
        let deep = vec![0x1c; 1_000];
        assert!(skim(&deep).unwrap_err().contains("nests deeper"));
        // A field that is a list of one list of one list …: each level a byte, each a
        // frame of the walk (unchecked, 100,000 of them overflowed the stack).
        let lists = vec![0x19; 100_000];
        assert!(skim(&lists).unwrap_err().contains("nests deeper"));
        // … and maps of maps.
        let mut maps = Vec::new();
        for _ in 0..100_000 {
            maps.extend([0x01, 0xbb]);
        }
        let mut field = vec![0x1b];
        field.extend(maps);
        assert!(skim(&field).unwrap_err().contains("nests deeper"));
    }

    proptest::proptest! {
        /// Whatever the bytes, the walk ends with an answer: no panic, no reservation.
        #[test]
        fn any_bytes_are_an_answer_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = skim(&bytes);
        }

        /// Damage to a whole footer is found or harmless: a walk that accepts it took
        /// exactly the bytes of one struct - the same answer from those bytes alone (it
        /// never looked past them), and a refusal from any fewer (it needed every one).
        #[test]
        fn damage_is_found_or_walked_exactly(at in 0usize..64, mask in 1u8..=255) {
            let mut bytes = GOOD.to_vec();
            let i = at % bytes.len();
            bytes[i] ^= mask;
            if let Ok(n) = skim(&bytes) {
                proptest::prop_assert!(n <= bytes.len());
                proptest::prop_assert_eq!(skim(&bytes[..n]), Ok(n));
                proptest::prop_assert!(skim(&bytes[..n - 1]).is_err());
            }
        }
    }
}
