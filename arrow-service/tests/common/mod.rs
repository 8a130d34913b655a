//! Test harness: a real `arrowd` on a temp socket, DB and image store, spawning the real
//! `arrow-vmm` with the freestanding test guest (vmm/tests/guests) as its kernel.
#![allow(dead_code)]

pub mod cni;
pub mod cri;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow_service::client::{ClientError, Endpoint};
use hyper::Method;
use serde_json::Value;

/// Every guest and every wait is bounded.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The freestanding test guest (built by arrow-e2e with the system gcc).
pub fn guest_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let out = tmp().join(format!("arrowd-test-guest-{}.elf", std::process::id()));
        arrow_e2e::build_test_guest(&out);
        out
    })
}

/// `arrow-vmm` next to our binaries; built with cargo when missing.
pub fn vmm_bin() -> &'static Path {
    static VMM: OnceLock<PathBuf> = OnceLock::new();
    VMM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_arrowd")).parent().unwrap();
        let vmm = dir.join("arrow-vmm");
        if !vmm.is_file() {
            let st = Command::new(env!("CARGO"))
                .args(["build", "-p", "arrow-vmm", "--bin", "arrow-vmm"])
                .current_dir(repo_root())
                .status()
                .expect("run cargo build -p arrow-vmm");
            assert!(st.success() && vmm.is_file(), "cannot build arrow-vmm");
        }
        vmm
    })
}

/// Builds the release `arrow-vmm` next to the release arrowd, for the benches:
/// `cargo bench` builds only this crate's binaries, and [`vmm_bin`] would take a
/// stale one.
pub fn build_release_vmm() {
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "arrow-vmm",
            "--bin",
            "arrow-vmm",
        ])
        .current_dir(repo_root())
        .status()
        .expect("cargo build --release -p arrow-vmm");
    assert!(st.success(), "cargo build --release -p arrow-vmm failed");
}

/// A tiny static app (examples/apps/hello) to package; the test guest ignores it.
fn app_binary() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = tmp().join(format!("arrowd-hello-{}", std::process::id()));
        // Installed from Debian's musl-tools when missing, as `asdk build` does.
        let musl_gcc = asdk::build::find_or_install_musl_gcc(&asdk::build::Progress::default())
            .expect("musl-gcc is needed to build the test app");
        let st = Command::new(musl_gcc)
            .args(["-static", "-Os", "-o"])
            .arg(&out)
            .arg(repo_root().join("examples/apps/hello/hello.c"))
            .arg(format!(
                "-I{}",
                repo_root().join("examples/apps/include").display()
            ))
            .status()
            .expect("musl-gcc runs");
        assert!(st.success(), "musl-gcc failed");
        std::fs::read(out).unwrap()
    })
}

/// The real guest kernel: ARROW_TEST_KERNEL, or the cached build of
/// guest-kernel/build.sh (built on first use).
pub fn real_kernel() -> String {
    std::env::var_os("ARROW_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(arrow_e2e::kernel)
        .to_string_lossy()
        .into_owned()
}

pub fn require_kvm() {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("these tests run real guests and need /dev/kvm");
}

/// A running arrowd and its temp directories.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub ep: Endpoint,
    pub extra: Vec<String>,
}

impl Daemon {
    pub fn new() -> Daemon {
        Self::with_args(&[])
    }

    /// arrowd with the real guest kernel ([`real_kernel`]) and the tests' command
    /// line, plus `extra`.
    pub fn with_real_kernel(extra: &[&str]) -> Daemon {
        let kernel = real_kernel();
        let mut args = vec![
            "--kernel",
            kernel.as_str(),
            "--kernel-cmdline",
            "console=ttyS0 reboot=k panic=-1",
        ];
        args.extend_from_slice(extra);
        Daemon::with_args(&args)
    }

    pub fn with_args(extra: &[&str]) -> Daemon {
        require_kvm();
        let dir = tempfile::Builder::new()
            .prefix("arrowd")
            .tempdir_in(tmp())
            .unwrap();
        let ep = Endpoint::Unix(dir.path().join("arrowd.sock"));
        let mut d = Daemon {
            dir,
            child: None,
            ep,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.start();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("arrowd.sock")
    }

    pub fn cri_socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn run_root(&self) -> PathBuf {
        self.dir.path().join("state/instances")
    }

    /// Starts arrowd and waits until it answers.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("arrowd.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_arrowd"));
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--cri-socket")
            .arg(self.cri_socket())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--store")
            .arg(self.store_dir())
            .arg("--vmm")
            .arg(vmm_bin());
        // The freestanding test guest unless the test brings its own kernel.
        if !self.extra.iter().any(|a| a == "--kernel") {
            cmd.arg("--kernel")
                .arg(guest_elf())
                .args(["--kernel-cmdline", "console=ttyS0"]);
        }
        // Existing tests expect what they start to boot as before (and the test guest
        // has no app wait point): the generic template only where a test asks for it.
        if !self
            .extra
            .iter()
            .any(|a| a.starts_with("--generic-template"))
        {
            cmd.arg("--generic-template=false");
        }
        // The host's CNI configuration (if any) stays out of tests that do not bring one.
        if !self.extra.iter().any(|a| a == "--cni-conf-dir") {
            cmd.arg("--cni-conf-dir")
                .arg(self.dir.path().join("no-cni"));
        }
        if !self.extra.iter().any(|a| a == "--netns-dir") {
            cmd.arg("--netns-dir").arg(self.dir.path().join("netns"));
        }
        let child = cmd
            .args(&self.extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn arrowd");
        self.child = Some(child);
        let start = Instant::now();
        while self.get("/version").is_err() {
            assert!(
                start.elapsed() < TIMEOUT,
                "arrowd did not come up: {}",
                self.log()
            );
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("arrowd exited with {st}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("arrowd.log")).unwrap_or_default()
    }

    /// Sends `sig` to arrowd and reaps it.
    pub fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            kill(c.id() as i32, sig);
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                assert!(start.elapsed() < TIMEOUT, "arrowd did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Packages the hello binary as image `name` whose argv carries the test-guest words.
    pub fn image(&self, name: &str, args: &[&str]) {
        let store = asdk::Store::open(self.store_dir()).unwrap();
        let file = asdk::spec::SpecFile {
            name: Some(name.to_owned()),
            args: args.iter().map(|s| s.to_string()).collect(),
            memory_mib: Some(32),
            ..Default::default()
        };
        let (spec, files) = asdk::Spec::resolve(&file, name, "1.0.0", Path::new(".")).unwrap();
        let built = asdk::image::assemble(app_binary(), &spec, &files).expect("assemble");
        store
            .add(&built, &[asdk::Reference::new(name, "latest").unwrap()])
            .unwrap();
    }

    /// One API call; `Err((status, message))` for 4xx/5xx.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (u16, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let body = body.map(|b| b.to_string().into_bytes());
            match self.ep.send(method, path, body).await {
                Ok(resp) => {
                    use http_body_util::BodyExt;
                    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                    Ok(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }))
                }
                Err(ClientError::Api { status, message }) => Err((status.as_u16(), message)),
                Err(e) => Err((0, e.to_string())),
            }
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, (u16, String)> {
        self.call(Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: Option<Value>) -> Result<Value, (u16, String)> {
        self.call(Method::POST, path, body)
    }

    /// Runs actl against this daemon, bounded by TIMEOUT.
    pub fn actl(&self, args: &[&str]) -> Output {
        let child = Command::new(env!("CARGO_BIN_EXE_actl"))
            .args(args)
            .env("ARROW_HOST", format!("unix://{}", self.socket().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child)
    }

    /// Waits until instance `id` reaches `state`.
    pub fn wait_state(&self, id: &str, state: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.get(&format!("/instances/{id}")).unwrap();
            if v["state"] == state {
                return v;
            }
            assert!(start.elapsed() < TIMEOUT, "{id} never reached {state}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `DELETE /instances/{id}?force=true` (`actl rm -f`).
    pub fn remove_force(&self, id: &str) {
        self.call(
            hyper::Method::DELETE,
            &format!("/instances/{id}?force=true"),
            None,
        )
        .unwrap();
    }

    /// Live arrow-vmm processes of this daemon's instances.
    pub fn vmms(&self) -> Vec<arrow_service::procfs::FoundVmm> {
        arrow_service::procfs::scan_vmms(&self.run_root())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        for v in self.vmms() {
            arrow_service::procfs::signal(v.pid, v.start, libc::SIGKILL);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 20 ms until it holds; panics after [`TIMEOUT`].
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child with a timeout, collecting its output.
pub fn wait_output(child: Child) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            kill(pid, libc::SIGKILL);
            panic!("command did not finish within {TIMEOUT:?}");
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sends a signal to a process the test started.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe { libc::kill(pid, sig) };
}
