//! A worker log with a size cap: the first [`HEAD_BYTES`] go to the file as they come, the last
//! [`TAIL_BYTES`] are held and written when the log closes, behind one line that says how much
//! was cut between them. A worker (or a program it runs) that prints without end cannot fill
//! the disk, and the end of the log, where a failure's cause is, is kept.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;

/// Bytes kept from the start of a log.
pub const HEAD_BYTES: u64 = 8 << 20;
/// Bytes kept from the end of a log.
pub const TAIL_BYTES: usize = 8 << 20;

pub struct CappedLog {
    file: File,
    written: u64,
    head: u64,
    tail: VecDeque<u8>,
    tail_cap: usize,
    cut: u64,
}

impl CappedLog {
    pub fn new(file: File) -> CappedLog {
        CappedLog::with_caps(file, HEAD_BYTES, TAIL_BYTES)
    }

    pub fn with_caps(file: File, head: u64, tail_cap: usize) -> CappedLog {
        CappedLog {
            file,
            written: 0,
            head,
            tail: VecDeque::new(),
            tail_cap,
            cut: 0,
        }
    }

    /// Writes what is held: the note on what was cut, then the tail.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.cut > 0 {
            writeln!(
                self.file,
                "\n[tagbench] log cap: {} bytes cut here (the first {} and the last {} bytes of the worker's output are kept)",
                self.cut, self.head, self.tail_cap
            )?;
        }
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        self.tail.clear();
        self.cut = 0;
        self.file.flush()
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.head.saturating_sub(self.written).min(buf.len() as u64) as usize;
        if room > 0 {
            self.file.write_all(&buf[..room])?;
            self.written += room as u64;
        }
        let rest = &buf[room..];
        self.tail.extend(rest);
        if self.tail.len() > self.tail_cap {
            let over = self.tail.len() - self.tail_cap;
            self.tail.drain(..over);
            self.cut += over as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for CappedLog {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_head_and_the_tail_and_says_what_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        {
            let mut log = CappedLog::with_caps(File::create(&path).unwrap(), 10, 5);
            for i in 0..10 {
                write!(log, "{i}{i}{i}").unwrap();
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "0001112223\n[tagbench] log cap: 15 bytes cut here (the first 10 and the last 5 bytes of the worker's output are kept)\n88999"
        );
        {
            let mut log = CappedLog::with_caps(File::create(&path).unwrap(), 10, 5);
            write!(log, "short").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short");
    }
}
