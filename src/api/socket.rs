//! The socket file of the API: created with mode 0600 from its first moment, replacing
//! only a socket that a dead vmm left behind, and removed again when the server stops.
//!
//! - **Mode.** Linux creates the file of a Unix socket with the mode of the socket's own
//!   inode, less the umask (`unix_bind` in `net/unix/af_unix.c`). A new socket's inode
//!   has mode 0777, so `bind` alone leaves the umask in charge until a later `chmod`; the
//!   socket is therefore given mode 0600 (`fchmod`) before it is bound. No other user can
//!   connect at any moment, whatever the umask and however long the path.
//! - **Two vmm on one path.** Everything below happens while holding the path's lock
//!   ([`SocketLock`]): finding a stale socket, removing it, binding, and removing the
//!   socket on exit. A second vmm is refused at once, so it can neither remove a live
//!   socket it took for stale nor remove the first one's socket when it exits.
//! - **Removal.** The socket is removed only if the file at the path is still the one
//!   bound; something else put there meanwhile is left alone.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use super::socket_lock::SocketLock;
use super::ApiError;

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Connections the kernel queues before the server accepts them.
const BACKLOG: i32 = 128;

/// A socket file this server created, and the lock of its path. Dropping it removes the
/// file, unless the path now names some other file (someone replaced it), which is left
/// alone; then it releases the lock.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    device: u64,
    inode: u64,
    // Dropped after `Drop::drop` has removed the socket.
    lock: SocketLock,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file held while the socket exists.
    pub fn lock_path(&self) -> &Path {
        self.lock.path()
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.dev() == self.device && meta.ino() == self.inode {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Creates the listening socket at `path`, mode 0600, holding the path's lock.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ApiError> {
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(ApiError::PathTooLong {
            path: path.to_path_buf(),
            length,
        });
    }
    let lock = SocketLock::acquire(path)?;
    remove_stale_socket(path)?;
    let failed = |source: io::Error| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let listener = bind_owner_only(path).map_err(failed)?;
    let meta = fs::symlink_metadata(path).map_err(failed)?;
    // From here on a failure removes the socket file again.
    let file = SocketFile {
        path: path.to_path_buf(),
        device: meta.dev(),
        inode: meta.ino(),
        lock,
    };
    // The umask may have taken the owner's bits too (a umask of 0277 leaves 0400, and
    // connecting needs write permission); this gives them back and nothing else.
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(failed)?;
    Ok((listener, file))
}

/// A socket listening at `path` whose file is created with mode 0600 or stricter.
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // SAFETY: fchmod on a descriptor the socket owns; it changes only the inode's mode.
    if unsafe { libc::fchmod(socket.as_raw_fd(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SockAddr::unix(path)?)?;
    socket.listen(BACKLOG)?;
    Ok(UnixListener::from(OwnedFd::from(socket)))
}

/// Removes a socket that nobody listens on any more; refuses anything else.
fn remove_stale_socket(path: &Path) -> Result<(), ApiError> {
    let failed = |source: io::Error| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.to_path_buf()));
    }
    // A listener that does not take the lock (another program, or a vmm from before the
    // lock) still keeps its socket.
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(e)),
        },
        Err(e) => Err(failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use vmm_sys_util::tempdir::TempDir;

    const ALONE: &str = "VMM_SOCKET_TEST_ALONE";

    /// The umask belongs to the whole process, and other tests may run beside this one
    /// (`cargo test` runs them on threads); so a test that changes it runs again, alone, in
    /// a process of its own. Returns true in that process, false in the parent once the
    /// child has passed.
    fn runs_alone(test: &str) -> bool {
        if std::env::var_os(ALONE).is_some() {
            return true;
        }
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("api::socket::tests::{test}")])
            .args(["--test-threads", "1", "--nocapture"])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{test}, run alone: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        false
    }

    /// Sets the umask for as long as it lives.
    struct Umask(libc::mode_t);

    impl Umask {
        fn set(mask: libc::mode_t) -> Umask {
            // SAFETY: umask only swaps the process's file creation mask.
            Umask(unsafe { libc::umask(mask) })
        }
    }

    impl Drop for Umask {
        fn drop(&mut self) {
            // SAFETY: as above, putting back the mask that was there.
            unsafe { libc::umask(self.0) };
        }
    }

    #[test]
    fn the_socket_file_is_born_owner_only_whatever_the_umask() {
        if !runs_alone("the_socket_file_is_born_owner_only_whatever_the_umask") {
            return;
        }
        let dir = TempDir::new().unwrap();
        // As long as a socket path may be, so no shorter path could be used to bind it.
        let name_length = MAX_SOCKET_PATH - dir.as_path().as_os_str().len() - 1;
        let path = dir.as_path().join("s".repeat(name_length));
        assert_eq!(path.as_os_str().len(), MAX_SOCKET_PATH);
        let _umask = Umask::set(0);
        // Only the bind: the file as it is before anything else touches it.
        let _listener = bind_owner_only(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_umask_that_takes_the_owners_bits_still_leaves_a_usable_socket() {
        if !runs_alone("a_umask_that_takes_the_owners_bits_still_leaves_a_usable_socket") {
            return;
        }
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("api.sock");
        let _umask = Umask::set(0o277);
        let (listener, _file) = bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let _client = UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
    }
}
