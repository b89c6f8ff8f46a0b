//! The socket file: its mode, what it replaces or refuses to, and its removal.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    // Nothing is left behind in the directory but the socket.
    let names: Vec<_> = fs::read_dir(h.socket.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["api.sock"]);
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

#[test]
fn a_socket_in_use_is_refused() {
    let h = Harness::new(None);
    let other = Arc::new(ModelVm::new(None));
    let err = ApiServer::start(&h.socket, other).err().unwrap();
    assert!(matches!(err, ApiError::InUse(_)), "{err}");
    assert_eq!(h.request("GET", "/vm", None).status, 200);
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
}
