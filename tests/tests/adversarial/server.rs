//! The kubelet API on :10250 under abuse from outside: connections that finish their TLS handshake and then send
//! their headers slowly or never, floods of made-up bearer tokens, and many concurrent requests with one token.
//! The agent runs against the API-server double, which answers its TokenReviews and counts them; it listens on
//! 127.0.0.1 only, with webhook authentication, no anonymous access and AlwaysAllow authorisation, so that each
//! request's fate is decided by its token alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axum::body::Body;
use hyper_util::rt::TokioIo;
use rkubelet_tests::agent::{tail, Agent};
use rkubelet_tests::apiserver::ApiServer;
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::skip_unless_root;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The agent's header deadline (the API server's `ReadHeaderTimeout`, 32 s) and the slack allowed on top of it for
/// the server's one-second check and a loaded machine.
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(32);
const CLOSE_SLACK: Duration = Duration::from_secs(8);
/// The agent's cap on TokenReviews: 50 a second after a burst of 100 (kubelet's `kubeAPIQPS`/`kubeAPIBurst`).
const REVIEW_QPS: f64 = 50.0;
const REVIEW_BURST: f64 = 100.0;

const LEGIT_TOKEN: &str = "legit-token-0123456789";

struct Node {
    agent: Agent,
    api: ApiServer,
    rt: tokio::runtime::Runtime,
    tls: Arc<rustls::ClientConfig>,
    _containerd: Containerd,
    _dir: tempfile::TempDir,
}

/// The agent's self-signed serving certificate is accepted as it is: these tests are about what comes after the
/// handshake.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn node(name: &str) -> Result<Node> {
    let api = ApiServer::start()?;
    api.add_token(LEGIT_TOKEN, "monitoring", &["monitoring"]);
    let containerd = Containerd::start(name)?;
    let dir = tempfile::Builder::new().prefix("rkubelet-adv-server-").tempdir()?;
    let config = "address: 127.0.0.1\nauthentication: {anonymous: {enabled: false}, webhook: {enabled: true}}\n\
                  authorization: {mode: AlwaysAllow}\n";
    let agent = Agent::new(&containerd, config)?;
    let kubeconfig = api.node_kubeconfig(dir.path(), agent.node_name())?;
    let agent = agent.with_args(["--kubeconfig".to_owned(), kubeconfig.display().to_string()]).started()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    Ok(Node { agent, api, rt, tls: Arc::new(tls), _containerd: containerd, _dir: dir })
}

impl Node {
    fn port(&self) -> u16 {
        self.agent.server_port()
    }

    /// The agent's resident set, in KiB.
    fn rss_kib(&self) -> Result<u64> {
        let pid = self.agent.pid().context("agent not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    fn token_reviews(&self) -> usize {
        self.api.requests().iter().filter(|r| r.method == "POST" && r.path_only().ends_with("/tokenreviews")).count()
    }
}

/// A TLS connection to the agent's server on 127.0.0.1, handshake done.
async fn connect(tls: Arc<rustls::ClientConfig>, port: u16) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost")?;
    let stream =
        tokio::time::timeout(Duration::from_secs(10), tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
            .await
            .context("TLS handshake timed out")??;
    Ok(stream)
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// An HTTP/1.1 client on one connection.
async fn client(tls: Arc<rustls::ClientConfig>, port: u16) -> Result<Sender> {
    let stream = connect(tls, port).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `GET path` with `token` as bearer: (status, body).
async fn get(sender: &mut Sender, path: &str, token: &str) -> Result<(u16, String)> {
    sender.ready().await?;
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())?;
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .context("no answer within 20 s")??;
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One well-formed request on a new connection, as a legitimate caller makes it.
async fn legit_get(tls: Arc<rustls::ClientConfig>, port: u16, path: &str) -> Result<(u16, String)> {
    let mut sender = client(tls, port).await?;
    get(&mut sender, path, LEGIT_TOKEN).await
}

/// How a slow client behaves once its handshake is done.
#[derive(Clone, Copy, Debug)]
enum Slowness {
    /// Sends nothing.
    Silent,
    /// Sends a request line, then one header line every two seconds, never the blank line.
    Trickle,
}

/// Holds a connection (handshake done at `opened`) as `how` says until the server closes it; returns how long after
/// the handshake that was, or `None` if it was still open at `give_up`.
async fn slow_client(
    opened: Instant,
    stream: TlsStream<TcpStream>,
    how: Slowness,
    give_up: Instant,
) -> Option<Duration> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    // A write failing means the server went away: the reader sees it too, so writing just stops.
    let writing = async move {
        if let Slowness::Trickle = how {
            let mut line = b"GET /pods HTTP/1.1\r\nHost: localhost\r\n".to_vec();
            for i in 0u32.. {
                if writer.write_all(&line).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                line = format!("X-Slow-{i}: {}\r\n", "a".repeat(16)).into_bytes();
            }
        }
        std::future::pending::<()>().await
    };
    let closed = async move {
        let mut buf = [0u8; 4096];
        loop {
            // A close, a reset, or an error answer (hyper's 408) all end the connection.
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        took = closed => Some(took),
        _ = writing => None,
        _ = tokio::time::sleep_until(give_up.into()) => None,
    }
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn slow_header_connections_are_closed_by_the_server_while_others_are_served() -> Result<()> {
    skip_unless_root!(Ok(()));
    let node = node("adv-slowhdr")?;
    let port = node.port();
    let (status, _) = node.rt.block_on(legit_get(node.tls.clone(), port, "/pods"))?;
    ensure!(status == 200, "a legitimate request before the attack: {status}");
    let rss_before = node.rss_kib()?;

    const CONNECTIONS: usize = 500;
    let result: Result<(Vec<Option<Duration>>, u64, u16)> = node.rt.block_on(async {
        let mut streams = Vec::with_capacity(CONNECTIONS);
        for chunk in 0..CONNECTIONS / 50 {
            let handshakes =
                (0..50).map(|_| async { connect(node.tls.clone(), port).await.map(|s| (Instant::now(), s)) });
            for s in futures::future::join_all(handshakes).await {
                streams.push(s.with_context(|| format!("handshake in batch {chunk}"))?);
            }
        }
        let give_up = Instant::now() + READ_HEADER_TIMEOUT + CLOSE_SLACK + Duration::from_secs(5);
        let clients: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, (opened, s))| {
                let how = if i % 2 == 0 { Slowness::Silent } else { Slowness::Trickle };
                tokio::spawn(slow_client(opened, s, how, give_up))
            })
            .collect();
        // While all of them hold their connections, a well-formed request is served.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_open = node.rss_kib()?;
        let (status, _) = legit_get(node.tls.clone(), port, "/pods").await?;
        let mut closed = Vec::with_capacity(CONNECTIONS);
        for c in clients {
            closed.push(c.await?);
        }
        Ok((closed, rss_open, status))
    });
    let (closed, rss_open, status) = result?;
    ensure!(status == 200, "a legitimate request during the attack: {status}");
    let open: Vec<usize> = closed.iter().enumerate().filter(|(_, c)| c.is_none()).map(|(i, _)| i).collect();
    ensure!(
        open.is_empty(),
        "{} of {CONNECTIONS} slow connections still open {:?} after their handshake (e.g. #{:?})\nagent log:\n{}",
        open.len(),
        READ_HEADER_TIMEOUT + CLOSE_SLACK,
        open.first(),
        tail(&node.agent.log(), 20)
    );
    let latest = closed.iter().flatten().max().copied().unwrap_or_default();
    ensure!(latest <= READ_HEADER_TIMEOUT + CLOSE_SLACK, "the last slow connection was closed after {latest:?}");
    let earliest = closed.iter().flatten().min().copied().unwrap_or_default();
    ensure!(
        earliest + Duration::from_secs(5) >= READ_HEADER_TIMEOUT,
        "a slow connection was closed after {earliest:?}, well before the header deadline"
    );
    // Each open connection holds a TLS session with its record buffers, hyper's read buffer and a task: about 95 KiB
    // in a debug build on two cores (500 of them added ~47 MiB there), part of it the allocator's arenas. The bound
    // is 256 KiB a connection, 125 MiB for all: room for other allocators and more cores, while a buffer of the
    // head limit (1 MiB) held by each connection would exceed it four times over.
    let rss_after = node.rss_kib()?;
    eprintln!(
        "agent VmRSS: {rss_before} KiB before, {rss_open} KiB with {CONNECTIONS} slow connections, {rss_after} KiB \
         after; closed after {earliest:?}..{latest:?}"
    );
    let bound = CONNECTIONS as u64 * 256;
    ensure!(rss_open <= rss_before + bound, "RSS grew from {rss_before} to {rss_open} KiB with the connections");
    ensure!(rss_after <= rss_before + bound, "RSS grew from {rss_before} to {rss_after} KiB");
    let (status, _) = node.rt.block_on(legit_get(node.tls.clone(), port, "/pods"))?;
    ensure!(status == 200, "a legitimate request after the attack: {status}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn ten_thousand_bogus_tokens_keep_token_reviews_capped_and_memory_bounded() -> Result<()> {
    skip_unless_root!(Ok(()));
    let node = node("adv-tokens")?;
    let port = node.port();
    let (status, _) = node.rt.block_on(legit_get(node.tls.clone(), port, "/pods"))?;
    ensure!(status == 200, "the legitimate token before the flood: {status}");
    let rss_before = node.rss_kib()?;
    node.api.clear_requests();

    const TOKENS: usize = 10_000;
    const CONNECTIONS: usize = 16;
    let started = Instant::now();
    let outcome: Result<Vec<(u16, usize)>> = node.rt.block_on(async {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|w| {
                let tls = node.tls.clone();
                tokio::spawn(async move {
                    let mut sender = client(tls, port).await?;
                    let mut seen = Vec::new();
                    for i in (w..TOKENS).step_by(CONNECTIONS) {
                        let token = format!("bogus-{i:05}-{}", "x".repeat(40));
                        let (status, _) = get(&mut sender, "/pods", &token).await?;
                        seen.push((status, i));
                        // A legitimate caller on the same connections keeps being served throughout.
                        if i % 500 == w {
                            let (status, body) = get(&mut sender, "/pods", LEGIT_TOKEN).await?;
                            if status != 200 {
                                bail!("the legitimate token after {i} bogus ones: {status} {body}");
                            }
                        }
                    }
                    anyhow::Ok(seen)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(TOKENS);
        for w in workers {
            all.extend(w.await??);
        }
        Ok(all)
    });
    let statuses = outcome?;
    let elapsed = started.elapsed();
    let reviews = node.token_reviews();
    let unauthorized = statuses.iter().filter(|(s, _)| *s == 401).count();
    let throttled = statuses.iter().filter(|(s, _)| *s == 429).count();
    let rss_after = node.rss_kib()?;
    eprintln!(
        "{TOKENS} bogus tokens in {elapsed:?}: {reviews} TokenReviews, {unauthorized} answered 401, {throttled} 429; \
         agent VmRSS {rss_before} KiB before, {rss_after} KiB after"
    );
    ensure!(statuses.len() == TOKENS, "{} answers", statuses.len());
    if let Some((s, i)) = statuses.iter().find(|(s, _)| *s != 401 && *s != 429) {
        bail!("bogus token {i} got {s}");
    }
    let cap = (REVIEW_BURST + REVIEW_QPS * elapsed.as_secs_f64()).ceil() as usize + 5;
    ensure!(reviews <= cap, "{reviews} TokenReviews for {TOKENS} bogus tokens in {elapsed:?} (cap {cap})");
    ensure!(reviews == unauthorized, "each review rejected one token: {reviews} reviews, {unauthorized} 401s");
    // Each cached rejection is a 32-byte key and an expiry, a few MiB for all of them at most.
    ensure!(rss_after <= rss_before + 64 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
    // Once the bucket has refilled, a token never seen before is reviewed and accepted.
    std::thread::sleep(Duration::from_secs(1));
    node.api.add_token("fresh-token-9876543210", "late-caller", &[]);
    let (status, _) = node.rt.block_on(async {
        let mut sender = client(node.tls.clone(), port).await?;
        get(&mut sender, "/pods", "fresh-token-9876543210").await
    })?;
    ensure!(status == 200, "a new legitimate token after the flood: {status}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn concurrent_requests_with_one_token_make_one_token_review() -> Result<()> {
    skip_unless_root!(Ok(()));
    let node = node("adv-onetoken")?;
    let port = node.port();
    node.api.clear_requests();
    const REQUESTS: usize = 64;
    let statuses: Result<Vec<u16>> = node.rt.block_on(async {
        let mut senders = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            senders.push(client(node.tls.clone(), port).await?);
        }
        // All connections are ready before any request goes: they reach the server together.
        let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS));
        let requests: Vec<_> = senders
            .into_iter()
            .map(|mut sender| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    get(&mut sender, "/pods", LEGIT_TOKEN).await.map(|(s, _)| s)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(REQUESTS);
        for r in requests {
            out.push(r.await??);
        }
        Ok(out)
    });
    let statuses = statuses?;
    ensure!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let reviews = node.token_reviews();
    ensure!(reviews == 1, "{reviews} TokenReviews for {REQUESTS} concurrent requests with one token");
    Ok(())
}
