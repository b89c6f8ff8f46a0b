//! The API server: a thread of its own with its own epoll loop, so that no client, however
//! slow or silent, holds up the VMM's event loop or the vCPUs, and none holds up another.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{answered, encode, Connection, ServerLimits};
use super::request_counts::ApiRequestCounters;
use super::routes::Response;
use super::socket;
use super::{ApiError, VmControl};
use crate::seccomp::{self, SpawnError, ThreadFilter};

const STOP_TOKEN: u64 = 0;
const LISTENER_TOKEN: u64 = 1;
const FIRST_CONNECTION_TOKEN: u64 = 2;
/// How long accepting pauses after `accept` failed for want of resources (such as file
/// descriptors), so that the loop does not spin on a listener it cannot serve.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// The running API server. Dropping it (or [`ApiServer::shutdown`]) stops its thread,
/// after sending the answers already made, and removes the socket file.
pub struct ApiServer {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ApiServer {
    /// Creates the socket at `path` (mode 0600) and serves the API on it from a new thread.
    pub fn start(path: &Path, vm: Arc<dyn VmControl>) -> Result<ApiServer, ApiError> {
        Self::start_with_limits(path, vm, ServerLimits::default())
    }

    /// [`ApiServer::start`] with other limits on requests and connections.
    pub fn start_with_limits(
        path: &Path,
        vm: Arc<dyn VmControl>,
        limits: ServerLimits,
    ) -> Result<ApiServer, ApiError> {
        Self::start_confined(path, vm, limits, ThreadFilter::none())
    }

    /// [`ApiServer::start_with_limits`] on a thread that confines itself with `filter`
    /// before it accepts a connection.
    pub fn start_confined(
        path: &Path,
        vm: Arc<dyn VmControl>,
        limits: ServerLimits,
        filter: ThreadFilter,
    ) -> Result<ApiServer, ApiError> {
        // From here on the socket file is removed again if starting fails.
        let (listener, socket) = socket::bind(path)?;
        listener.set_nonblocking(true).map_err(ApiError::Start)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ApiError::Start)?;
        let requests = Arc::new(ApiRequestCounters::new());
        vm.metrics().register("api", requests.clone());
        let event_loop = EventLoop::new(
            listener,
            stop.try_clone().map_err(ApiError::Start)?,
            vm,
            limits,
            requests,
        )
        .map_err(ApiError::Start)?;
        let path = socket.path().to_path_buf();
        let builder = thread::Builder::new().name("vmm-api".to_string());
        // The thread removes the socket file as it ends, so that the main thread, which
        // handles guest input, never needs the right to remove files.
        let thread = seccomp::spawn_confined(builder, filter, move || {
            event_loop.run();
            drop(socket);
        })
        .map_err(|e| match e {
            SpawnError::Thread(e) => ApiError::Start(e),
            SpawnError::Confine(e) => ApiError::Confine(e),
        })?;
        Ok(ApiServer {
            stop,
            thread: Some(thread),
            path,
        })
    }

    /// The path of the socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server and removes its socket; the same as dropping it.
    pub fn shutdown(self) {}

    fn stop_thread(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The eventfd cannot be full: it is written once.
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

struct EventLoop {
    epoll: Epoll,
    listener: UnixListener,
    /// Set while accepting is paused after a failed `accept`.
    accept_paused_until: Option<Instant>,
    _stop: EventFd,
    connections: HashMap<u64, Connection>,
    next_token: u64,
    vm: Arc<dyn VmControl>,
    limits: ServerLimits,
    requests: Arc<ApiRequestCounters>,
}

impl EventLoop {
    fn new(
        listener: UnixListener,
        stop: EventFd,
        vm: Arc<dyn VmControl>,
        limits: ServerLimits,
        requests: Arc<ApiRequestCounters>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(EventLoop {
            epoll,
            listener,
            accept_paused_until: None,
            _stop: stop,
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION_TOKEN,
            vm,
            limits,
            requests,
        })
    }

    fn run(mut self) {
        if let Err(e) = self.serve() {
            log::error!("the API server stopped: {e}");
        }
        // Answers already made (such as the 204 to a shutdown) go out before closing.
        let now = Instant::now();
        for connection in self.connections.values_mut() {
            let _ = connection.flush(now);
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = self.wait_timeout_ms(Instant::now());
            let count = match self.epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for event in &events[..count] {
                let now = Instant::now();
                match event.data() {
                    STOP_TOKEN => return Ok(()),
                    LISTENER_TOKEN => self.accept_all(now),
                    token => {
                        let ready = EventSet::from_bits_truncate(event.events());
                        self.serve_connection(token, ready, now);
                    }
                }
            }
            let now = Instant::now();
            self.close_idle(now);
            self.resume_accepting_if_due(now);
        }
    }

    /// Until the next idle connection is due to close or accepting is due to resume.
    fn wait_timeout_ms(&self, now: Instant) -> i32 {
        let idle_deadlines = self
            .connections
            .values()
            .map(|connection| connection.last_activity() + self.limits.idle_timeout);
        let Some(deadline) = idle_deadlines.chain(self.accept_paused_until).min() else {
            return -1;
        };
        let wait = deadline.saturating_duration_since(now);
        // Round up so that the deadline has passed when the wait ends.
        i32::try_from(wait.as_millis() + 1).unwrap_or(i32::MAX)
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_connection(stream, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    log::warn!("the API server cannot accept a connection: {e}");
                    self.pause_accepting(now);
                    return;
                }
            }
        }
    }

    fn add_connection(&mut self, stream: UnixStream, now: Instant) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if self.connections.len() >= self.limits.max_connections {
            // Connections a client opened and left silent (leaked, or held on purpose)
            // must not lock everyone else out until they time out.
            if let Some(token) = self.longest_silent(now) {
                self.close(token);
            }
        }
        if self.connections.len() >= self.limits.max_connections {
            let response = Response::fault(
                503,
                format!(
                    "the API already serves {} connections; close one and try again",
                    self.limits.max_connections
                ),
            );
            answered(&self.requests, None, &response);
            // Best effort: the answer fits an empty socket buffer.
            let _ = (&stream).write(&encode(&response, true, false));
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let registered = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        );
        if registered.is_ok() {
            let connection = Connection::new(stream, now, self.requests.clone());
            self.connections.insert(token, connection);
        }
    }

    fn serve_connection(&mut self, token: u64, ready: EventSet, now: Instant) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        let before = connection.interest(&self.limits);
        let alive = connection.on_ready(ready, self.vm.as_ref(), &self.limits, now);
        let after = connection.interest(&self.limits);
        if !alive {
            self.close(token);
            return;
        }
        if before != after {
            let changed = self.epoll.ctl(
                ControlOperation::Modify,
                connection.stream().as_raw_fd(),
                EpollEvent::new(after, token),
            );
            if changed.is_err() {
                self.close(token);
            }
        }
    }

    /// The connection silent the longest, if it has been silent for `reclaim_after` with no
    /// answer waiting.
    fn longest_silent(&self, now: Instant) -> Option<u64> {
        self.connections
            .iter()
            .filter(|(_, connection)| {
                connection.has_no_answer_pending()
                    && now.saturating_duration_since(connection.last_activity())
                        >= self.limits.reclaim_after
            })
            .min_by_key(|(_, connection)| connection.last_activity())
            .map(|(token, _)| *token)
    }

    fn close(&mut self, token: u64) {
        if let Some(connection) = self.connections.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                connection.stream().as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn close_idle(&mut self, now: Instant) {
        let idle: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| {
                now.saturating_duration_since(connection.last_activity())
                    >= self.limits.idle_timeout
            })
            .map(|(token, _)| *token)
            .collect();
        for token in idle {
            self.close(token);
        }
    }

    fn pause_accepting(&mut self, now: Instant) {
        let paused = self.epoll.ctl(
            ControlOperation::Modify,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::empty(), LISTENER_TOKEN),
        );
        if paused.is_ok() {
            self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        }
    }

    fn resume_accepting_if_due(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            let resumed = self.epoll.ctl(
                ControlOperation::Modify,
                self.listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            );
            self.accept_paused_until = match resumed {
                Ok(()) => None,
                Err(_) => Some(now + ACCEPT_PAUSE),
            };
        }
    }
}
