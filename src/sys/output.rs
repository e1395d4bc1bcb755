//! stdout and stderr that a closed pipe cannot crash. `print!` panics when the reader went away
//! (`tagbench compare … | head -1`: EPIPE, exit 101); here a closed pipe is the end of that
//! output, and the command still ends with its own exit code. Other write errors on stdout
//! (a full disk behind a redirect) are returned; stderr errors are dropped, as there is nowhere
//! left to say them.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout's reader has gone: nothing more is written there.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// Set once stderr's reader has gone.
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes to `w` unless `closed`; a broken pipe sets `closed` and counts as written.
fn write_or_close(closed: &AtomicBool, w: &mut dyn Write, args: fmt::Arguments) -> std::io::Result<()> {
    if closed.load(Ordering::Relaxed) {
        return Ok(());
    }
    match w.write_fmt(args).and_then(|_| w.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            closed.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

/// Writes to stdout; a closed pipe ends the output quietly, any other error is returned.
pub fn stdout(args: fmt::Arguments) -> std::io::Result<()> {
    write_or_close(&STDOUT_CLOSED, &mut std::io::stdout().lock(), args)
}

/// Writes to stderr; errors are dropped (a closed pipe ends the output).
pub fn stderr(args: fmt::Arguments) {
    let _ = write_or_close(&STDERR_CLOSED, &mut std::io::stderr().lock(), args);
}

/// `print!` that a closed pipe cannot crash: `out!("{x}")?` (an `std::io::Result`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::sys::output::stdout(format_args!($($arg)*)) };
}

/// `println!` that a closed pipe cannot crash: `outln!("{x}")?` (an `std::io::Result`).
#[macro_export]
macro_rules! outln {
    () => { $crate::sys::output::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::sys::output::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that a closed pipe cannot crash.
#[macro_export]
macro_rules! errln {
    () => { $crate::sys::output::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::sys::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that has gone away.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A disk that is full.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(ErrorKind::WriteZero))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_and_other_errors_are_returned() {
        let closed = AtomicBool::new(false);
        assert!(write_or_close(&closed, &mut Closed, format_args!("a")).is_ok());
        assert!(closed.load(Ordering::Relaxed));
        // Nothing more is tried once closed.
        assert!(write_or_close(&closed, &mut Full, format_args!("b")).is_ok());
        let open = AtomicBool::new(false);
        let e = write_or_close(&open, &mut Full, format_args!("c")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WriteZero);
        let mut buf = Vec::new();
        write_or_close(&open, &mut buf, format_args!("d{}", 1)).unwrap();
        assert_eq!(buf, b"d1");
    }
}
