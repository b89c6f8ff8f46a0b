//! The lock next to the API socket: `PATH.lock`, held with `flock` for as long as the
//! server runs, so that no two vmm ever serve, replace or remove the socket at one path.
//!
//! Without it, two vmm started on the same stale socket could both find it stale; one
//! binds, and the other then removes that live socket and binds its own. With it, finding a
//! stale socket, removing it, binding, and removing the socket on exit all happen while
//! holding the lock, and a second vmm is refused at once.
//!
//! The lock file is removed on exit, so nothing is left next to a socket that is gone. That
//! makes taking the lock a two-step affair: a vmm may open the file just before its holder
//! removes it, and then lock a file that no longer has a name. So after locking, the file
//! at the path must still be the one locked; if not, the lock is taken again on the new
//! file. A vmm that dies without removing it (SIGKILL) leaves the file unlocked, since the
//! kernel drops a dead process's locks, and the next vmm takes it over.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::ApiError;

/// How often taking the lock starts over because its holder removed the file meanwhile.
/// Each time means another vmm took and released the lock in between; this many in a row
/// does not happen by chance.
const MAX_ATTEMPTS: u32 = 16;

/// The lock of one socket path, held until dropped; dropping it removes the lock file.
#[derive(Debug)]
pub struct SocketLock {
    path: PathBuf,
    file: File,
}

impl SocketLock {
    /// The lock file of the socket at `socket`: the same path with `.lock` added.
    pub fn path_for(socket: &Path) -> PathBuf {
        let mut path = socket.as_os_str().to_owned();
        path.push(".lock");
        PathBuf::from(path)
    }

    /// Takes the lock of `socket`, or fails at once if another process holds it.
    pub fn acquire(socket: &Path) -> Result<SocketLock, ApiError> {
        let path = Self::path_for(socket);
        let failed = |source: io::Error| ApiError::Lock {
            socket: socket.to_path_buf(),
            lock: path.clone(),
            source,
        };
        for _ in 0..MAX_ATTEMPTS {
            let file = OpenOptions::new()
                // flock needs no write access, so neither does the lock file: one left by a
                // vmm that ran under a strict umask is still usable.
                .read(true)
                .mode(0o600)
                // Created if missing; never a link someone put there to a file of their
                // choosing.
                .custom_flags(libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ELOOP) | Some(libc::EISDIR) => ApiError::NotALockFile(path.clone()),
                    _ => failed(e),
                })?;
            let locked = file.metadata().map_err(failed)?;
            if !locked.is_file() {
                return Err(ApiError::NotALockFile(path));
            }
            try_lock(&file).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    ApiError::Locked {
                        socket: socket.to_path_buf(),
                        lock: path.clone(),
                    }
                } else {
                    failed(e)
                }
            })?;
            match fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                    return Ok(SocketLock { path, file })
                }
                // Removed (or replaced) by its last holder between our open and our lock.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Err(failed(io::Error::other(format!(
            "the lock file kept being replaced ({MAX_ATTEMPTS} attempts)"
        ))))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        // Removed while still held, so the next vmm either opened this file before (and
        // will find it gone once it has the lock) or creates a fresh one.
        if let (Ok(held), Ok(now)) = (self.file.metadata(), fs::symlink_metadata(&self.path)) {
            if held.dev() == now.dev() && held.ino() == now.ino() {
                let _ = fs::remove_file(&self.path);
            }
        }
        // Closing the file releases the lock.
    }
}

/// An exclusive `flock` that fails with `WouldBlock` instead of waiting.
fn try_lock(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor the file owns; it changes no memory.
        let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn socket_in(dir: &TempDir) -> PathBuf {
        dir.as_path().join("api.sock")
    }

    #[test]
    fn the_lock_is_exclusive_and_its_file_goes_with_it() {
        let dir = TempDir::new().unwrap();
        let socket = socket_in(&dir);
        let lock = SocketLock::acquire(&socket).unwrap();
        assert_eq!(lock.path(), dir.as_path().join("api.sock.lock"));
        let mode = fs::metadata(lock.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            SocketLock::acquire(&socket),
            Err(ApiError::Locked { .. })
        ));
        drop(lock);
        assert!(!SocketLock::path_for(&socket).exists());
        drop(SocketLock::acquire(&socket).unwrap());
    }

    #[test]
    fn a_lock_file_left_by_a_dead_vmm_is_taken_over() {
        let dir = TempDir::new().unwrap();
        let socket = socket_in(&dir);
        fs::write(SocketLock::path_for(&socket), "").unwrap();
        let lock = SocketLock::acquire(&socket).unwrap();
        drop(lock);
        assert!(!SocketLock::path_for(&socket).exists());
    }

    #[test]
    fn a_lock_file_replaced_meanwhile_is_not_removed() {
        let dir = TempDir::new().unwrap();
        let socket = socket_in(&dir);
        let lock = SocketLock::acquire(&socket).unwrap();
        fs::remove_file(lock.path()).unwrap();
        fs::write(lock.path(), "someone else's").unwrap();
        drop(lock);
        let path = SocketLock::path_for(&socket);
        assert_eq!(fs::read_to_string(path).unwrap(), "someone else's");
    }

    #[test]
    fn a_link_or_a_directory_is_not_a_lock_file() {
        let dir = TempDir::new().unwrap();
        let socket = socket_in(&dir);
        let target = dir.as_path().join("target");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, SocketLock::path_for(&socket)).unwrap();
        assert!(matches!(
            SocketLock::acquire(&socket),
            Err(ApiError::NotALockFile(_))
        ));
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");

        let other = dir.as_path().join("other.sock");
        fs::create_dir(SocketLock::path_for(&other)).unwrap();
        assert!(matches!(
            SocketLock::acquire(&other),
            Err(ApiError::NotALockFile(_))
        ));
    }
}
