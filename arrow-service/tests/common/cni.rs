//! A private CNI network for tests: a bridge of its own (`arw<tag><pid>`), host-local
//! addresses from a /24 of 10.213.0.0/16 used only there, no gateway on the host (nothing
//! leaves the machine), and client namespaces attached to the same bridge by the same
//! plugins. The plugins come from Debian's `containernetworking-plugins`, installed with
//! apt-get on first use.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_service::cni::{Attachment, Cni};
use arrow_service::netns;

/// Debian's plugin directory.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// The plugin directory, after installing `containernetworking-plugins` if `bridge` is
/// missing (one installer at a time; the others wait on the lock, then find it).
pub fn plugins() -> PathBuf {
    let dir = PathBuf::from(DEBIAN_CNI_DIR);
    let have = || dir.join("bridge").is_file() && dir.join("host-local").is_file();
    if have() {
        return dir;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("arrow-cni-plugins-install.lock"))
        .expect("open the install lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    if have() {
        return dir;
    }
    let install = || {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"])
            .args(["--no-install-recommends", "containernetworking-plugins"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // A fresh machine has no package lists yet.
        let _ = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "update", "-qq"])
            .status();
        assert!(
            install(),
            "cannot install Debian's containernetworking-plugins (are we root?)"
        );
    }
    assert!(
        have(),
        "containernetworking-plugins has no {DEBIAN_CNI_DIR}/bridge"
    );
    dir
}

/// A test's CNI network.
pub struct TestNet {
    pub dir: tempfile::TempDir,
    pub bridge: String,
    /// `10.213.<octet>`.
    pub prefix: String,
    pub conf_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub bin_dir: PathBuf,
}

impl TestNet {
    /// `tag`: one letter per test binary/test; `octet`: the /24 inside 10.213.0.0/16.
    pub fn new(tag: char, octet: u8) -> TestNet {
        let bin_dir = plugins();
        let dir = tempfile::Builder::new()
            .prefix("arrow-cni")
            .tempdir()
            .unwrap();
        let bridge = format!("arw{tag}{}", std::process::id());
        assert!(bridge.len() <= 15, "{bridge}");
        let net = TestNet {
            conf_dir: dir.path().join("net.d"),
            netns_dir: dir.path().join("netns"),
            ipam_dir: dir.path().join("ipam"),
            prefix: format!("10.213.{octet}"),
            bridge,
            bin_dir,
            dir,
        };
        std::fs::create_dir_all(&net.conf_dir).unwrap();
        net
    }

    /// arrowd's flags for this network.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--cni-conf-dir".into(),
            self.conf_dir.display().to_string(),
            "--cni-bin-dir".into(),
            // A missing directory first: the search goes on to the next.
            format!("/nonexistent/cni:{}", self.bin_dir.display()),
            "--netns-dir".into(),
            self.netns_dir.display().to_string(),
        ]
    }

    /// The network's name.
    pub fn name(&self) -> String {
        format!("arrow-test-{}", self.bridge)
    }

    /// Writes the bridge + host-local .conflist (`subnet` overrides the range, e.g. to
    /// make host-local fail).
    pub fn write_config(&self, subnet: Option<&str>) {
        let subnet = subnet
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}.0/24", self.prefix));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name(),
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "dataDir": self.ipam_dir,
                }
            }]
        });
        std::fs::write(
            self.conf_dir.join("10-arrow-test.conflist"),
            conf.to_string(),
        )
        .unwrap();
    }

    /// Files in the netns directory (pinned namespaces).
    pub fn namespaces(&self) -> Vec<String> {
        names(&self.netns_dir)
    }

    /// IPs host-local has handed out (its lease files).
    pub fn leases(&self) -> Vec<String> {
        names(&self.ipam_dir.join(self.name()))
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect()
    }

    /// The IPv4 addresses of `eth0` inside the namespace at `path`.
    pub fn addresses_in(path: &Path) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cni(&self) -> Cni {
        Cni::new(self.conf_dir.clone(), &self.bin_dir.display().to_string())
    }

    /// A client namespace on the same bridge (its own IP from the same range).
    pub fn client(&self, name: &str) -> Client {
        let path = self.dir.path().join(format!("client-{name}"));
        netns::create(&path).unwrap();
        let cni = self.cni();
        let net = cni.network().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let id = format!("client-{name}");
        let at = Attachment {
            container_id: &id,
            netns: &path,
            args: vec![],
        };
        let (res, _) = rt
            .block_on(cni.add(&net, &at))
            .expect("client namespace ADD");
        Client {
            path,
            id,
            ip: res.pod_ips()[0],
            cni,
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Anything a failed test left: namespaces, then the bridge (veths go with them).
        for n in self.namespaces() {
            let _ = netns::remove(&self.netns_dir.join(n));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// A network namespace on the test bridge, for connecting to pods.
pub struct Client {
    pub path: PathBuf,
    id: String,
    pub ip: IpAddr,
    cni: Cni,
}

impl Client {
    /// A TCP connection made from inside the client namespace (the socket keeps it).
    pub fn connect(&self, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        netns::run_in(&self.path, move || TcpStream::connect_timeout(&to, timeout))
            .map_err(std::io::Error::other)?
    }

    /// One line echoed by the app at `to`, or the error.
    pub fn echo_once(&self, to: SocketAddr, line: &str) -> std::io::Result<()> {
        let mut c = self.connect(to, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(15)))?;
        c.write_all(line.as_bytes())?;
        let mut buf = vec![0u8; line.len()];
        c.read_exact(&mut buf)?;
        if buf != line.as_bytes() {
            return Err(std::io::Error::other(format!(
                "echoed {:?}, sent {line:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        Ok(())
    }

    /// Retries [`Self::echo_once`] until it works (the app may still be booting); returns
    /// how long that took.
    pub fn echo(&self, to: SocketAddr, within: Duration) -> Duration {
        let start = Instant::now();
        let line = format!("ping {to} from {}\n", self.ip);
        loop {
            match self.echo_once(to, &line) {
                Ok(()) => return start.elapsed(),
                Err(e) => assert!(
                    start.elapsed() < within,
                    "no echo from {to} within {within:?}: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(net) = self.cni.network() {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let at = Attachment {
                    container_id: &self.id,
                    netns: &self.path,
                    args: vec![],
                };
                let _ = rt.block_on(self.cni.del(&net, &at, None));
            }
        }
        let _ = netns::remove(&self.path);
    }
}
