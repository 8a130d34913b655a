//! Exported ports: arrowd listens on a host TCP port and forwards each connection to the
//! instance's guest vsock port through the VMM's vsock Unix socket (`CONNECT <port>\n` →
//! `OK <hostport>\n`, then a byte stream).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::model::PortMapping;

/// Listeners of one instance; dropping it closes them.
#[derive(Debug, Default)]
pub struct Proxies {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Checks that `m`'s host address can be bound now (the listener is closed again).
pub fn check_bindable(m: &PortMapping) -> Result<()> {
    let addr = address(m)?;
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| port_error(m, &e))
}

fn address(m: &PortMapping) -> Result<SocketAddr> {
    let ip: std::net::IpAddr = m.host_ip.parse().map_err(|_| {
        Error::Invalid(format!(
            "bad host address {:?} in port mapping: give an IP address such as 127.0.0.1 or 0.0.0.0",
            m.host_ip
        ))
    })?;
    if m.host_port == 0 || m.guest_port == 0 {
        return Err(Error::Invalid(format!(
            "bad port mapping {}:{}: host and guest ports must be 1 or more (HOST:VSOCK, e.g. 8080:80)",
            m.host_port, m.guest_port
        )));
    }
    Ok(SocketAddr::new(ip, m.host_port))
}

fn port_error(m: &PortMapping, e: &std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        Error::Conflict(format!(
            "host port {}:{} is already in use: choose another host port (-p OTHER:{})",
            m.host_ip, m.host_port, m.guest_port
        ))
    } else {
        Error::Invalid(format!(
            "cannot listen on {}:{}: {e}; choose another address or port",
            m.host_ip, m.host_port
        ))
    }
}

/// Binds every mapping and starts forwarding to `vsock_uds`.
pub async fn start(instance: &str, ports: &[PortMapping], vsock_uds: &Path) -> Result<Proxies> {
    let mut proxies = Proxies::default();
    for m in ports {
        let listener = TcpListener::bind(address(m)?)
            .await
            .map_err(|e| port_error(m, &e))?;
        let uds = vsock_uds.to_owned();
        let guest_port = m.guest_port;
        let instance = instance.to_owned();
        proxies.tasks.push(tokio::spawn(async move {
            accept_loop(listener, uds, guest_port, instance).await;
        }));
    }
    Ok(proxies)
}

/// Forwards connections on already bound listeners (e.g. bound inside a pod's network
/// namespace: a socket keeps its namespace) to the guest vsock ports paired with them.
pub fn serve(
    instance: &str,
    listeners: Vec<(std::net::TcpListener, u32)>,
    vsock_uds: &Path,
) -> Result<Proxies> {
    let mut proxies = Proxies::default();
    for (l, guest_port) in listeners {
        let listener = l
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(l))
            .map_err(|e| Error::Internal(format!("cannot watch a pod listener: {e}")))?;
        let uds = vsock_uds.to_owned();
        let instance = instance.to_owned();
        proxies.tasks.push(tokio::spawn(async move {
            accept_loop(listener, uds, guest_port, instance).await;
        }));
    }
    Ok(proxies)
}

async fn accept_loop(listener: TcpListener, uds: PathBuf, guest_port: u32, instance: String) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let uds = uds.clone();
                let instance = instance.clone();
                tokio::spawn(async move {
                    if let Err(e) = forward(tcp, &uds, guest_port).await {
                        tracing::info!(%instance, %peer, guest_port, "port forward ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(%instance, "accept on exported port failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Relays one connection. When the guest cannot be reached on `guest_port` (not running,
/// nothing listening there), the client's connection is reset rather than left open.
async fn forward(mut tcp: TcpStream, uds: &Path, guest_port: u32) -> std::io::Result<()> {
    let unix = match open(uds, guest_port).await {
        Ok(u) => u,
        Err(e) => {
            // SO_LINGER 0: the close sends RST, so the client sees "connection reset".
            let _ = tcp.set_zero_linger();
            return Err(e);
        }
    };
    // Bytes the guest sent right after OK are in the BufReader's buffer: copy them first.
    let buffered = unix.buffer().to_vec();
    tcp.write_all(&buffered).await?;
    let mut unix = unix.into_inner();
    tokio::io::copy_bidirectional(&mut tcp, &mut unix).await?;
    Ok(())
}

/// Connects to the VMM's vsock socket and asks for `guest_port` (`CONNECT` → `OK`).
async fn open(uds: &Path, guest_port: u32) -> std::io::Result<BufReader<UnixStream>> {
    let unix = UnixStream::connect(uds).await?;
    let mut unix = BufReader::new(unix);
    unix.get_mut()
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .await?;
    let mut line = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        unix.read_line(&mut line),
    )
    .await
    .map_err(|_| std::io::Error::other("the guest did not answer CONNECT within 10 s"))??;
    if !line.starts_with("OK ") {
        return Err(std::io::Error::other(format!(
            "the guest refused vsock port {guest_port}: {:?}",
            line.trim_end()
        )));
    }
    Ok(unix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The proxy speaks the Firecracker host-side protocol and then relays bytes both ways
    /// (a Unix listener plays the VMM's vsock socket here; tests/ drive the real one).
    #[tokio::test]
    async fn forwards_through_connect_ok() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let vmm_side = tokio::net::UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            let (s, _) = vmm_side.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 5000\n");
            s.get_mut().write_all(b"OK 1073741824\nhi").await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.get_mut().write_all(&buf).await.unwrap();
        });
        // A free port can be taken by a parallel test between probe and bind: retry.
        let mut bound = None;
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let m = PortMapping {
                host_ip: "127.0.0.1".into(),
                host_port: port,
                guest_port: 5000,
            };
            if let Ok(p) = start("t", std::slice::from_ref(&m), &uds).await {
                bound = Some((m, p));
                break;
            }
        }
        let (m, _p) = bound.expect("no free loopback port after 20 tries");
        let port = m.host_port;
        assert!(matches!(check_bindable(&m), Err(Error::Conflict(_))));
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut hi = [0u8; 2];
        c.read_exact(&mut hi).await.unwrap();
        assert_eq!(&hi, b"hi");
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
    }
}
