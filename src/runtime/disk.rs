//! The storage seam: a small positional-I/O file API that the log is written against.
//!
//! `File` uses `&self` methods (pread/pwrite style) so a flusher can `sync_data` a segment
//! while the partition keeps appending. Only data covered by a successful `sync_data` is
//! promised to survive a crash; a failed `sync_data` must be treated as fatal for that file
//! (callers never retry and trust it), as on Linux where dirty pages are dropped after EIO.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file opened through a [`Disk`].
#[allow(clippy::len_without_is_empty)]
pub trait File: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every write so far durable.
    fn sync_data(&self) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `offset`, failing with `UnexpectedEof` if the file is
    /// shorter.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// A directory tree of files: the real filesystem in production, a simulated one in `sim/`.
pub trait Disk: Send + Sync + 'static {
    /// Opens `path` for reading and writing, creating it if `create` is true.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>>;
    /// Creates `path` and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries directly under `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists (file or directory).
    fn exists(&self, path: &Path) -> bool;
    /// Removes one file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything under it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// [`Disk`] on the real filesystem via `std::fs`.
#[derive(Debug, Default, Clone)]
pub struct StdDisk;

struct StdFile(std::fs::File);

impl File for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Disk for StdDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// An in-memory [`Disk`] for unit tests and the simulator. It models durability: each file
/// keeps the bytes written (`data`) and the bytes last made durable (`synced`);
/// [`MemDisk::crash`] throws away everything not synced, keeping a chosen prefix of the
/// unsynced tail to model a torn write.
#[derive(Default, Clone)]
pub struct MemDisk {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    files: BTreeMap<PathBuf, Arc<MemFile>>,
    dirs: std::collections::BTreeSet<PathBuf>,
}

#[derive(Default)]
struct MemFile {
    state: Mutex<MemFileState>,
}

#[derive(Default)]
struct MemFileState {
    data: Vec<u8>,
    synced: Vec<u8>,
}

impl File for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = self.state.lock().unwrap();
        let off = offset as usize;
        if off >= s.data.len() {
            return Ok(0);
        }
        let n = buf.len().min(s.data.len() - off);
        buf[..n].copy_from_slice(&s.data[off..off + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        let end = offset as usize + buf.len();
        if s.data.len() < end {
            s.data.resize(end, 0);
        }
        s.data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().data.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.state.lock().unwrap().data.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.synced = s.data.clone();
        Ok(())
    }
}

impl MemDisk {
    /// A new, empty in-memory disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: every file falls back to its synced contents plus, if
    /// `keep_unsynced` says so, a prefix of the bytes written after the last sync (a torn
    /// write). `keep_unsynced(path, unsynced_len)` returns how many unsynced bytes survive.
    pub fn crash(&self, mut keep_unsynced: impl FnMut(&Path, usize) -> usize) {
        let inner = self.inner.lock().unwrap();
        for (path, f) in &inner.files {
            let mut s = f.state.lock().unwrap();
            let synced_len = s.synced.len();
            let mut data = s.synced.clone();
            if s.data.len() > synced_len && s.data[..synced_len] == s.synced[..] {
                let extra = s.data.len() - synced_len;
                let keep = keep_unsynced(path, extra).min(extra);
                data.extend_from_slice(&s.data[synced_len..synced_len + keep]);
            }
            s.data = data;
        }
    }

    /// Flips one bit of a file's current (and synced) contents, to model media corruption.
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) {
        let inner = self.inner.lock().unwrap();
        if let Some(f) = inner.files.get(path) {
            let mut s = f.state.lock().unwrap();
            if byte < s.data.len() {
                s.data[byte] ^= 1 << (bit % 8);
            }
            if byte < s.synced.len() {
                s.synced[byte] ^= 1 << (bit % 8);
            }
        }
    }
}

impl Disk for MemDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(f) = inner.files.get(path) {
            return Ok(f.clone());
        }
        if !create {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())));
        }
        let f = Arc::new(MemFile::default());
        inner.files.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        let mut p = Some(path);
        while let Some(d) = p {
            inner.dirs.insert(d.to_path_buf());
            p = d.parent();
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let inner = self.inner.lock().unwrap();
        let mut out = std::collections::BTreeSet::new();
        let children = inner.files.keys().chain(inner.dirs.iter());
        for p in children {
            if p.parent() == Some(dir) {
                if let Some(n) = p.file_name() {
                    out.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        Ok(out.into_iter().collect())
    }
    fn exists(&self, path: &Path) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.files.contains_key(path) || inner.dirs.contains(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        inner.files.remove(path).map(|_| ()).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        inner.files.retain(|p, _| !p.starts_with(path));
        inner.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        let f = inner.files.remove(from).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        inner.files.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}
