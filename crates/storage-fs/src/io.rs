//! The file layer under the store: [`Vfs`] and [`VfsFile`], implemented by the
//! real filesystem ([`StdVfs`], the default) and by [`SimVfs`], an in-memory
//! filesystem that simulates power loss.
//!
//! Everything the store does to files goes through this layer, so a test can cut
//! the power at any I/O operation: [`SimVfs`] remembers what each file held at its
//! last sync and which names existed at the directory's last sync, and
//! [`SimVfs::power_loss`] returns only that (optionally with a torn, random prefix
//! of the unsynced appends), as a disk would after the machine lost power.

use std::any::Any;
use std::collections::BTreeMap;
use std::io::{Error, ErrorKind, Result};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A directory tree of files the store reads and writes.
pub trait Vfs: Send + Sync + 'static {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// Opens an existing file, for writing too if `write`.
    fn open(&self, path: &Path, write: bool) -> Result<Arc<dyn VfsFile>>;
    /// Creates a file for reading and writing: a new one (failing if it exists) if
    /// `exclusive`, otherwise an existing one is truncated.
    fn create(&self, path: &Path, exclusive: bool) -> Result<Arc<dyn VfsFile>>;
    /// Renames a file, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> Result<()>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> Result<Vec<String>>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> Result<()>;
    /// Takes the store's exclusive lock (`LOCK` in `dir`) for as long as the
    /// returned guard lives. `Ok(Err(holder))` if someone else holds it.
    fn lock(&self, dir: &Path) -> Result<std::result::Result<Box<dyn Any + Send + Sync>, String>>;
}

/// One open file; positioned reads and writes, so it is shared without a cursor.
pub trait VfsFile: Send + Sync + 'static {
    /// Fills `buf` from `off`; `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()>;
    /// Writes all of `buf` at `off`.
    fn write_all_at(&self, buf: &[u8], off: u64) -> Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> Result<()>;
    /// The file's length.
    fn len(&self) -> Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Makes the file's contents durable.
    fn sync_data(&self) -> Result<()>;
    /// Makes the file's contents and all its metadata durable (for new and
    /// truncated files). Defaults to [`VfsFile::sync_data`].
    fn sync_all(&self) -> Result<()> {
        self.sync_data()
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdVfs;

impl VfsFile for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        FileExt::read_exact_at(self, buf, off)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> Result<()> {
        FileExt::write_all_at(self, buf, off)
    }
    fn set_len(&self, len: u64) -> Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn len(&self) -> Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn sync_data(&self) -> Result<()> {
        std::fs::File::sync_data(self)
    }
    fn sync_all(&self) -> Result<()> {
        std::fs::File::sync_all(self)
    }
}

impl Vfs for StdVfs {
    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn open(&self, path: &Path, write: bool) -> Result<Arc<dyn VfsFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)?;
        Ok(Arc::new(f))
    }
    fn create(&self, path: &Path, exclusive: bool) -> Result<Arc<dyn VfsFile>> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true);
        if exclusive {
            o.create_new(true);
        } else {
            o.create(true).truncate(true);
        }
        Ok(Arc::new(o.open(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .filter_map(|e| match e {
                Ok(e) if e.file_type().is_ok_and(|t| t.is_file()) => {
                    Some(Ok(e.file_name().to_string_lossy().into_owned()))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect()
    }
    fn sync_dir(&self, dir: &Path) -> Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn lock(&self, dir: &Path) -> Result<std::result::Result<Box<dyn Any + Send + Sync>, String>> {
        let path = dir.join(crate::store::LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Ok(Err(holder
                    .trim()
                    .trim_start_matches("pid ")
                    .trim()
                    .parse::<u32>()
                    .map_or_else(
                        |_| "another handle".to_string(),
                        |pid| format!("process {pid}"),
                    )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let pid = format!("pid {}\n", std::process::id());
        f.set_len(0)?;
        FileExt::write_all_at(&f, pid.as_bytes(), 0)?;
        // Closing the file releases the lock.
        Ok(Ok(Box::new(f)))
    }
}

// ---------------------------------------------------------------------------
// Simulated power loss
// ---------------------------------------------------------------------------

/// Contents of one simulated file: what a reader sees, and what survives power
/// loss.
#[derive(Debug, Default, Clone)]
struct Contents {
    current: Vec<u8>,
    durable: Vec<u8>,
}

/// A file of a [`SimVfs`]. It shares the power switch, not the names (which
/// hold the files: sharing those would be a reference cycle).
struct SimFile {
    contents: Mutex<Contents>,
    power: Arc<Power>,
}

#[derive(Default)]
struct Names {
    /// What `list` and `open` see.
    current: BTreeMap<PathBuf, Arc<SimFile>>,
    /// What survives power loss: names as of each directory's last sync.
    durable: BTreeMap<PathBuf, Arc<SimFile>>,
}

#[derive(Default)]
struct SimShared {
    names: Mutex<Names>,
    power: Arc<Power>,
    locked: Mutex<bool>,
}

#[derive(Default)]
struct Power {
    /// Operations that change the disk (writes, truncations, syncs, creations,
    /// renames, removals), counted from 1.
    ops: AtomicU64,
    /// The power fails at this operation: it and every later one fail.
    cut_at: AtomicU64,
}

impl Power {
    /// Counts one disk-changing operation; fails once the power is cut.
    fn step(&self) -> Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.cut_at.load(Ordering::SeqCst) {
            return Err(Error::other("simulated power loss"));
        }
        Ok(())
    }
    fn dead(&self) -> bool {
        self.ops.load(Ordering::SeqCst) >= self.cut_at.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An in-memory filesystem that loses what was not synced when its power is cut.
///
/// - File contents become durable on [`VfsFile::sync_data`].
/// - Creations, renames and removals become durable when their directory is
///   synced ([`Vfs::sync_dir`]); until then, power loss undoes them.
/// - [`SimVfs::cut_power_at`] picks the disk-changing operation (counted from 1
///   by [`SimVfs::operations`]) at which the power fails: it and all later ones
///   fail with an I/O error, as a dying machine's would. Reads keep working until
///   then.
/// - [`SimVfs::power_loss`] returns the filesystem found after a restart.
#[derive(Clone, Default)]
pub struct SimVfs {
    shared: Arc<SimShared>,
}

impl std::fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVfs")
            .field("operations", &self.operations())
            .finish_non_exhaustive()
    }
}

impl SimVfs {
    /// An empty filesystem with the power on.
    pub fn new() -> Self {
        let vfs = Self::default();
        vfs.shared.power.cut_at.store(u64::MAX, Ordering::SeqCst);
        vfs
    }

    /// Disk-changing operations so far.
    pub fn operations(&self) -> u64 {
        self.shared.power.ops.load(Ordering::SeqCst)
    }

    /// Cuts the power at disk-changing operation `n` (counted from 1 since this
    /// filesystem was made): operation `n` and every later one fail.
    pub fn cut_power_at(&self, n: u64) {
        self.shared.power.cut_at.store(n, Ordering::SeqCst);
    }

    /// Whether the power has been cut.
    pub fn is_dead(&self) -> bool {
        self.shared.power.dead()
    }

    /// The filesystem a restart finds: every name as of its directory's last sync,
    /// every file as of its last sync. With `torn = Some(seed)`, each file that was
    /// appended to since its last sync also keeps a random prefix of those appends
    /// (a write the disk had partly done). The result has its power on.
    pub fn power_loss(&self, torn: Option<u64>) -> SimVfs {
        let after = SimVfs::new();
        let mut rng = torn.unwrap_or(0) | 1;
        let names = lock(&self.shared.names);
        let mut copies: Vec<(*const SimFile, Arc<SimFile>)> = Vec::new();
        let mut out = lock(&after.shared.names);
        for (path, file) in &names.durable {
            // Hard links do not exist here, but keep one copy per file anyway.
            let ptr = Arc::as_ptr(file);
            let copy = match copies.iter().find(|(p, _)| *p == ptr) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = lock(&file.contents);
                    let mut data = c.durable.clone();
                    if torn.is_some() && c.current.starts_with(&c.durable) {
                        let extra = c.current.len() - c.durable.len();
                        if extra > 0 {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let keep = (rng % (extra as u64 + 1)) as usize;
                            data.extend_from_slice(&c.current[c.durable.len()..][..keep]);
                        }
                    }
                    let copy = Arc::new(SimFile {
                        contents: Mutex::new(Contents {
                            current: data.clone(),
                            durable: data,
                        }),
                        power: after.shared.power.clone(),
                    });
                    copies.push((ptr, copy.clone()));
                    copy
                }
            };
            out.current.insert(path.clone(), copy.clone());
            out.durable.insert(path.clone(), copy);
        }
        drop(out);
        after
    }

    fn not_found(path: &Path) -> Error {
        Error::new(ErrorKind::NotFound, format!("{} not found", path.display()))
    }
}

impl VfsFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let c = lock(&self.contents);
        let src = usize::try_from(off)
            .ok()
            .and_then(|off| c.current.get(off..off.checked_add(buf.len())?))
            .ok_or_else(|| Error::new(ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> Result<()> {
        self.power.step()?;
        let mut c = lock(&self.contents);
        let off = off as usize;
        if c.current.len() < off + buf.len() {
            c.current.resize(off + buf.len(), 0);
        }
        c.current[off..off + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.power.step()?;
        lock(&self.contents).current.resize(len as usize, 0);
        Ok(())
    }
    fn len(&self) -> Result<u64> {
        Ok(lock(&self.contents).current.len() as u64)
    }
    fn sync_data(&self) -> Result<()> {
        self.power.step()?;
        let mut c = lock(&self.contents);
        c.durable = c.current.clone();
        Ok(())
    }
}

impl Vfs for SimVfs {
    fn create_dir_all(&self, _dir: &Path) -> Result<()> {
        // One flat namespace of full paths: directories need no entries.
        Ok(())
    }
    fn open(&self, path: &Path, _write: bool) -> Result<Arc<dyn VfsFile>> {
        let names = lock(&self.shared.names);
        let file = names
            .current
            .get(path)
            .cloned()
            .ok_or_else(|| Self::not_found(path))?;
        Ok(file)
    }
    fn create(&self, path: &Path, exclusive: bool) -> Result<Arc<dyn VfsFile>> {
        self.shared.power.step()?;
        let mut names = lock(&self.shared.names);
        if let Some(existing) = names.current.get(path).cloned() {
            if exclusive {
                return Err(Error::new(ErrorKind::AlreadyExists, "file exists"));
            }
            lock(&existing.contents).current.clear();
            return Ok(existing);
        }
        let file = Arc::new(SimFile {
            contents: Mutex::new(Contents::default()),
            power: self.shared.power.clone(),
        });
        names.current.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.shared.power.step()?;
        let mut names = lock(&self.shared.names);
        let file = names
            .current
            .remove(from)
            .ok_or_else(|| Self::not_found(from))?;
        names.current.insert(to.to_path_buf(), file);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> Result<()> {
        self.shared.power.step()?;
        let mut names = lock(&self.shared.names);
        names
            .current
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| Self::not_found(path))
    }
    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let names = lock(&self.shared.names);
        Ok(names
            .current
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }
    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.shared.power.step()?;
        let mut guard = lock(&self.shared.names);
        let names = &mut *guard;
        names.durable.retain(|p, _| p.parent() != Some(dir));
        for (p, f) in &names.current {
            if p.parent() == Some(dir) {
                names.durable.insert(p.clone(), f.clone());
            }
        }
        Ok(())
    }
    fn lock(&self, _dir: &Path) -> Result<std::result::Result<Box<dyn Any + Send + Sync>, String>> {
        let mut locked = lock(&self.shared.locked);
        if *locked {
            return Ok(Err("another handle".into()));
        }
        *locked = true;
        Ok(Ok(Box::new(SimLock(self.shared.clone()))))
    }
}

/// Releases a [`SimVfs`] store lock when dropped.
struct SimLock(Arc<SimShared>);

impl Drop for SimLock {
    fn drop(&mut self) {
        *lock(&self.0.locked) = false;
    }
}
