//! Shared state, the TLS listener and connection handling, pause/resume.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use super::auth::UserInfo;
use super::pki::{cert_identity, Pki};
use super::store::Store;
use super::{Fault, RequestRecord};

/// State shared by the test-facing handle and the server tasks.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub changed: tokio::sync::watch::Sender<u64>,
    pub pki: Pki,
    pub tokens: Mutex<HashMap<String, UserInfo>>,
    pub auto_approve: AtomicBool,
    pub auto_approve_serving: AtomicBool,
    pub bookmark_interval: Mutex<Duration>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub faults: Mutex<Vec<Fault>>,
    pub addr: SocketAddr,
}

impl Shared {
    /// Wake watchers after a commit.
    pub fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }

    pub fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running accept loop: dropping `stop` ends it and every connection it accepted.
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Running {
    /// Close the listener and all open connections (including watch streams); wait until done.
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.done.recv_timeout(Duration::from_secs(5));
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Bind `addr` (port 0 picks a free one) within `handle`'s runtime.
pub(crate) fn listen(handle: &tokio::runtime::Handle, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let _g = handle.enter();
    let mut last = None;
    // Rebinding right after close can race with the kernel; retry briefly.
    for _ in 0..50 {
        match bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Err(last.expect("an error")).with_context(|| format!("binding {addr}"))
}

pub(crate) fn serve(
    handle: &tokio::runtime::Handle,
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
) -> Running {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    handle.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let Ok((tcp, _peer)) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let cert_user = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| cert_identity(c.as_ref()))
                            .map(|(cn, orgs)| {
                                let groups: Vec<&str> = orgs.iter().map(String::as_str).collect();
                                UserInfo::new(&cn, &groups)
                            });
                        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let shared = shared.clone();
                            let cert_user = cert_user.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    super::handler::handle(shared, cert_user, req).await,
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            }
        }
        drop(listener);
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        let _ = done_tx.send(());
    });
    Running { stop: stop_tx, done: done_rx }
}
