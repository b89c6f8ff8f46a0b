//! The socket file of the API: created with mode 0600, replacing only a socket that a dead
//! vmm left behind, and removed again when the server stops.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::ApiError;

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A socket file this server created. Dropping it removes the file, unless the path now
/// names some other file (someone replaced it), which is left alone.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    device: u64,
    inode: u64,
}

impl SocketFile {
    /// The socket file that is, or is about to be, at `path`: the file now at `current`.
    fn of(path: &Path, current: &Path) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(current)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
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

/// Creates the listening socket at `path` with mode 0600.
///
/// The socket is bound inside a fresh private directory (mode 0700), given mode 0600 there
/// and only then linked to `path`, so no other user can ever connect to it, whatever the
/// umask, and an existing file at `path` is never overwritten.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ApiError> {
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(ApiError::PathTooLong {
            path: path.to_path_buf(),
            length,
        });
    }
    remove_stale_socket(path)?;
    let failed = |source: io::Error| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };

    match StagingDir::create(parent_of(path)) {
        Ok(staging) if staging.socket_path().as_os_str().len() <= MAX_SOCKET_PATH => {
            let staged = staging.socket_path();
            let listener = UnixListener::bind(&staged).map_err(failed)?;
            fs::set_permissions(&staged, Permissions::from_mode(0o600)).map_err(failed)?;
            // Linking and renaming keep the inode, so the file is known before it is at
            // `path`; should linking fail, whatever is at `path` is not ours to remove.
            let file = SocketFile::of(path, &staged).map_err(failed)?;
            match fs::hard_link(&staged, path) {
                Ok(()) => {}
                // A file system without hard links: move it there, still never replacing.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    rename_no_replace(&staged, path).map_err(failed)?
                }
                Err(e) => return Err(failed(e)),
            }
            Ok((listener, file))
        }
        // No staging directory (or its path is too long for a socket): bind in place and
        // restrict the mode straight after. Between the two the umask alone guards it.
        _ => {
            let listener = UnixListener::bind(path).map_err(failed)?;
            // From here on a failure removes the socket file again.
            let file = SocketFile::of(path, path).map_err(failed)?;
            fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(failed)?;
            Ok((listener, file))
        }
    }
}

/// Renames `from` to `to` unless `to` exists, atomically.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call, and
    // renameat2 only reads them.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
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

/// A directory only this user can enter, next to the final socket path (so that linking
/// from it stays on one file system). Removed with whatever is left in it on drop.
struct StagingDir {
    path: PathBuf,
}

impl StagingDir {
    const SOCKET_NAME: &'static str = "s";

    fn create(parent: &Path) -> io::Result<StagingDir> {
        let pid = std::process::id();
        let mut attempt = 0u32;
        loop {
            let path = parent.join(format!(".vmm-api.{pid}.{attempt}"));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(StagingDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn socket_path(&self) -> PathBuf {
        self.path.join(Self::SOCKET_NAME)
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.socket_path());
        let _ = fs::remove_dir(&self.path);
    }
}
