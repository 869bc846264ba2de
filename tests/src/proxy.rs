//! A TCP relay between the agent and the API server that a test can cut, to stage an API outage the same way on
//! the double and on a real cluster: while cut, open connections are closed and new ones are refused at once.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

pub struct CutProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    pub fn start(upstream: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, o, s) = (cut.clone(), open.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                if let Ok(mut open) = o.lock() {
                    // Relayed connections that ended were shut down on both sides and no longer have a peer.
                    open.retain(|s| s.peer_addr().is_ok());
                    open.extend(client.try_clone().ok());
                    open.extend(server.try_clone().ok());
                }
                relay(client, server);
            }
        });
        Ok(CutProxy { addr, cut, open, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and refuses new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut open) = self.open.lock() {
            for s in open.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// A copy of `kubeconfig` whose clusters are reached through this relay; TLS still checks the server's own name.
    pub fn kubeconfig(&self, kubeconfig: &Path, out: &Path) -> Result<PathBuf> {
        let text = std::fs::read_to_string(kubeconfig).with_context(|| format!("read {}", kubeconfig.display()))?;
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let clusters =
            doc.get_mut("clusters").and_then(|c| c.as_sequence_mut()).context("kubeconfig has no clusters")?;
        for entry in clusters {
            let Some(cluster) = entry.get_mut("cluster").and_then(|c| c.as_mapping_mut()) else { continue };
            let server = cluster.get("server").and_then(|s| s.as_str()).context("cluster without server")?.to_owned();
            let (host, _) = split_server_url(&server)?;
            if !cluster.contains_key("tls-server-name") {
                cluster.insert("tls-server-name".into(), host.into());
            }
            cluster.insert("server".into(), format!("https://{}", self.addr).into());
        }
        std::fs::write(out, serde_yaml::to_string(&doc)?)?;
        Ok(out.to_owned())
    }
}

/// The address a kubeconfig's current cluster is served on.
pub fn kubeconfig_server_addr(kubeconfig: &Path) -> Result<SocketAddr> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let server = doc
        .get("clusters")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("cluster"))
        .and_then(|c| c.get("server"))
        .and_then(|s| s.as_str())
        .context("kubeconfig without a cluster server")?;
    let (host, port) = split_server_url(server)?;
    (host.as_str(), port).to_socket_addrs()?.next().context("server address does not resolve")
}

/// Host and port of an `https://host[:port][/path]` server URL.
fn split_server_url(server: &str) -> Result<(String, u16)> {
    let rest = server.strip_prefix("https://").with_context(|| format!("server URL {server} is not https"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.chars().all(|c| c.is_ascii_digit()) => {
            (h, p.parse().with_context(|| format!("port in {server}"))?)
        }
        _ => (authority, 443),
    };
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn relay(client: TcpStream, server: TcpStream) {
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            io::Result::Ok(())
        });
    };
    if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
        pipe(client, s2);
        pipe(server, c2);
    }
}
