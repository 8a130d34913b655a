//! The per-VM control API: HTTP/JSON on a Unix socket, served by the event
//! loop. Usable by hand:
//!
//! ```text
//! curl --unix-socket api.sock http://localhost/vm
//! curl --unix-socket api.sock -X PUT http://localhost/vm/pause
//! curl --unix-socket api.sock -X PUT http://localhost/vm/resume
//! curl --unix-socket api.sock -X PUT -d '{"dir":"/tmp/snap"}' http://localhost/vm/snapshot
//! curl --unix-socket api.sock -X PUT http://localhost/vm/shutdown
//! curl --unix-socket api.sock -X PUT http://localhost/vm/start    # a pooled VM
//! ```
//! See docs/vmm-api.md for the full description.

pub mod http;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::runtime::Runtime;
use http::{Parse, Request, Response};

/// Most connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 16;

/// The listening socket and the connections being read.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<i32, (UnixStream, Vec<u8>)>,
    runtime: Arc<Mutex<Runtime>>,
}

impl ApiServer {
    /// Binds `path` (which must not exist).
    pub fn bind(path: &Path, runtime: Arc<Mutex<Runtime>>) -> std::io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.into(),
            conns: HashMap::new(),
            runtime,
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops
                .add(Events::new(&stream, EventSet::IN | EventSet::READ_HANG_UP))
                .is_ok()
            {
                self.conns.insert(fd, (stream, Vec::new()));
            }
        }
    }

    fn read(&mut self, fd: i32, ops: &mut EventOps) {
        let Some((stream, buf)) = self.conns.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut closed = false;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let response = match http::parse(buf) {
            Parse::Partial if !closed => return,
            Parse::Partial => None,
            Parse::Bad(msg) => Some(Response::error(400, msg)),
            Parse::Complete(req) => Some(self.route(&req)),
        };
        if let Some((mut stream, _)) = self.conns.remove(&fd) {
            let _ = ops.remove(Events::new(&stream, EventSet::IN | EventSet::READ_HANG_UP));
            if let Some(r) = response {
                r.send(&mut stream);
            }
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
            ("/vm/start", _) if action => rt.start().map(Response::ok).unwrap_or_else(|e| e),
            ("/vm/snapshot", _) if action => {
                let dir = serde_json::from_slice::<serde_json::Value>(&req.body)
                    .ok()
                    .and_then(|v| v.get("dir").and_then(|d| d.as_str()).map(PathBuf::from));
                match dir {
                    Some(dir) => rt.snapshot(&dir).map(Response::ok).unwrap_or_else(|e| e),
                    None => Response::error(
                        400,
                        r#"body must be JSON like {"dir": "/path/to/new/snapshot"}"#,
                    ),
                }
            }
            (
                "/vm" | "/" | "/vm/pause" | "/vm/resume" | "/vm/shutdown" | "/vm/snapshot"
                | "/vm/start",
                _,
            ) => {
                Response::error(405, format!("{} is not allowed on {path}", req.method))
            }
            _ => Response::error(
                404,
                format!(
                    "no such endpoint {path}: use GET /vm, PUT /vm/pause|resume|snapshot|shutdown|start"
                ),
            ),
        }
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
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.listener.as_raw_fd() {
            self.accept(ops);
        } else {
            self.read(events.fd(), ops);
        }
    }
}
