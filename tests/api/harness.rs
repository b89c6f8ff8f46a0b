//! The set-up every API test starts from: a server over a model VM, on a socket of its own.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use vmm::api::{ApiServer, ServerLimits};
use vmm::devices::virtio::balloon::BalloonFeatures;
use vmm_sys_util::tempdir::TempDir;

use crate::common::http::{connect, http, read_answer, request, Answer};
use crate::common::temp_dir;
use crate::model::{ModelBalloon, ModelVm};

/// A server over a model, on a socket in a directory of its own.
pub struct Harness {
    pub server: Option<ApiServer>,
    pub socket: PathBuf,
    pub vm: Arc<ModelVm>,
    balloon: Option<Arc<ModelBalloon>>,
    _dir: TempDir,
}

impl Harness {
    /// A server with default limits, over a VM with a balloon of these features (or none).
    pub fn new(features: Option<BalloonFeatures>) -> Self {
        Self::with_limits(features, ServerLimits::default())
    }

    pub fn with_limits(features: Option<BalloonFeatures>, limits: ServerLimits) -> Self {
        let dir = test_dir();
        let socket = dir.as_path().join("api.sock");
        let balloon = features.map(|features| Arc::new(ModelBalloon::new(features)));
        let vm = Arc::new(ModelVm::new(balloon.clone()));
        let server = ApiServer::start_with_limits(&socket, vm.clone(), limits).unwrap();
        Harness {
            server: Some(server),
            socket,
            vm,
            balloon,
            _dir: dir,
        }
    }

    pub fn balloon(&self) -> &ModelBalloon {
        self.balloon.as_ref().unwrap()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        request(&self.socket, method, path, body)
    }

    pub fn connect(&self) -> UnixStream {
        connect(&self.socket)
    }

    /// `count` connections the server has surely taken: each has been answered once.
    pub fn served_connections(&self, count: usize) -> Vec<UnixStream> {
        (0..count)
            .map(|_| {
                let mut stream = self.connect();
                stream
                    .write_all(http("GET", "/vm", None).as_bytes())
                    .unwrap();
                assert_eq!(read_answer(&mut stream, &mut Vec::new()).status, 200);
                stream
            })
            .collect()
    }
}

/// A fresh directory for one test's sockets and files, removed at the end.
pub fn test_dir() -> TempDir {
    temp_dir("api")
}
