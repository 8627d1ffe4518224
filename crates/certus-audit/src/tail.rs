//! Follows an audit file: complete lines only, across rotation and truncation, resuming
//! from a [`Checkpoint`].
//!
//! [`FileTailer`] is synchronous and does no waiting: each [`FileTailer::poll`] reads what
//! is there, hands every complete line to a callback and returns. The async runner
//! ([`crate::pipeline::run_file_source`]) calls it from a blocking task on an interval.
//!
//! - **Partial lines** (no newline yet) are kept until their newline arrives; they are
//!   never parsed early. Lines longer than [`TailOptions::max_line_bytes`] are skipped
//!   (counted as `oversized_line`) so memory stays bounded.
//! - **Rotation** (rename + new file, as logrotate `create` or Vault after `SIGHUP`): when
//!   the path names another inode, the old file is read to its end, and read again until
//!   [`TailOptions::rotation_grace`] has passed (Vault keeps writing to the old file until
//!   it reopens); then its last unterminated line, if any, is processed and the new file
//!   is read from its start.
//! - **Truncation** (`copytruncate`): when the file is shorter than the read position, or
//!   its first line changed, reading restarts at offset 0. Lines written between the last
//!   read and the truncation are lost — inherent to copytruncate; prefer `create`.
//! - **Resume**: a checkpoint whose inode and prefix hash match the file at the path
//!   continues at its offset. When the path now holds another file (rotated while the
//!   reader was down), the directory is searched for the checkpointed inode: that file is
//!   finished from the offset first, then the new one is read from the start. When the
//!   old file is gone, the new file is read from its start (`checkpoint_lost`).
//! - **First start** without a checkpoint begins at [`TailOptions::start_at`]: `End`
//!   (default: no alert storm over history) or `Beginning`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, PREFIX_MAX};

/// Where a reader without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// At the file's end: only new entries.
    #[default]
    End,
    /// At the file's beginning: the whole file.
    Beginning,
}

/// Tailer settings.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Start position without a checkpoint.
    pub start_at: StartAt,
    /// How long a rotated file keeps being read after the rotation was noticed.
    pub rotation_grace: Duration,
    /// Longest line accepted; longer ones are skipped.
    pub max_line_bytes: usize,
    /// Read buffer size.
    pub read_chunk: usize,
    /// Most bytes read per [`FileTailer::poll`] (so checkpoints and shutdown get a turn).
    pub max_bytes_per_poll: u64,
}

impl Default for TailOptions {
    fn default() -> Self {
        TailOptions {
            start_at: StartAt::End,
            rotation_grace: Duration::from_secs(2),
            max_line_bytes: 4 << 20,
            read_chunk: 256 << 10,
            max_bytes_per_poll: 8 << 20,
        }
    }
}

/// Something that happened to the followed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEvent {
    /// Opened a file without a checkpoint.
    Opened,
    /// Resumed the checkpointed file at its offset.
    Resumed,
    /// The checkpointed file had been rotated away; resumed it under its new name.
    ResumedRotated,
    /// The checkpointed file is gone; started the current file from the beginning.
    CheckpointLost,
    /// Finished a rotated file and switched to the new one.
    Rotated,
    /// The file shrank below the read position; restarted at 0.
    Truncated,
    /// The file's first line changed; restarted at 0.
    Replaced,
    /// A line longer than the limit was skipped.
    OversizedLine,
}

impl TailEvent {
    /// Every event.
    pub const ALL: [TailEvent; 8] = [
        TailEvent::Opened,
        TailEvent::Resumed,
        TailEvent::ResumedRotated,
        TailEvent::CheckpointLost,
        TailEvent::Rotated,
        TailEvent::Truncated,
        TailEvent::Replaced,
        TailEvent::OversizedLine,
    ];

    /// snake_case name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            TailEvent::Opened => "opened",
            TailEvent::Resumed => "resumed",
            TailEvent::ResumedRotated => "resumed_rotated",
            TailEvent::CheckpointLost => "checkpoint_lost",
            TailEvent::Rotated => "rotated",
            TailEvent::Truncated => "truncated",
            TailEvent::Replaced => "replaced",
            TailEvent::OversizedLine => "oversized_line",
        }
    }
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollResult {
    /// Complete lines handed to the callback.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// File events.
    pub events: Vec<TailEvent>,
    /// The byte budget ran out with data left: poll again without waiting.
    pub more: bool,
}

struct Cursor {
    file: File,
    dev: u64,
    ino: u64,
    /// Offset right after the last complete line (the checkpoint offset).
    line_start: u64,
    /// Offset of the next read.
    read_pos: u64,
    partial: Vec<u8>,
    discarding: bool,
    prefix: Option<(u64, [u8; 32])>,
}

impl Cursor {
    fn open(path: &Path, pos: u64) -> io::Result<Cursor> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        file.seek(SeekFrom::Start(pos))?;
        Ok(Cursor {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            line_start: pos,
            read_pos: pos,
            partial: Vec::new(),
            discarding: false,
            prefix: None,
        })
    }

    fn restart(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.line_start = 0;
        self.read_pos = 0;
        self.partial.clear();
        self.discarding = false;
        self.prefix = None;
        Ok(())
    }

    /// Computes the identity prefix once the first line (or PREFIX_MAX bytes) exists.
    fn ensure_prefix(&mut self) -> io::Result<()> {
        if self.prefix.is_none() {
            self.prefix = file_prefix(&self.file)?;
        }
        Ok(())
    }
}

/// `(len, sha256)` of the first line (or first PREFIX_MAX bytes), if complete.
fn file_prefix(file: &File) -> io::Result<Option<(u64, [u8; 32])>> {
    let mut buf = vec![0u8; PREFIX_MAX];
    let n = read_full_at(file, &mut buf, 0)?;
    let len = match memchr::memchr(b'\n', &buf[..n]) {
        Some(i) => i + 1,
        None if n == PREFIX_MAX => n,
        None => return Ok(None),
    };
    Ok(Some((len as u64, Sha256::digest(&buf[..len]).into())))
}

fn hash_at_start(file: &File, len: u64) -> io::Result<Option<[u8; 32]>> {
    let mut buf = vec![0u8; len as usize];
    let n = read_full_at(file, &mut buf, 0)?;
    if n < buf.len() {
        return Ok(None);
    }
    Ok(Some(Sha256::digest(&buf).into()))
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn prefix_matches(file: &File, cp: &Checkpoint) -> io::Result<bool> {
    if cp.prefix_len == 0 {
        return Ok(true);
    }
    if cp.prefix_len > PREFIX_MAX as u64 {
        return Ok(false);
    }
    Ok(hash_at_start(file, cp.prefix_len)?.is_some_and(|h| hex::encode(h) == cp.prefix_hash))
}

/// Follows one audit file. See the module documentation.
pub struct FileTailer {
    path: PathBuf,
    opts: TailOptions,
    cur: Option<Cursor>,
    resume: Option<Checkpoint>,
    started: bool,
    rotated_since: Option<Instant>,
    chunk: Vec<u8>,
}

impl std::fmt::Debug for FileTailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTailer")
            .field("path", &self.path)
            .field("offset", &self.cur.as_ref().map(|c| c.line_start))
            .finish()
    }
}

enum Check {
    Same,
    Switched,
    Waiting,
}

impl FileTailer {
    /// A tailer for `path`, resuming from `checkpoint` when given.
    pub fn new(
        path: impl Into<PathBuf>,
        opts: TailOptions,
        checkpoint: Option<Checkpoint>,
    ) -> Self {
        let chunk = vec![0u8; opts.read_chunk.max(4096)];
        FileTailer {
            path: path.into(),
            opts,
            cur: None,
            resume: checkpoint,
            started: false,
            rotated_since: None,
            chunk,
        }
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The position after the last complete line handed out, with the file's identity.
    /// `None` before a file was opened (then the previous checkpoint still holds).
    pub fn checkpoint(&mut self) -> Option<Checkpoint> {
        let path = self.path.display().to_string();
        let Some(cur) = self.cur.as_mut() else {
            return self.resume.clone();
        };
        // The prefix is informational until the first line is complete.
        let _ = cur.ensure_prefix();
        let (prefix_len, prefix_hash) = match cur.prefix {
            Some((l, h)) => (l, hex::encode(h)),
            None => (0, String::new()),
        };
        Some(Checkpoint {
            path,
            dev: cur.dev,
            inode: cur.ino,
            offset: cur.line_start,
            prefix_len,
            prefix_hash,
        })
    }

    /// Reads what is available and calls `on_line` with each complete line (without its
    /// newline). Never blocks waiting for data.
    pub fn poll(&mut self, on_line: &mut dyn FnMut(&[u8])) -> io::Result<PollResult> {
        let mut res = PollResult::default();
        if self.cur.is_none() {
            self.open(&mut res)?;
            if self.cur.is_none() {
                return Ok(res);
            }
        }
        // Bounded: each turn either reads data, or changes file once.
        for _ in 0..8 {
            self.check_replaced(&mut res)?;
            self.read_available(on_line, &mut res)?;
            if res.bytes >= self.opts.max_bytes_per_poll {
                res.more = true;
                return Ok(res);
            }
            match self.check_rotation(on_line, &mut res)? {
                Check::Same | Check::Waiting => return Ok(res),
                Check::Switched => {}
            }
        }
        res.more = true;
        Ok(res)
    }

    fn open(&mut self, res: &mut PollResult) -> io::Result<()> {
        if let Some(cp) = self.resume.take() {
            self.started = true;
            match std::fs::metadata(&self.path) {
                Ok(m) if m.dev() == cp.dev && m.ino() == cp.inode => {
                    let mut cur = Cursor::open(&self.path, 0)?;
                    let len = cur.file.metadata()?.len();
                    if prefix_matches(&cur.file, &cp)? && len >= cp.offset {
                        cur.file.seek(SeekFrom::Start(cp.offset))?;
                        cur.line_start = cp.offset;
                        cur.read_pos = cp.offset;
                        res.events.push(TailEvent::Resumed);
                    } else {
                        res.events.push(TailEvent::Replaced);
                    }
                    self.cur = Some(cur);
                    return Ok(());
                }
                _ => {}
            }
            if let Some(old) = find_inode(&self.path, cp.dev, cp.inode) {
                let mut cur = Cursor::open(&old, 0)?;
                let len = cur.file.metadata()?.len();
                if prefix_matches(&cur.file, &cp)? && len >= cp.offset {
                    cur.file.seek(SeekFrom::Start(cp.offset))?;
                    cur.line_start = cp.offset;
                    cur.read_pos = cp.offset;
                    // Rotated long ago: finish it now, then switch without a grace wait.
                    self.rotated_since = Instant::now().checked_sub(self.opts.rotation_grace);
                    res.events.push(TailEvent::ResumedRotated);
                    self.cur = Some(cur);
                    return Ok(());
                }
            }
            res.events.push(TailEvent::CheckpointLost);
            tracing::warn!(path = %self.path.display(), "the checkpointed audit file is gone; entries written to it after the checkpoint are not read");
            return self.open_fresh(0, res);
        }
        let at_end = !self.started && self.opts.start_at == StartAt::End;
        self.started = true;
        if at_end {
            self.open_fresh(u64::MAX, res)
        } else {
            self.open_fresh(0, res)
        }
    }

    /// Opens the path at `pos` (`u64::MAX`: at the end, skipping a partial last line).
    fn open_fresh(&mut self, pos: u64, res: &mut PollResult) -> io::Result<()> {
        let mut cur = match Cursor::open(&self.path, 0) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if pos == u64::MAX {
            let len = cur.file.metadata()?.len();
            if len > 0 {
                let mut last = [0u8; 1];
                cur.file.read_exact_at(&mut last, len - 1)?;
                cur.discarding = last[0] != b'\n';
            }
            cur.file.seek(SeekFrom::Start(len))?;
            // A partial last line is skipped: the checkpoint stays after it only once
            // its newline has been read.
            cur.line_start = len;
            cur.read_pos = len;
        }
        res.events.push(TailEvent::Opened);
        self.cur = Some(cur);
        Ok(())
    }

    fn read_available(
        &mut self,
        on_line: &mut dyn FnMut(&[u8]),
        res: &mut PollResult,
    ) -> io::Result<()> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(());
        };
        let chunk = &mut self.chunk;
        let max_line = self.opts.max_line_bytes;
        while res.bytes < self.opts.max_bytes_per_poll {
            let n = match cur.file.read(chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let base = cur.read_pos;
            cur.read_pos += n as u64;
            res.bytes += n as u64;
            let data = &chunk[..n];
            let mut start = 0;
            for i in memchr::memchr_iter(b'\n', data) {
                if cur.discarding {
                    cur.discarding = false;
                    cur.partial.clear();
                } else if cur.partial.is_empty() {
                    on_line(&data[start..i]);
                    res.lines += 1;
                } else {
                    cur.partial.extend_from_slice(&data[start..i]);
                    on_line(&cur.partial);
                    cur.partial.clear();
                    res.lines += 1;
                }
                start = i + 1;
                cur.line_start = base + start as u64;
            }
            if !cur.discarding && start < n {
                cur.partial.extend_from_slice(&data[start..]);
                if cur.partial.len() > max_line {
                    cur.partial = Vec::new();
                    cur.discarding = true;
                    res.events.push(TailEvent::OversizedLine);
                }
            }
        }
        Ok(())
    }

    /// Truncated (shorter than the read position) or rewritten (first line changed):
    /// restart at 0. Checked before every read, so a rewrite is noticed before reading
    /// from a stale offset.
    fn check_replaced(&mut self, res: &mut PollResult) -> io::Result<()> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(());
        };
        let len = cur.file.metadata()?.len();
        if len < cur.read_pos {
            cur.restart()?;
            res.events.push(TailEvent::Truncated);
            return Ok(());
        }
        if let Some((plen, hash)) = cur.prefix {
            if len >= plen && hash_at_start(&cur.file, plen)? != Some(hash) {
                cur.restart()?;
                res.events.push(TailEvent::Replaced);
            }
        }
        Ok(())
    }

    fn check_rotation(
        &mut self,
        on_line: &mut dyn FnMut(&[u8]),
        res: &mut PollResult,
    ) -> io::Result<Check> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(Check::Same);
        };
        cur.ensure_prefix()?;
        let current = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current == Some((cur.dev, cur.ino)) {
            self.rotated_since = None;
            return Ok(Check::Same);
        }
        let since = *self.rotated_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.opts.rotation_grace || current.is_none() {
            // Keep reading the old file; the new one does not exist yet or Vault may
            // still be writing to the old one.
            return Ok(Check::Waiting);
        }
        let next = match Cursor::open(&self.path, 0) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Check::Waiting),
            Err(e) => return Err(e),
        };
        // The old file is finished: an unterminated last line is complete now.
        if !cur.partial.is_empty() && !cur.discarding {
            on_line(&cur.partial);
            res.lines += 1;
        }
        self.cur = Some(next);
        self.rotated_since = None;
        res.events.push(TailEvent::Rotated);
        Ok(Check::Switched)
    }
}

/// Finds a file in `path`'s directory with the given device and inode.
fn find_inode(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let m = e.metadata().ok()?;
        (m.is_file() && m.dev() == dev && m.ino() == ino).then(|| e.path())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn opts() -> TailOptions {
        TailOptions {
            start_at: StartAt::Beginning,
            rotation_grace: Duration::ZERO,
            ..Default::default()
        }
    }

    fn append(path: &Path, s: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    fn poll(t: &mut FileTailer) -> (Vec<String>, PollResult) {
        let mut lines = vec![];
        let r = t
            .poll(&mut |l| lines.push(String::from_utf8(l.to_vec()).unwrap()))
            .unwrap();
        (lines, r)
    }

    #[test]
    fn follows_appends_and_waits_for_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let mut t = FileTailer::new(&p, opts(), None);
        assert_eq!(poll(&mut t).0, Vec::<String>::new(), "no file yet");
        append(&p, "a\nb\n");
        assert_eq!(poll(&mut t).0, ["a", "b"]);
        append(&p, "{\"par");
        assert_eq!(poll(&mut t).0, Vec::<String>::new(), "partial line waits");
        assert_eq!(
            t.checkpoint().unwrap().offset,
            4,
            "checkpoint stays before it"
        );
        append(&p, "tial\":1}\nc");
        assert_eq!(poll(&mut t).0, ["{\"partial\":1}"]);
        append(&p, "\n");
        assert_eq!(poll(&mut t).0, ["c"]);
        assert_eq!(
            t.checkpoint().unwrap().offset,
            std::fs::metadata(&p).unwrap().len()
        );
    }

    #[test]
    fn start_at_end_skips_history_and_a_partial_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "old1\nold2\nhalf");
        let mut t = FileTailer::new(
            &p,
            TailOptions {
                start_at: StartAt::End,
                ..opts()
            },
            None,
        );
        assert!(poll(&mut t).0.is_empty());
        append(&p, "-line\nnew\n");
        assert_eq!(poll(&mut t).0, ["new"]);
    }

    #[test]
    fn rotation_finishes_the_old_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "1\n2\n");
        let mut t = FileTailer::new(&p, opts(), None);
        assert_eq!(poll(&mut t).0, ["1", "2"]);
        // Vault writes a bit more, then the file is renamed and a new one created;
        // a last line is still written to the old file (through Vault's open handle).
        append(&p, "3\n");
        std::fs::rename(&p, dir.path().join("audit.log.1")).unwrap();
        append(&dir.path().join("audit.log.1"), "4\n");
        append(&p, "5\n6\n");
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["3", "4", "5", "6"]);
        assert!(r.events.contains(&TailEvent::Rotated));
        assert_eq!(poll(&mut t).0, Vec::<String>::new());
    }

    #[test]
    fn rotation_waits_for_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "1\n");
        let mut t = FileTailer::new(
            &p,
            TailOptions {
                rotation_grace: Duration::from_millis(300),
                ..opts()
            },
            None,
        );
        assert_eq!(poll(&mut t).0, ["1"]);
        std::fs::rename(&p, dir.path().join("audit.log.1")).unwrap();
        append(&p, "new\n");
        assert!(poll(&mut t).0.is_empty(), "still on the old file");
        append(&dir.path().join("audit.log.1"), "late\n");
        assert_eq!(poll(&mut t).0, ["late"]);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(poll(&mut t).0, ["new"]);
    }

    #[test]
    fn truncation_restarts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "aaaa\nbbbb\n");
        let mut t = FileTailer::new(&p, opts(), None);
        assert_eq!(poll(&mut t).0.len(), 2);
        // copytruncate: same inode, emptied, then new lines.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&p, "c\n");
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["c"]);
        assert!(r.events.contains(&TailEvent::Truncated), "{r:?}");
    }

    #[test]
    fn rewritten_file_of_the_same_size_is_detected_by_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "first-a\n");
        let mut t = FileTailer::new(&p, opts(), None);
        assert_eq!(poll(&mut t).0, ["first-a"]); // prefix recorded at EOF
                                                 // Truncated and rewritten beyond the old offset between two polls.
        std::fs::write(&p, "first-b\nsecond\n").unwrap();
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["first-b", "second"]);
        assert!(r.events.contains(&TailEvent::Replaced), "{r:?}");
    }

    #[test]
    fn resume_from_checkpoint_neither_repeats_nor_skips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "1\n2\n3");
        let mut t = FileTailer::new(&p, opts(), None);
        assert_eq!(poll(&mut t).0, ["1", "2"]);
        let cp = t.checkpoint().unwrap();
        drop(t);
        append(&p, "\n4\n");
        let mut t = FileTailer::new(
            &p,
            TailOptions {
                start_at: StartAt::End,
                ..opts()
            },
            Some(cp),
        );
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["3", "4"]);
        assert_eq!(r.events, [TailEvent::Resumed]);
    }

    #[test]
    fn resume_after_rotation_while_down_finishes_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "1\n2\n");
        let mut t = FileTailer::new(&p, opts(), None);
        assert_eq!(poll(&mut t).0, ["1", "2"]);
        let cp = t.checkpoint().unwrap();
        drop(t);
        append(&p, "3\n");
        std::fs::rename(&p, dir.path().join("audit.log.1")).unwrap();
        append(&p, "4\n");
        let mut t = FileTailer::new(&p, opts(), Some(cp.clone()));
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["3", "4"]);
        assert_eq!(r.events, [TailEvent::ResumedRotated, TailEvent::Rotated]);
        // And when the old file is gone too: the new file is read from the start.
        std::fs::remove_file(dir.path().join("audit.log.1")).unwrap();
        let mut t = FileTailer::new(&p, opts(), Some(cp));
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["4"]);
        assert_eq!(r.events, [TailEvent::CheckpointLost, TailEvent::Opened]);
    }

    #[test]
    fn resume_detects_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, "one\ntwo\n");
        let mut t = FileTailer::new(&p, opts(), None);
        poll(&mut t);
        let mut cp = t.checkpoint().unwrap();
        assert_eq!(cp.prefix_len, 4);
        // Same inode (rewritten in place), different first line.
        std::fs::write(&p, "uno\ndos\ntres\n").unwrap();
        cp.offset = 4;
        let mut t = FileTailer::new(&p, opts(), Some(cp));
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["uno", "dos", "tres"]);
        assert_eq!(r.events, [TailEvent::Replaced]);
    }

    #[test]
    fn oversized_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let mut t = FileTailer::new(
            &p,
            TailOptions {
                max_line_bytes: 10,
                read_chunk: 4096,
                ..opts()
            },
            None,
        );
        append(&p, &format!("ok\n{}\nok2\n", "x".repeat(10_000)));
        let (lines, r) = poll(&mut t);
        assert_eq!(lines, ["ok", "ok2"]);
        assert_eq!(r.events, [TailEvent::Opened, TailEvent::OversizedLine]);
    }

    #[test]
    fn byte_budget_splits_large_backlogs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        append(&p, &"0123456789\n".repeat(1000));
        let mut t = FileTailer::new(
            &p,
            TailOptions {
                max_bytes_per_poll: 4096,
                read_chunk: 4096,
                ..opts()
            },
            None,
        );
        let mut total = 0;
        let mut polls = 0;
        loop {
            let (lines, r) = poll(&mut t);
            total += lines.len();
            polls += 1;
            if !r.more {
                break;
            }
        }
        assert_eq!(total, 1000);
        assert!(polls >= 3);
    }
}
