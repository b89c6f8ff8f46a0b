//! The socket file: its mode, what it replaces or refuses to, its lock, and its removal.

use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm::api::socket::MAX_SOCKET_PATH;
use vmm::api::{ApiError, ApiServer};

use crate::common::http::{request, server_closed};
use crate::harness::{test_dir, Harness};
use crate::model::ModelVm;

#[test]
fn the_socket_has_mode_0600() {
    let h = Harness::new(None);
    let meta = fs::symlink_metadata(&h.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing is in the directory but the socket and its lock, held while it runs.
    assert_eq!(
        names_in(h.socket.parent().unwrap()),
        ["api.sock", "api.sock.lock"]
    );
}

/// The names in a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_socket_at_the_longest_path_has_mode_0600_too() {
    let dir = test_dir();
    let name_length = MAX_SOCKET_PATH - dir.as_path().as_os_str().len() - 1;
    let path = dir.as_path().join("s".repeat(name_length));
    assert_eq!(path.as_os_str().len(), MAX_SOCKET_PATH);
    let server = ApiServer::start(&path, Arc::new(ModelVm::new(None))).unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(request(&path, "GET", "/vm", None).status, 200);
    drop(server);
    assert!(names_in(dir.as_path()).is_empty());
}

/// Holds `PATH.lock` the way a running vmm does, until dropped.
struct HeldLock {
    _file: File,
}

impl HeldLock {
    fn take(socket: &Path) -> HeldLock {
        let mut path = socket.as_os_str().to_owned();
        path.push(".lock");
        let file = File::create(&path).unwrap();
        // SAFETY: flock on a descriptor the file owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(locked, 0);
        HeldLock { _file: file }
    }
}

/// The race this lock closes: two vmm find the same stale socket, one binds, the other
/// must not remove the first one's live socket. Here the test is the first vmm, between
/// taking the lock and binding: the second is refused and touches nothing.
#[test]
fn a_second_vmm_on_a_stale_path_leaves_it_to_the_lock_holder() {
    let dir = test_dir();
    let path = dir.as_path().join("api.sock");
    drop(UnixListener::bind(&path).unwrap());
    let stale = fs::symlink_metadata(&path).unwrap().ino();
    let vm = Arc::new(ModelVm::new(None));

    let held = HeldLock::take(&path);
    let err = ApiServer::start(&path, vm.clone()).err().unwrap();
    assert!(matches!(err, ApiError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("api.sock.lock"), "{err}");
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), stale);

    // Once the holder is gone, the stale socket is replaced.
    drop(held);
    let _server = ApiServer::start(&path, vm).unwrap();
    assert_eq!(request(&path, "GET", "/vm", None).status, 200);
}

#[test]
fn a_second_server_on_a_live_path_is_refused_and_removes_nothing() {
    let mut h = Harness::new(None);
    let live = fs::symlink_metadata(&h.socket).unwrap().ino();
    let err = ApiServer::start(&h.socket, Arc::new(ModelVm::new(None)))
        .err()
        .unwrap();
    assert!(matches!(err, ApiError::Locked { .. }), "{err}");
    assert_eq!(fs::symlink_metadata(&h.socket).unwrap().ino(), live);
    assert_eq!(h.request("GET", "/vm", None).status, 200);
    // The first server still removes its socket and lock when it stops.
    drop(h.server.take());
    assert!(names_in(h.socket.parent().unwrap()).is_empty());
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = test_dir();
    let path = dir.as_path().join("api.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a closed listener leaves its socket file");
    let vm = Arc::new(ModelVm::new(None));
    let _server = ApiServer::start(&path, vm).unwrap();
    assert_eq!(request(&path, "GET", "/vm", None).status, 200);
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_and_left_untouched() {
    let dir = test_dir();
    let vm = Arc::new(ModelVm::new(None));
    let path = dir.as_path().join("precious.txt");
    fs::write(&path, "keep me").unwrap();
    let err = ApiServer::start(&path, vm.clone()).err().unwrap();
    assert!(matches!(err, ApiError::NotASocket(_)));
    assert!(err.to_string().contains("precious.txt"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");

    // Nor is a symbolic link followed, even to a stale socket.
    let stale = dir.as_path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let link = dir.as_path().join("link.sock");
    std::os::unix::fs::symlink(&stale, &link).unwrap();
    let err = ApiServer::start(&link, vm.clone()).err().unwrap();
    assert!(matches!(err, ApiError::NotASocket(_)));
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(stale.exists());

    let subdir = dir.as_path().join("a-directory");
    fs::create_dir(&subdir).unwrap();
    assert!(matches!(
        ApiServer::start(&subdir, vm),
        Err(ApiError::NotASocket(_))
    ));
    assert!(subdir.is_dir());
}

/// A program that listens without taking the lock keeps its socket too.
#[test]
fn a_socket_another_program_listens_on_is_refused() {
    let dir = test_dir();
    let path = dir.as_path().join("api.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let err = ApiServer::start(&path, Arc::new(ModelVm::new(None)))
        .err()
        .unwrap();
    assert!(matches!(err, ApiError::InUse(_)), "{err}");
    assert!(path.exists());
    assert_eq!(names_in(dir.as_path()), ["api.sock"]);
}

#[test]
fn a_missing_directory_or_a_too_long_path_is_reported() {
    let vm = Arc::new(ModelVm::new(None));
    let err = ApiServer::start(Path::new("/nonexistent-dir/api.sock"), vm.clone())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("/nonexistent-dir/api.sock"),
        "{err}"
    );
    let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(200)));
    assert!(matches!(
        ApiServer::start(&long, vm),
        Err(ApiError::PathTooLong { .. })
    ));
}

#[test]
fn the_socket_is_removed_when_the_server_stops() {
    let mut h = Harness::new(None);
    assert!(h.socket.exists());
    drop(h.server.take());
    assert!(!h.socket.exists());

    let h = Harness::new(None);
    let mut client = h.connect();
    h.server.unwrap().shutdown();
    assert!(!h.socket.exists());
    assert!(server_closed(&mut client));
}

#[test]
fn a_socket_replaced_by_someone_else_is_not_removed() {
    let mut h = Harness::new(None);
    fs::remove_file(&h.socket).unwrap();
    fs::write(&h.socket, "someone else's").unwrap();
    drop(h.server.take());
    assert_eq!(fs::read_to_string(&h.socket).unwrap(), "someone else's");

    let mut h = Harness::new(None);
    fs::remove_file(&h.socket).unwrap();
    let _other = UnixListener::bind(&h.socket).unwrap();
    let other = fs::symlink_metadata(&h.socket).unwrap().ino();
    drop(h.server.take());
    assert_eq!(fs::symlink_metadata(&h.socket).unwrap().ino(), other);
}
