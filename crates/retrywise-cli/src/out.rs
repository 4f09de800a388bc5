//! Standard output that ends quietly when its reader has gone (`… | head`): `println!`
//! would panic on the broken pipe. The process then exits as one killed by SIGPIPE would
//! (status 141), never 0: a check whose verdict was not yet printed must not pass for one
//! that held (`eval --check | head` under `set -o pipefail`).

use std::io::Write;

/// Writes `args` to standard output; exits with status 141 (128 + SIGPIPE, as a shell
/// reports a process the closed pipe killed) when the pipe is closed, or 1 with a message
/// on any other write error.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}
