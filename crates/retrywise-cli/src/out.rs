//! Standard output that ends quietly when its reader has gone (`… | head`): `println!`
//! would panic on the broken pipe. The process then exits as one killed by SIGPIPE would
//! (status 141), never 0: a check whose verdict was not yet printed must not pass for one
//! that held (`eval --check | head` under `set -o pipefail`). And standard error that
//! never panics when it is closed (`errln!`).
//!
//! One file for both binaries: `retrywise-sim` includes it by path.

use std::io::Write;

/// Writes `args` to standard error, ignoring a closed or failing one (`2>&1 | head`):
/// progress and messages are lost then, never the work (`eprintln!` would panic before a
/// model or a report is written); the exit status still tells how the command ended.
pub(crate) fn note(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// `eprint!` that never panics on a closed standard error.
#[allow(unused_macros)]
macro_rules! errout {
    ($($arg:tt)*) => { $crate::out::note(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics on a closed standard error.
macro_rules! errln {
    () => { $crate::out::note(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::note(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes `args` to standard output; exits with status 141 (128 + SIGPIPE, as a shell
/// reports a process the closed pipe killed) when the pipe is closed, or 1 with a message
/// on any other write error.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        errln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that ends quietly on a closed pipe.
#[allow(unused_macros)]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}
