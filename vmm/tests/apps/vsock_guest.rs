//! Shared by `tests/vsock_kvm.rs` and the vsock, clone and memhp benches: builds the guest
//! kernel (through `guest-kernel/build.sh`) and an initramfs holding
//! `vsock-peer` (as `/app`) and the `vsock-echo` sample app, boots it under
//! `arrow-vmm` (or Firecracker, for the bench), and speaks the host side of
//! the Firecracker-compatible vsock Unix-socket protocol.
//!
//! Every wait is bounded by the guest's deadline; a guest is killed when
//! its handle is dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Port vsock-echo listens on (its default).
pub const ECHO_PORT: u32 = 5000;
/// Port of vsock-peer's bulk (sink / source) server.
pub const BULK_PORT: u32 = 5001;
/// Host port the guest dials (`<uds>_6000`).
pub const DIAL_PORT: u32 = 6000;
/// Console line vsock-echo prints once it listens.
pub const ECHO_READY: &str = "listening on vsock port 5000";
/// Console line vsock-peer prints once its bulk server listens.
pub const BULK_READY: &str = "vsock-peer: bulk listening on port 5001";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Fails (with the reason) unless /dev/kvm can be opened read-write.
pub fn check_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened: {e}"))
}

/// The guest kernel: `$ARROW_KERNEL` if set, else what
/// `guest-kernel/build.sh` prints on its last stdout line (it builds or
/// reuses its cache).
pub fn kernel() -> Result<PathBuf, String> {
    if let Some(k) = std::env::var_os("ARROW_KERNEL") {
        let k = PathBuf::from(k);
        return if k.is_file() {
            Ok(k)
        } else {
            Err(format!("ARROW_KERNEL={} is not a file", k.display()))
        };
    }
    let script = workspace_root().join("guest-kernel/build.sh");
    if !script.is_file() {
        return Err(format!("{} does not exist", script.display()));
    }
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    if !out.status.success() {
        return Err(format!(
            "guest-kernel/build.sh failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| "guest-kernel/build.sh printed no path".to_string())?;
    let path = PathBuf::from(path);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "guest-kernel/build.sh printed {}, which is not a file",
            path.display()
        ))
    }
}

pub fn musl_build(src: &Path, out: &Path) -> Result<(), String> {
    let o = Command::new("musl-gcc")
        .args(["-static", "-O2", "-s", "-o"])
        .arg(out)
        .arg(src)
        .output()
        .map_err(|e| format!("cannot run musl-gcc (apt-get install musl-tools): {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "musl-gcc {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// A newc ("070701") cpio archive of regular files, as the kernel unpacks
/// into the initramfs.
pub fn newc_cpio(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>) {
        while v.len() & 3 != 0 {
            v.push(0);
        }
    }
    fn header(v: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) {
        // ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check
        #[rustfmt::skip]
        let fields = [ino, mode, 0, 0, 1, 0, size as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        v.extend_from_slice(b"070701");
        for f in fields {
            v.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        pad(v);
    }
    let mut v = Vec::new();
    for (i, (name, perm, data)) in files.iter().enumerate() {
        header(&mut v, i as u32 + 1, 0o100000 | perm, data.len(), name);
        v.extend_from_slice(data);
        pad(&mut v);
    }
    header(&mut v, 0, 0, 0, "TRAILER!!!");
    v
}

/// Builds `/app` = vsock-peer and `/vsock-echo` (examples/apps) with
/// `musl-gcc -static` and packs them into `dir/vsock.cpio`.
pub fn initrd(dir: &Path) -> Result<PathBuf, String> {
    let root = workspace_root();
    let peer = dir.join("vsock-peer");
    let echo = dir.join("vsock-echo");
    musl_build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/vsock-peer.c"),
        &peer,
    )?;
    musl_build(&root.join("examples/apps/vsock-echo/vsock-echo.c"), &echo)?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let cpio = newc_cpio(&[
        ("app", 0o755, &read(&peer)?),
        ("vsock-echo", 0o755, &read(&echo)?),
    ]);
    let out = dir.join("vsock.cpio");
    std::fs::write(&out, cpio).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// The app's argv (after `--` on the kernel command line).
pub fn app_args(dials: u32) -> String {
    format!(
        "--dial {DIAL_PORT} --dials {dials} --bulk {BULK_PORT} --exec /vsock-echo --port {ECHO_PORT}"
    )
}

/// The Firecracker binary the benches compare with (`FIRECRACKER_BIN`), or why
/// there is none.
pub fn firecracker_bin() -> Result<PathBuf, String> {
    let Some(bin) = std::env::var_os("FIRECRACKER_BIN") else {
        return Err(
            "FIRECRACKER_BIN is not set (point it at a firecracker built from source)".into(),
        );
    };
    let bin = PathBuf::from(bin);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("FIRECRACKER_BIN={} is not a file", bin.display()))
    }
}

/// Which VMM runs the guest.
#[derive(Clone, Debug)]
pub enum Vmm {
    Arrow(PathBuf),
    /// Firecracker binary; configured through `--config-file --no-api`.
    Firecracker(PathBuf),
}

/// A running guest; killed on drop.
pub struct Guest {
    child: Child,
    console: Arc<Mutex<String>>,
    pub uds: PathBuf,
    pub deadline: Instant,
    pub started: Instant,
}

/// Flags the guest kernel needs on nested-PVM hosts (ENVIRONMENT.md); the
/// Arrow VMM adds them itself, Firecracker needs them on its command line.
pub const COMPAT_FLAGS: &str = "noxsave clearcpuid=smap,smep,popcnt,cx16 reboot=k rodata=off";

impl Guest {
    /// Boots `kernel` + `initrd` with the vsock socket at `uds` and guest
    /// CID 3; the guest is killed after `timeout`.
    pub fn boot(
        vmm: &Vmm,
        kernel: &Path,
        initrd: &Path,
        uds: &Path,
        app_args: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut cmd;
        match vmm {
            Vmm::Arrow(bin) => {
                cmd = Command::new(bin);
                cmd.arg("run")
                    .arg("--kernel")
                    .arg(kernel)
                    .arg("--initrd")
                    .arg(initrd)
                    .arg("--cmdline")
                    .arg(format!(
                        "console=ttyS0 reboot=k panic=-1 arrow.app=/app -- {app_args}"
                    ))
                    .args(["--memory", "128M", "--vsock-cid", "3", "--vsock-uds"])
                    .arg(uds)
                    .arg("--api-sock")
                    .arg(api_sock(uds));
            }
            Vmm::Firecracker(bin) => {
                let dir = uds.parent().unwrap_or(Path::new("/tmp"));
                let cfg = serde_json::json!({
                    "boot-source": {
                        "kernel_image_path": kernel,
                        "initrd_path": initrd,
                        "boot_args": format!(
                            "console=ttyS0 panic=-1 {COMPAT_FLAGS} arrow.app=/app -- {app_args}"
                        ),
                    },
                    "drives": [],
                    "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
                    "vsock": { "guest_cid": 3, "uds_path": uds },
                });
                let cfg_path = dir.join("firecracker.json");
                std::fs::write(&cfg_path, cfg.to_string())
                    .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
                cmd = Command::new(bin);
                cmd.arg("--no-api")
                    .arg("--config-file")
                    .arg(&cfg_path)
                    .args(["--level", "Warn", "--log-path"])
                    .arg(dir.join("firecracker.log"));
            }
        }
        Self::spawn(cmd, vmm, uds, timeout)
    }

    /// Restores an Arrow snapshot as a clone with guest CID `cid` and its
    /// vsock socket at `uds`.
    pub fn restore_clone(
        bin: &Path,
        snapshot: &Path,
        uds: &Path,
        cid: u32,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut cmd = Command::new(bin);
        cmd.arg("restore")
            .arg("--from")
            .arg(snapshot)
            .arg("--clone")
            .arg("--vsock-cid")
            .arg(cid.to_string())
            .arg("--vsock-uds")
            .arg(uds);
        Self::spawn(cmd, &Vmm::Arrow(bin.to_path_buf()), uds, timeout)
    }

    pub fn spawn(
        mut cmd: Command,
        vmm: &Vmm,
        uds: &Path,
        timeout: Duration,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {vmm:?}: {e}"))?;
        let console = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = console.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(pipe);
                let mut line = Vec::new();
                while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    let s = String::from_utf8_lossy(&line);
                    if let Ok(mut c) = console.lock() {
                        c.push_str(&s);
                    }
                    line.clear();
                }
            });
        }
        Ok(Self {
            child,
            console,
            uds: uds.to_path_buf(),
            deadline: started + timeout,
            started,
        })
    }

    pub fn console(&self) -> String {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Err when the VMM exited or the deadline passed.
    pub fn check_alive(&mut self) -> Result<(), String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(format!("the VMM exited early ({st})"));
        }
        if Instant::now() >= self.deadline {
            return Err("guest deadline passed".into());
        }
        Ok(())
    }

    /// Waits until the console shows `needle`.
    pub fn wait_for(&mut self, needle: &str) -> Result<Duration, String> {
        loop {
            if self.console().contains(needle) {
                return Ok(self.started.elapsed());
            }
            self.check_alive()
                .map_err(|e| format!("waiting for {needle:?}: {e}"))?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    /// Host-initiated connection: `CONNECT port` on the Unix socket, then
    /// waits for `OK <n>`. Returns the stream and the CONNECT → OK time.
    pub fn connect(&mut self, port: u32) -> Result<(UnixStream, Duration), String> {
        let mut s = UnixStream::connect(&self.uds)
            .map_err(|e| format!("connect {}: {e}", self.uds.display()))?;
        s.set_read_timeout(Some(self.remaining()))
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(|e| format!("CONNECT {port}: {e}"))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") {
            match s.read(&mut b) {
                Ok(1) => line.push(b[0]),
                Ok(_) => return Err(format!("CONNECT {port}: closed (refused)")),
                Err(e) => return Err(format!("CONNECT {port}: {e}")),
            }
            if line.len() > 32 {
                return Err(format!("CONNECT {port}: bad reply {line:?}"));
            }
        }
        let dt = t0.elapsed();
        let text = String::from_utf8_lossy(&line);
        if !text.starts_with("OK ") {
            return Err(format!("CONNECT {port}: reply {text:?}"));
        }
        Ok((s, dt))
    }

    /// Retries `connect` until the guest listens (refusals before that are
    /// expected) or the deadline passes.
    pub fn connect_retry(&mut self, port: u32) -> Result<(UnixStream, Duration), String> {
        loop {
            match self.connect(port) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.check_alive()
                        .map_err(|d| format!("{d}; last CONNECT error: {e}"))?;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Waits for the guest to dial `listener` (bound at `<uds>_<port>`).
    pub fn accept(&mut self, listener: &UnixListener) -> Result<UnixStream, String> {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(|e| e.to_string())?;
                    return Ok(s);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.check_alive()
                        .map_err(|d| format!("waiting for the guest to dial: {d}"))?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        }
    }

    /// Sends `data` through an echo peer and reads it back; returns the
    /// elapsed time. Verifies every byte.
    pub fn echo_roundtrip(&self, s: &UnixStream, data: &Arc<Vec<u8>>) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let d = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&d));
        let mut r = s.try_clone().map_err(|e| e.to_string())?;
        r.set_read_timeout(Some(self.remaining()))
            .map_err(|e| e.to_string())?;
        let mut got = vec![0u8; data.len()];
        let mut off = 0;
        while off < got.len() {
            match r.read(&mut got[off..]) {
                Ok(0) => return Err(format!("echo: EOF after {off} of {} bytes", data.len())),
                Ok(n) => off += n,
                Err(e) => return Err(format!("echo: after {off} of {} bytes: {e}", data.len())),
            }
        }
        let dt = t0.elapsed();
        writer
            .join()
            .map_err(|_| "writer thread panicked".to_string())?
            .map_err(|e| format!("echo write: {e}"))?;
        if got != **data {
            let first = got.iter().zip(data.iter()).position(|(a, b)| a != b);
            return Err(format!("echo: data differs (first at {first:?})"));
        }
        Ok(dt)
    }

    /// Host → guest: streams `len` bytes into the bulk sink; returns the
    /// time until the guest confirmed the count.
    pub fn sink(&mut self, len: usize) -> Result<Duration, String> {
        let (mut s, _) = self.connect_retry(BULK_PORT)?;
        let chunk = vec![0x5au8; 1 << 16];
        let t0 = Instant::now();
        let mut req = vec![b'S'];
        req.extend_from_slice(&(len as u64).to_le_bytes());
        s.write_all(&req).map_err(|e| e.to_string())?;
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])
                .map_err(|e| format!("sink write: {e}"))?;
            left -= n;
        }
        let mut le = [0u8; 8];
        s.read_exact(&mut le)
            .map_err(|e| format!("sink count: {e}"))?;
        let dt = t0.elapsed();
        let got = u64::from_le_bytes(le);
        if got != len as u64 {
            return Err(format!("sink counted {got} of {len} bytes"));
        }
        Ok(dt)
    }

    /// Guest → host: asks the bulk source for `len` bytes; returns the time
    /// until all arrived.
    pub fn source(&mut self, len: usize) -> Result<Duration, String> {
        let (mut s, _) = self.connect_retry(BULK_PORT)?;
        let t0 = Instant::now();
        let mut req = vec![b'G'];
        req.extend_from_slice(&(len as u64).to_le_bytes());
        s.write_all(&req).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        while got < len {
            match s.read(&mut buf) {
                Ok(0) => return Err(format!("source: EOF after {got} of {len} bytes")),
                Ok(n) => got += n,
                Err(e) => return Err(format!("source: after {got} of {len} bytes: {e}")),
            }
        }
        Ok(t0.elapsed())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The VMM's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (until the deadline) for the VMM to exit; its exit code.
    pub fn wait_exit(&mut self) -> Result<i32, String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return st.code().ok_or_else(|| format!("VMM killed: {st}")),
                Ok(None) if Instant::now() >= self.deadline => {
                    return Err("guest deadline passed before the VMM exited".into())
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The control socket `Guest::boot` gives an Arrow guest.
pub fn api_sock(uds: &Path) -> PathBuf {
    let mut p = uds.to_path_buf().into_os_string();
    p.push(".api");
    PathBuf::from(p)
}

/// One request on arrow-vmm's control socket; returns the status code and
/// the body.
pub fn api(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    api_within(sock, method, path, body, Duration::from_secs(120))
}

/// One HTTP/1.1 request on a Unix socket, reads bounded by `timeout`;
/// returns status and body. Reads by Content-Length: Firecracker keeps the
/// connection open after its answer, arrow-vmm closes it.
pub fn api_within(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("{method} {path}: connection closed before a reply")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{method} {path}: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line in {head:?}"))?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = buf[head_end..].to_vec();
    match len {
        Some(n) => {
            while body.len() < n {
                match s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(k) => body.extend_from_slice(&chunk[..k]),
                    Err(e) => return Err(format!("{method} {path}: body: {e}")),
                }
            }
        }
        // 204 has no body; otherwise the server closes after the body.
        None if status == 204 => {}
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `len` bytes of a pattern that catches reordering and loss.
pub fn pattern(len: usize) -> Arc<Vec<u8>> {
    Arc::new(
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect(),
    )
}

/// Path of the guest-dial listener for `uds`.
pub fn side_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.to_path_buf().into_os_string();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// One host-initiated CONNECT to `port` on `vsock` (an echo server such as
/// vsock-echo) and `msg` echoed back, bounded by `timeout`.
pub fn echo_once(vsock: &Path, port: u32, msg: &[u8], timeout: Duration) -> Result<(), String> {
    let mut s = UnixStream::connect(vsock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err("CONNECT: closed (refused)".into()),
            Err(e) => return Err(format!("CONNECT: {e}")),
        }
        if line.len() > 32 {
            return Err(format!("CONNECT: bad reply {line:?}"));
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(format!(
            "CONNECT: reply {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    s.write_all(msg).map_err(|e| format!("echo write: {e}"))?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)
        .map_err(|e| format!("echo read: {e}"))?;
    if got != msg {
        return Err(format!("echo: got {got:?}, sent {msg:?}"));
    }
    Ok(())
}
