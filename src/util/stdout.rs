//! Standard output that does not panic when it goes away.
//!
//! `println!` panics ("failed printing to stdout") when stdout is a closed
//! pipe (`ferrotron info | head -1`) or a full disk. Here a closed pipe ends
//! the process quietly with status 141 (128 + SIGPIPE, what a shell shows
//! for a Unix tool killed by SIGPIPE, so `set -o pipefail` still sees it),
//! and any other write error (e.g. ENOSPC) is an ordinary error: a message
//! on stderr and a non-zero exit.

use anyhow::{anyhow, Result};
use std::io::{ErrorKind, Write};

/// Exit status after stdout's reader went away.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Write `text` to stdout and flush it.
pub fn write(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(BROKEN_PIPE_EXIT),
        Err(e) => Err(anyhow!("cannot write to standard output: {e}")),
    }
}

/// `println!` that returns a `Result` instead of panicking (see [`write`]).
#[macro_export]
macro_rules! outln {
    () => { $crate::util::stdout::write("\n") };
    ($($arg:tt)*) => { $crate::util::stdout::write(&format!("{}\n", format_args!($($arg)*))) };
}

/// `print!` counterpart of [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::util::stdout::write(&format!($($arg)*)) };
}
