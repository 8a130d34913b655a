//! The per-VM control API: HTTP/JSON on a Unix socket, served by the event
//! loop. Usable by hand:
//!
//! ```text
//! curl --unix-socket api.sock http://localhost/vm
//! curl --unix-socket api.sock -X PUT http://localhost/vm/pause
//! curl --unix-socket api.sock -X PUT http://localhost/vm/resume
//! curl --unix-socket api.sock -X PUT -d '{"dir":"/tmp/snap"}' http://localhost/vm/snapshot
//! curl --unix-socket api.sock -X PUT -d '{"requested_mib":256}' http://localhost/vm/memory
//! curl --unix-socket api.sock -X PUT http://localhost/vm/shutdown
//! curl --unix-socket api.sock -X PUT http://localhost/vm/start    # a pooled VM
//! ```
//! See docs/arrow-vmm.md ("Control API") for access control, timeouts and
//! where snapshots may be written.

pub mod http;
pub mod snapshot_dir;
pub mod socket;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use crate::app_spec::AppSpec;
use crate::runtime::Runtime;
use http::{Parse, Request, Response};
pub use snapshot_dir::SnapshotPolicy;
pub use socket::PeerPolicy;

/// Most connections served at once; when full, the oldest is closed to make
/// room, so silent clients cannot lock the API out.
const MAX_CONNECTIONS: usize = 16;
/// A connection must have sent its request and taken its whole response
/// within this time; then it is closed.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How often expired connections are looked for while any are open.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Who may connect and where snapshots may go. The default: arrow-vmm's own
/// user and root; snapshots to any absolute path.
#[derive(Debug, Clone, Default)]
pub struct ApiPolicy {
    pub peers: PeerPolicy,
    pub snapshots: SnapshotPolicy,
}

/// One client: its request so far, then the response still to be written.
struct Conn {
    stream: UnixStream,
    request: Vec<u8>,
    /// Response bytes and how many were written.
    response: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// The listening socket and the connections being served. Nothing blocks:
/// reads and writes are non-blocking, a slow reader keeps its unsent bytes
/// until its socket is writable, and every connection has a deadline.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<i32, Conn>,
    runtime: Arc<Mutex<Runtime>>,
    policy: ApiPolicy,
    timer: TimerFd,
    timer_armed: bool,
}

impl ApiServer {
    /// Binds `path` (which must not exist) with mode 0600.
    pub fn bind(
        path: &Path,
        runtime: Arc<Mutex<Runtime>>,
        policy: ApiPolicy,
    ) -> std::io::Result<Self> {
        let listener = socket::bind_private(path)?;
        listener.set_nonblocking(true)?;
        // Created before the event loop's seccomp filter (which allows only
        // timerfd_settime).
        let timer = TimerFd::new()?;
        Ok(Self {
            listener,
            path: path.into(),
            conns: HashMap::new(),
            runtime,
            policy,
            timer,
            timer_armed: false,
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            match socket::peer_uid(&stream) {
                Ok(uid) if self.policy.peers.allows(uid) => {}
                other => {
                    tracing::warn!(peer = ?other.ok(), "control API: connection from a user not allowed (--api-allow-uid); closed");
                    let mut stream = stream;
                    let body =
                        Response::error(403, "this user may not use the control API").to_bytes();
                    let _ = stream.write(&body);
                    continue;
                }
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                if let Some(oldest) = self
                    .conns
                    .iter()
                    .min_by_key(|(_, c)| c.deadline)
                    .map(|(fd, _)| *fd)
                {
                    tracing::debug!("control API: too many connections; closing the oldest");
                    self.close(oldest, ops);
                }
            }
            let fd = stream.as_raw_fd();
            if ops
                .add(Events::new(&stream, EventSet::IN | EventSet::READ_HANG_UP))
                .is_ok()
            {
                self.conns.insert(
                    fd,
                    Conn {
                        stream,
                        request: Vec::new(),
                        response: None,
                        deadline: Instant::now() + CONNECTION_TIMEOUT,
                    },
                );
            }
        }
        self.arm_timer();
    }

    fn arm_timer(&mut self) {
        let want = !self.conns.is_empty();
        if want != self.timer_armed {
            let r = if want {
                self.timer.reset(SWEEP_INTERVAL, Some(SWEEP_INTERVAL))
            } else {
                self.timer.clear()
            };
            if r.is_ok() {
                self.timer_armed = want;
            }
        }
    }

    fn close(&mut self, fd: i32, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&fd) {
            // Removing the fd from epoll; the interest set does not matter.
            let _ = ops.remove(Events::new(&c.stream, EventSet::IN));
        }
    }

    fn sweep(&mut self, ops: &mut EventOps) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let expired: Vec<i32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            tracing::debug!("control API: connection timed out; closed");
            self.close(fd, ops);
        }
        self.arm_timer();
    }

    fn read(&mut self, fd: i32, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut closed = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    conn.request.extend_from_slice(&chunk[..n]);
                    if conn.request.len() > http::MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let response = match http::parse(&conn.request) {
            Parse::Partial if !closed => return,
            Parse::Partial => None,
            Parse::Bad(msg) => Some(Response::error(400, msg)),
            Parse::Complete(req) => Some(self.route(&req)),
        };
        match response {
            None => self.close(fd, ops),
            Some(r) => {
                if let Some(conn) = self.conns.get_mut(&fd) {
                    conn.request = Vec::new();
                    conn.response = Some((r.to_bytes(), 0));
                    let _ = ops.modify(Events::new(&conn.stream, EventSet::OUT));
                }
                self.write(fd, ops);
            }
        }
    }

    /// Writes what the socket takes now; the rest waits for EPOLLOUT.
    fn write(&mut self, fd: i32, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let Some((bytes, pos)) = conn.response.as_mut() else {
            return;
        };
        let done = loop {
            if *pos >= bytes.len() {
                break true;
            }
            match conn.stream.write(&bytes[*pos..]) {
                Ok(0) => break true,
                Ok(n) => *pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        if done {
            self.close(fd, ops);
        }
    }

    fn route(&self, req: &Request) -> Response {
        tracing::debug!(method = %req.method, path = %req.path, "control API request");
        let mut rt = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        let path = req.path.split('?').next().unwrap_or("");
        let action = matches!(req.method.as_str(), "PUT" | "POST");
        match (path, req.method.as_str()) {
            ("/vm", "GET") | ("/", "GET") => Response::ok(rt.describe()),
            ("/vm/pause", _) if action => rt.pause().map(Response::ok).unwrap_or_else(|e| e),
            ("/vm/resume", _) if action => rt.resume().map(Response::ok).unwrap_or_else(|e| e),
            ("/vm/shutdown", _) if action => Response::ok(rt.shutdown()),
            ("/vm/start", _) if action => match start_body(&req.body) {
                Ok(start) => rt.start(start).map(Response::ok).unwrap_or_else(|e| e),
                Err(e) => e,
            },
            ("/vm/snapshot", _) if action => {
                let dir = serde_json::from_slice::<serde_json::Value>(&req.body)
                    .ok()
                    .and_then(|v| v.get("dir").and_then(|d| d.as_str()).map(PathBuf::from));
                match dir.map(|d| self.policy.snapshots.resolve(&d)) {
                    Some(Ok(dir)) => rt.snapshot(&dir).map(Response::ok).unwrap_or_else(|e| e),
                    Some(Err(msg)) => Response::error(403, msg),
                    None => Response::error(
                        400,
                        r#"body must be JSON like {"dir": "/path/to/new/snapshot"}"#,
                    ),
                }
            }
            ("/vm/memory", "GET") => Response::ok(rt.memory()),
            ("/vm/memory", "PUT" | "PATCH") => match requested_mib(&req.body) {
                Ok(mib) => rt.set_memory(mib).map(Response::ok).unwrap_or_else(|e| e),
                Err(msg) => Response::error(400, msg),
            },
            (
                "/vm" | "/" | "/vm/pause" | "/vm/resume" | "/vm/shutdown" | "/vm/snapshot"
                | "/vm/start" | "/vm/memory",
                _,
            ) => {
                Response::error(405, format!("{} is not allowed on {path}", req.method))
            }
            _ => Response::error(
                404,
                format!(
                    "no such endpoint {path}: use GET /vm, PUT /vm/pause|resume|snapshot|memory|shutdown|start"
                ),
            ),
        }
    }
}

/// What `PUT /vm/start` asks for: nothing (a plain pooled restore), or for a
/// clone of a generic template `{"app": AppSpec, "image_base": "/path"?,
/// "volumes_base": "/path"?, "fs": [{"tag": "vol0", "socket": "/path"}]?}`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// What the clone runs.
    pub app: Option<AppSpec>,
    /// The image's base (EROFS), mapped into the template's image slot (pmem0).
    pub image_base: Option<PathBuf>,
    /// The packed volume image (EROFS), mapped into the template's volume
    /// slot (pmem1).
    pub volumes_base: Option<PathBuf>,
    /// Backends for the template's vhost-user-fs slots.
    #[serde(default)]
    pub fs: Vec<crate::devices::virtio::fs::FsConfig>,
}

/// Parses a `PUT /vm/start` body (empty or a [`StartRequest`]).
pub(crate) fn start_body(body: &[u8]) -> Result<StartRequest, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StartRequest::default());
    }
    let s = serde_json::from_slice::<StartRequest>(body).map_err(|e| {
        Response::error(
            400,
            format!(r#"body must be empty or {{"app": {{"app": "/path", "args": [], "env": ["K=V"], "hostname": "", "volumes": []}}, "image_base": "/path", "volumes_base": "/path", "fs": [{{"tag": "vol0", "socket": "/path"}}]}} (all but "app" optional): {e}"#),
        )
    })?;
    for f in &s.fs {
        if crate::devices::virtio::fs::validate_tag(&f.tag).is_err()
            || f.socket.as_os_str().is_empty()
        {
            return Err(Response::error(
                400,
                format!("fs entry {:?}: tag must be 1 to 36 characters of A-Z a-z 0-9 _ - and socket a path", f.tag),
            ));
        }
    }
    Ok(s)
}

/// The `requested_mib` of a `PUT /vm/memory` body.
fn requested_mib(body: &[u8]) -> Result<u64, String> {
    const USAGE: &str =
        r#"body must be JSON like {"requested_mib": 256} (a whole, non-negative number of MiB)"#;
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| USAGE.to_string())?;
    match v.get("requested_mib") {
        Some(n) => n
            .as_u64()
            .ok_or_else(|| format!("requested_mib {n} is not allowed: {USAGE}")),
        None => Err(USAGE.into()),
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the control socket");
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the control API timer");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if fd == self.timer.as_raw_fd() {
            self.sweep(ops);
        } else if self.conns.get(&fd).is_some_and(|c| c.response.is_some()) {
            self.write(fd, ops);
        } else {
            self.read(fd, ops);
        }
    }
}
