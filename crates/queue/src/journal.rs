//! The commit journal: what makes an append durable, in one file-system block per commit.
//!
//! SQLite keeps the queue, but a SQLite commit rewrites every b-tree page it touched (a table
//! leaf, two index leaves, the sequence, then again at checkpoints): about 15 KiB per small
//! commit on the device, 1.5 KB per message at 100 msgs/s, which wears out an SD card. So the
//! writer keeps one SQLite transaction open between *folds* (every few seconds): rows are
//! inserted and deleted in it, in SQLite's page cache, and what makes each group commit
//! durable before its producers are answered is this journal instead: the round's messages
//! (with their ids) and the ids deleted since the last commit, appended in whole blocks and
//! synced with `fdatasync`. A fold commits SQLite (one fsync for seconds of messages; a message
//! delivered before it never reaches the database file) and then starts the journal over.
//!
//! # Layout
//! Block 0 is the header: magic, version, the generation (raised at every reset), CRC. From
//! offset 4096 on, commits, each starting on a block boundary and padded to one: magic, the
//! generation, its sequence number in the generation, the body's length, a CRC-32C over all
//! of that and the body. Recovery reads commits in order and stops at the first that is not
//! the next of this generation with a good CRC: a commit torn by a power cut was never
//! acknowledged, and the stale commits of earlier generations behind it are never read as new.
//! Whole blocks mean an append never rewrites a block holding an acknowledged commit.
//!
//! The file is given its working size in zeros when it is made and reused from its start at
//! every reset, so a commit never grows it: `fdatasync` then writes the data block only, with
//! no file-system journal commit for a new size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::OutboxEntry;
use fieldlink_core::topic::TopicName;

/// The journal's file name in the data directory, beside the database.
pub const JOURNAL_FILE: &str = "queue.journal";
/// File-system block: commits start on one and fill whole ones.
const BLOCK: u64 = 4096;
/// The file's working size: at 1000 msgs/s of sensor readings the commits of a fold interval
/// fill about 600 KiB. A commit that does not fit asks for a fold first, which also bounds
/// what one fold writes to SQLite's WAL (within the WAL's own working size).
pub const WORKING_SIZE: u64 = 1 << 20;
const HEADER_MAGIC: &[u8; 4] = b"FLJH";
const COMMIT_MAGIC: &[u8; 4] = b"FLJC";
const VERSION: u32 = 1;
/// magic, generation, sequence, body length, CRC.
const COMMIT_HEAD: usize = 4 + 8 + 4 + 4 + 4;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Opens the journal file at `path` (made if absent) and takes the lock that makes this
/// process its only writer; `None` when another process holds it.
pub(crate) fn lock(path: &Path) -> io::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// One commit: messages appended (with the ids SQLite gave them) and ids deleted.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Commit {
    pub(crate) enqueued_ms: i64,
    pub(crate) queue_ms: i64,
    pub(crate) messages: Vec<(i64, OutboxEntry)>,
    /// Ranges of ids (first, last), every id in them deleted.
    pub(crate) removed: Vec<(i64, i64)>,
}

/// The open journal.
pub(crate) struct Journal {
    path: PathBuf,
    file: Arc<File>,
    generation: u64,
    /// The next commit's sequence number and offset.
    seq: u32,
    offset: u64,
    /// Whether commits are synced (power-safe) or left to the kernel (process-crash only).
    sync: bool,
    /// Reused between commits.
    buffer: Vec<u8>,
    /// A reset was asked for and has not been written: no commit may follow the old
    /// generation's, whose commits the database now holds (a replay would skip them).
    reset_owed: bool,
}

/// What the journal held at open: its generation and the commits since its last reset.
pub(crate) struct Found {
    pub(crate) generation: u64,
    pub(crate) commits: Vec<Commit>,
}

impl Journal {
    /// Opens the journal at `path`, made (with its working size when `prefill`) if absent,
    /// and reads back what it holds. `file` is `path` opened and locked by [`lock`].
    pub(crate) fn open(
        file: File,
        path: &Path,
        sync: bool,
        prefill: bool,
    ) -> io::Result<(Self, Found)> {
        // New, or made empty by the caller (which creates it private first).
        let fresh = file.metadata()?.len() == 0;
        let mut journal = Self {
            path: path.to_owned(),
            file: Arc::new(file),
            generation: 0,
            seq: 0,
            offset: BLOCK,
            sync,
            buffer: Vec::new(),
            reset_owed: false,
        };
        if fresh {
            if prefill {
                journal
                    .file
                    .write_all_at(&vec![0; WORKING_SIZE as usize], 0)?;
            }
            journal.write_header(1)?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            let found = Found {
                generation: 1,
                commits: Vec::new(),
            };
            return Ok((journal, found));
        }
        let found = journal.read()?;
        journal.generation = found.generation;
        Ok((journal, found))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether commits have been written since the last reset.
    pub(crate) fn holds_commits(&self) -> bool {
        self.seq > 0
    }

    /// Whether a commit of about `bytes` fits before the working size.
    pub(crate) fn has_room_for(&self, bytes: u64) -> bool {
        self.offset + padded(bytes + COMMIT_HEAD as u64) <= WORKING_SIZE.max(BLOCK * 2)
    }

    /// Reads again what the journal holds (to rebuild a lost transaction from it).
    pub(crate) fn reread(&mut self) -> io::Result<Found> {
        self.seq = 0;
        self.offset = BLOCK;
        let found = self.read()?;
        self.generation = found.generation;
        Ok(found)
    }

    /// Reads the commits of the header's generation, in order, up to the first that is not
    /// whole.
    fn read(&mut self) -> io::Result<Found> {
        let mut header = [0u8; 20];
        let generation = match self.file.read_exact_at(&mut header, 0) {
            Ok(()) => parse_header(&header),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(e),
        };
        // A header that is not whole was being written at a reset, which follows a fold:
        // everything before it is in the database, and no commit follows it yet.
        // Its generation is not known, so the new one must be one no commit in the file has.
        let Some(generation) = generation else {
            let unused = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64);
            self.write_header(unused)?;
            return Ok(Found {
                generation: unused,
                commits: Vec::new(),
            });
        };
        let mut commits = Vec::new();
        let mut head = [0u8; COMMIT_HEAD];
        loop {
            match self.file.read_exact_at(&mut head, self.offset) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            if &head[0..4] != COMMIT_MAGIC
                || u64_at(&head, 4) != generation
                || u32_at(&head, 12) != self.seq
            {
                break;
            }
            let len = u64::from(u32_at(&head, 16));
            let mut body = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            if self
                .file
                .read_exact_at(&mut body, self.offset + COMMIT_HEAD as u64)
                .is_err()
            {
                break;
            }
            let mut digest = CRC.digest();
            digest.update(&head[4..20]);
            digest.update(&body);
            if digest.finalize() != u32_at(&head, 20) {
                break;
            }
            let Some(commit) = decode(&body) else {
                break;
            };
            commits.push(commit);
            self.seq += 1;
            self.offset += padded(COMMIT_HEAD as u64 + len);
        }
        Ok(Found {
            generation,
            commits,
        })
    }

    /// Appends `commit` and, when power-safe, syncs it: once this returns, it survives a
    /// power cut.
    pub(crate) async fn append(
        &mut self,
        enqueued_ms: i64,
        queue_ms: i64,
        messages: &[(i64, &OutboxEntry)],
        removed: &[(i64, i64)],
    ) -> io::Result<()> {
        if self.reset_owed {
            self.reset().await?;
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.extend_from_slice(COMMIT_MAGIC);
        buffer.extend_from_slice(&self.generation.to_le_bytes());
        buffer.extend_from_slice(&self.seq.to_le_bytes());
        buffer.extend_from_slice(&[0; 8]); // length and CRC, below
        encode(&mut buffer, enqueued_ms, queue_ms, messages, removed);
        let len = u32::try_from(buffer.len() - COMMIT_HEAD)
            .map_err(|_| io::Error::other("a journal commit over 4 GiB"))?;
        buffer[16..20].copy_from_slice(&len.to_le_bytes());
        let mut digest = CRC.digest();
        digest.update(&buffer[4..20]);
        digest.update(&buffer[COMMIT_HEAD..]);
        let crc = digest.finalize();
        buffer[20..24].copy_from_slice(&crc.to_le_bytes());
        let size = padded(buffer.len() as u64);
        buffer.resize(usize::try_from(size).unwrap_or(usize::MAX), 0);
        let (file, offset, sync) = (self.file.clone(), self.offset, self.sync);
        // The write and its sync block for as long as the card takes: off the runtime.
        let (result, buffer) = tokio::task::spawn_blocking(move || {
            let result = file
                .write_all_at(&buffer, offset)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
            (result, buffer)
        })
        .await
        .map_err(|e| io::Error::other(format!("journal write task: {e}")))?;
        self.buffer = buffer;
        result?;
        self.seq += 1;
        self.offset += size;
        Ok(())
    }

    /// Starts the journal over with the next generation: everything in it is in the database.
    pub(crate) async fn reset(&mut self) -> io::Result<()> {
        self.reset_owed = true;
        let next = self.generation + 1;
        let file = self.file.clone();
        let sync = self.sync;
        tokio::task::spawn_blocking(move || write_header_to(&file, next, sync))
            .await
            .map_err(|e| io::Error::other(format!("journal reset task: {e}")))??;
        self.generation = next;
        self.seq = 0;
        self.offset = BLOCK;
        self.reset_owed = false;
        Ok(())
    }

    fn write_header(&mut self, generation: u64) -> io::Result<()> {
        write_header_to(&self.file, generation, true)?;
        self.generation = generation;
        self.seq = 0;
        self.offset = BLOCK;
        Ok(())
    }
}

fn write_header_to(file: &File, generation: u64, sync: bool) -> io::Result<()> {
    let mut header = vec![0u8; BLOCK as usize];
    header[0..4].copy_from_slice(HEADER_MAGIC);
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = CRC.checksum(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&header, 0)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

fn parse_header(header: &[u8; 20]) -> Option<u64> {
    (&header[0..4] == HEADER_MAGIC
        && u32_at(header, 4) == VERSION
        && CRC.checksum(&header[0..16]) == u32_at(header, 16))
    .then(|| u64_at(header, 8))
}

/// `bytes` rounded up to whole blocks.
fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK) * BLOCK
}

/// What a commit of these costs in the journal, about (for [`Journal::has_room_for`]).
pub(crate) fn estimate(entries: usize, entry_bytes: u64, removed_ranges: usize) -> u64 {
    32 + entries as u64 * 32 + entry_bytes + removed_ranges as u64 * 16
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

/// The body: the times, the messages, the removed ranges.
fn encode(
    out: &mut Vec<u8>,
    enqueued_ms: i64,
    queue_ms: i64,
    messages: &[(i64, &OutboxEntry)],
    removed: &[(i64, i64)],
) {
    out.extend_from_slice(&enqueued_ms.to_le_bytes());
    out.extend_from_slice(&queue_ms.to_le_bytes());
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    for (id, entry) in messages {
        out.extend_from_slice(&id.to_le_bytes());
        out.push(entry.priority as u8);
        out.push(entry.message.qos as u8);
        out.push(u8::from(entry.message.retain));
        put_bytes(out, entry.stream.as_bytes());
        put_bytes(out, entry.message.topic.as_str().as_bytes());
        put_bytes(out, &entry.message.payload);
        match &entry.properties {
            Some(properties) => {
                out.push(1);
                put_bytes(out, properties);
            }
            None => out.push(0),
        }
    }
    out.extend_from_slice(&(removed.len() as u32).to_le_bytes());
    for (first, last) in removed {
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&last.to_le_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a body back; `None` for one that does not parse (never written by this code: the CRC
/// matched, so it is a newer release's).
fn decode(body: &[u8]) -> Option<Commit> {
    let mut r = Reader { bytes: body };
    let enqueued_ms = r.i64()?;
    let queue_ms = r.i64()?;
    let count = r.u32()?;
    let mut messages = Vec::with_capacity(count.min(65_536) as usize);
    for _ in 0..count {
        let id = r.i64()?;
        let priority = match r.u8()? {
            0 => Priority::Low,
            2 => Priority::High,
            _ => Priority::Normal,
        };
        let qos = QoS::from_u8(r.u8()?)?;
        let retain = r.u8()? != 0;
        let stream = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let topic = TopicName::new(String::from_utf8(r.bytes()?.to_vec()).ok()?).ok()?;
        let payload = r.bytes()?.to_vec();
        let properties = match r.u8()? {
            0 => None,
            _ => Some(r.bytes()?.to_vec()),
        };
        messages.push((
            id,
            OutboxEntry {
                stream,
                priority,
                message: Message {
                    topic,
                    payload,
                    qos,
                    retain,
                },
                properties,
            },
        ));
    }
    let ranges = r.u32()?;
    let mut removed = Vec::with_capacity(ranges.min(65_536) as usize);
    for _ in 0..ranges {
        removed.push((r.i64()?, r.i64()?));
    }
    Some(Commit {
        enqueued_ms,
        queue_ms,
        messages,
        removed,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32_at(b, 0))
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|b| u64_at(b, 0) as i64)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stream: &str, payload: &str) -> OutboxEntry {
        OutboxEntry {
            stream: stream.into(),
            priority: Priority::High,
            message: Message {
                topic: TopicName::new("site/a/temp".to_owned()).unwrap(),
                payload: payload.as_bytes().to_vec(),
                qos: QoS::AtLeastOnce,
                retain: true,
            },
            properties: Some(vec![0x26, 0, 1, b'k', 0, 1, b'v']),
        }
    }

    async fn open(path: &Path) -> (Journal, Found) {
        let file = lock(path).unwrap().expect("not locked by another");
        Journal::open(file, path, true, true).unwrap()
    }

    #[tokio::test]
    async fn a_second_opener_finds_the_journal_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let (journal, _) = open(&path).await;
        assert!(lock(&path).unwrap().is_none());
        drop(journal);
        assert!(lock(&path).unwrap().is_some());
    }

    #[tokio::test]
    async fn commits_come_back_in_order_until_the_journal_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let (mut journal, found) = open(&path).await;
        assert!(found.commits.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), WORKING_SIZE);
        let (a, b) = (entry("s1", "one"), entry("s2", "two"));
        journal
            .append(5, 7, &[(1, &a), (2, &b)], &[])
            .await
            .unwrap();
        journal.append(6, 8, &[], &[(1, 1)]).await.unwrap();
        drop(journal);

        let (mut journal, found) = open(&path).await;
        assert_eq!(found.commits.len(), 2);
        assert_eq!(found.commits[0].messages, vec![(1, a.clone()), (2, b)]);
        assert_eq!(
            (found.commits[0].enqueued_ms, found.commits[0].queue_ms),
            (5, 7)
        );
        assert_eq!(found.commits[1].removed, vec![(1, 1)]);
        // Whole blocks, and the file keeps its size.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), WORKING_SIZE);

        // After a reset the old generation's commits, still in the file, are not read.
        journal.reset().await.unwrap();
        journal.append(9, 9, &[(3, &a)], &[]).await.unwrap();
        drop(journal);
        let (_, found) = open(&path).await;
        assert_eq!(found.commits.len(), 1);
        assert_eq!(found.commits[0].messages[0].0, 3);
    }

    #[tokio::test]
    async fn a_torn_or_damaged_commit_ends_what_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let (mut journal, _) = open(&path).await;
        let a = entry("s", "x");
        for id in 1..=3 {
            journal.append(0, 0, &[(id, &a)], &[]).await.unwrap();
        }
        drop(journal);
        // One byte of the second commit's body flipped: the first is kept, nothing after.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], BLOCK * 2 + COMMIT_HEAD as u64 + 3)
            .unwrap();
        let (mut journal, found) = open(&path).await;
        assert_eq!(found.commits.len(), 1);
        // What was read is applied and the journal starts over (as the queue does at open):
        // the intact commit behind the damaged one is never read as a new one.
        journal.reset().await.unwrap();
        journal.append(0, 0, &[(9, &a)], &[]).await.unwrap();
        drop(journal);
        let (_, found) = open(&path).await;
        let ids: Vec<i64> = found.commits.iter().map(|c| c.messages[0].0).collect();
        assert_eq!(ids, [9]);
    }

    #[tokio::test]
    async fn a_damaged_header_means_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let (mut journal, _) = open(&path).await;
        journal
            .append(0, 0, &[(1, &entry("s", "x"))], &[])
            .await
            .unwrap();
        drop(journal);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], 9).unwrap();
        let (_, found) = open(&path).await;
        assert!(found.commits.is_empty());
    }
}
