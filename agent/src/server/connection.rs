//! The kubelet server's connections under abuse: a cap on how many are served at once, and deadlines for the TLS
//! handshake, for the headers of each request, and for an idle connection, with kubelet's header size limit.
//!
//! Go's `http.Server` measures the header deadline from the first byte of a request and the idle deadline from the
//! end of the last one; hyper's own header timer runs from when it starts waiting for a request, idle time included,
//! so both deadlines are kept here instead: reads through the connection mark a request's start, the service marks
//! its end (when its response body is done).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Limits of the kubelet server's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not finished its TLS handshake by then is dropped.
    pub tls_handshake: Duration,
    /// From a request's first byte (or the connection's start) to the end of its headers. kubelet's server sets only
    /// a 4 h `ReadTimeout`; the API server's secure serving sets `ReadHeaderTimeout: 32 * time.Second` ("just shy of
    /// requestTimeoutUpperBound", k8s.io/apiserver/pkg/server/secure_serving.go), which is taken here.
    pub read_header: Duration,
    /// A connection with no request for this long is closed: kubelet's `IdleTimeout: 90 * time.Second` ("matches
    /// http.DefaultTransport keep-alive timeout", pkg/kubelet/server/server.go).
    pub idle: Duration,
    /// The largest request head: kubelet's `MaxHeaderBytes: 1 << 20`, Go's `DefaultMaxHeaderBytes`.
    pub max_header_bytes: usize,
    /// Connections served at once. Go's server has no cap. At the cap the server stops accepting until one ends:
    /// further clients wait in the listen backlog and are served in turn rather than refused, and the deadlines above
    /// bound how long a silent connection keeps its place.
    pub max_connections: usize,
}

/// Go's `http.Server` reads `MaxHeaderBytes` plus this much slack before refusing a head (`initialReadLimitSize`).
const HEADER_SLACK: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            read_header: Duration::from_secs(32),
            idle: Duration::from_secs(90),
            max_header_bytes: 1 << 20,
            // Each held connection costs its TLS and HTTP buffers; 1024 is well above what the API server's proxying
            // and a node's streaming sessions use, and keeps the worst case (every connection with a full head
            // buffered) near a gigabyte rather than unbounded.
            max_connections: 1024,
        }
    }
}

/// Where a connection stands, for its deadlines.
#[derive(Debug)]
struct State {
    /// Requests whose responses are not finished.
    in_flight: usize,
    /// When the bytes of a request not yet handed to the service started coming.
    head_since: Option<Instant>,
    /// When the last request finished.
    idle_since: Instant,
    /// HTTP/2 carries pings and settings between requests: reads do not mark a request there.
    h2: bool,
}

#[derive(Debug)]
pub struct Activity(Mutex<State>);

impl Activity {
    fn new(h2: bool) -> Arc<Self> {
        let now = Instant::now();
        // The first request is due within the header deadline of the connection's start, as with Go.
        Arc::new(Self(Mutex::new(State { in_flight: 0, head_since: Some(now), idle_since: now, h2 })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) {
        let mut s = self.state();
        if !s.h2 && s.in_flight == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.state();
        s.in_flight += 1;
        s.head_since = None;
        InFlight(self.clone())
    }

    /// When the connection is to be closed, and why; `None` while a request is being served.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let s = self.state();
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.head_since {
            Some(t) => (t + limits.read_header, "request headers not read in time"),
            None => (s.idle_since + limits.idle, "idle"),
        })
    }
}

/// One request being served; its end starts the idle time.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.idle_since = Instant::now();
    }
}

/// A stream that tells its connection's [`Activity`] when request bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves when the connection has outlived its deadline, with the reason. Checked once a second: the deadlines are
/// tens of seconds, and a timer per state change would cost more than the tick.
async fn expired(activity: &Activity, limits: &Limits) -> &'static str {
    let tick = Duration::from_secs(1).min(limits.read_header / 4).max(Duration::from_millis(10));
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        if let Some((deadline, why)) = activity.deadline(limits) {
            if Instant::now() >= deadline {
                return why;
            }
        }
    }
}

/// Serves HTTP/2 or HTTP/1.1 (with upgrades, which then leave these deadlines behind) on one connection until it ends
/// or outlives a deadline.
pub async fn serve<S>(stream: S, h2: bool, app: Router, limits: Limits, remote: std::net::SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(h2);
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let inner = TowerToHyperService::new(app);
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let in_flight = tracked.begin();
        let response = hyper::service::Service::call(&inner, request);
        async move {
            let response = response.await?;
            // The request lasts as long as its response body: a followed log is not idle.
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _alive = &in_flight;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes + HEADER_SLACK);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "kubelet server connection ended with an error");
            }
        }
        why = expired(&activity, &limits) => {
            tracing::debug!(%remote, "closing kubelet server connection: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::secure::serve_tls_with;
    use crate::server::tls::{pem_pair, self_signed, server_config, ServingCerts};
    use axum::routing::get;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    struct Server {
        addr: std::net::SocketAddr,
        client: Arc<rustls::ClientConfig>,
    }

    async fn start(limits: Limits) -> Server {
        let (cert, key) = self_signed("node-1", &[]).unwrap();
        let certs = ServingCerts::default();
        certs.set(pem_pair(&format!("{cert}{key}"), std::path::Path::new("/x")).unwrap()).unwrap();
        let tls = server_config(Arc::new(certs), None).unwrap();
        let app = Router::new().route("/x", get(|| async { "ok" })).route("/echo", get(echo)).route(
            "/slow",
            get(|| async {
                // Three chunks a second apart: longer than the idle deadline, with the response under way.
                let chunks = futures::stream::unfold(0, |i| async move {
                    (i < 3).then_some(())?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Some((Ok::<_, std::io::Error>(format!("chunk{i}\n")), i + 1))
                });
                Body::from_stream(chunks)
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_tls_with(listener, tls, app, limits));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Server { addr, client: Arc::new(client) }
    }

    /// Upgrades to a raw stream that echoes what it reads, as the streaming endpoints hand theirs over.
    async fn echo(mut request: axum::extract::Request) -> axum::response::Response {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        axum::response::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Body::empty())
            .unwrap()
    }

    impl Server {
        async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
            let tcp = TcpStream::connect(self.addr).await?;
            let name = ServerName::try_from("node-1").unwrap();
            tokio_rustls::TlsConnector::from(self.client.clone()).connect(name, tcp).await
        }

        /// An HTTP/1.1 client on a new connection.
        async fn client(&self) -> hyper::client::conn::http1::SendRequest<Body> {
            let stream = self.connect().await.unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            sender
        }
    }

    async fn get_text(sender: &mut hyper::client::conn::http1::SendRequest<Body>, path: &str) -> (u16, String) {
        sender.ready().await.unwrap();
        let request = hyper::Request::get(path).header("host", "node-1").body(Body::empty()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// How long until the server closes `stream` (reads see the end or an error), up to `limit`.
    async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(limit, async {
            loop {
                if matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {
                    return start.elapsed();
                }
            }
        })
        .await
        .ok()
    }

    fn short() -> Limits {
        Limits { read_header: Duration::from_secs(1), idle: Duration::from_secs(3), ..Limits::default() }
    }

    #[tokio::test]
    async fn silent_and_slow_heads_are_closed_at_the_header_deadline() {
        let server = start(short()).await;
        let mut silent = server.connect().await.unwrap();
        let mut slow = server.connect().await.unwrap();
        slow.write_all(b"GET /x HTTP/1.1\r\nHost: node-1\r\n").await.unwrap();
        let took = closed_within(&mut silent, Duration::from_secs(5)).await.expect("silent connection closed");
        assert!(took < Duration::from_millis(2500), "{took:?}");
        assert!(closed_within(&mut slow, Duration::from_secs(2)).await.is_some(), "slow head closed");
    }

    #[tokio::test]
    async fn a_keep_alive_connection_lives_until_the_idle_deadline_not_the_header_one() {
        let server = start(short()).await;
        let mut sender = server.client().await;
        assert_eq!(get_text(&mut sender, "/x").await, (200, "ok".into()));
        // Past the header deadline, within the idle one: the connection is still there for the next request.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(get_text(&mut sender, "/x").await, (200, "ok".into()));
        tokio::time::sleep(Duration::from_millis(4500)).await;
        assert!(sender.is_closed() || sender.ready().await.is_err(), "idle connection closed");
    }

    #[tokio::test]
    async fn a_response_under_way_is_not_idle() {
        let server = start(Limits { idle: Duration::from_secs(1), ..short() }).await;
        let mut sender = server.client().await;
        assert_eq!(get_text(&mut sender, "/slow").await, (200, "chunk0\nchunk1\nchunk2\n".into()));
    }

    #[tokio::test]
    async fn an_upgraded_stream_is_served_past_the_deadlines() {
        let server = start(Limits { idle: Duration::from_secs(1), ..short() }).await;
        let mut stream = server.connect().await.unwrap();
        stream
            .write_all(b"GET /echo HTTP/1.1\r\nHost: node-1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{head:?}");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        for round in 0..2 {
            stream.write_all(b"ping").await.unwrap();
            let mut answer = [0u8; 4];
            stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"ping", "round {round}");
            // Silent for longer than both deadlines: the session is the streaming proxy's to end, not theirs.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    }

    #[tokio::test]
    async fn http2_as_alpn_agrees_is_served_with_the_same_deadlines() {
        let server = start(Limits { idle: Duration::from_secs(2), ..short() }).await;
        let mut config = (*server.client).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("node-1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        for path in ["/x", "/slow"] {
            let request = hyper::Request::get(format!("https://node-1{path}")).body(Body::empty()).unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status().as_u16(), 200, "{path}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(!body.is_empty(), "{path}");
        }
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(sender.is_closed() || sender.ready().await.is_err(), "idle HTTP/2 connection closed");
    }

    #[tokio::test]
    async fn heads_over_the_limit_are_refused() {
        let server = start(Limits { max_header_bytes: 16 << 10, ..short() }).await;
        let mut sender = server.client().await;
        let request = hyper::Request::get("/x")
            .header("host", "node-1")
            .header("x-big", "a".repeat(64 << 10))
            .body(Body::empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 431);
        let mut sender = server.client().await;
        assert_eq!(get_text(&mut sender, "/x").await.0, 200, "heads within the limit are served");
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_slot() {
        let server = start(Limits { max_connections: 2, ..Limits::default() }).await;
        let first = server.connect().await.unwrap();
        let _second = server.connect().await.unwrap();
        let third = tokio::spawn({
            let (addr, client) = (server.addr, server.client.clone());
            async move { Server { addr, client }.connect().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!third.is_finished(), "the third handshake waits while two connections are served");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), third).await.expect("served once a slot is free");
        assert!(third.unwrap().is_ok());
    }
}
