//! A small HTTP/1.1 GET client for httpGet probes and hooks, with what kubelet's prober does: no keep-alive,
//! certificates not verified for HTTPS, at most 10 KiB of body read, same-host redirects followed (up to 10)
//! and a redirect to another host returned as it is.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// kubelet reads at most this much of a probe's response body (`maxRespBodyLength`).
pub const MAX_BODY: usize = 10 * 1024;
/// Go's http.Client stops after 10 redirects.
const MAX_REDIRECTS: usize = 10;
/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path with query, starting with `/`.
    pub path: String,
}

impl Url {
    /// kubelet's `formatURL`: the host bracketed when it is an IPv6 address.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", if self.https { "https" } else { "http" }, self.host_port(), self.path)
    }
}

/// A probe path as kubelet builds the URL: a leading `/` is added when missing.
pub fn normalize_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// At most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
    /// The last URL requested (after redirects).
    pub url: Url,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GETs `url` with `headers` (a `Host` header sets the request's host) within `timeout` overall. An `Err` is Go's
/// error text for the request (`Get "http://…": dial tcp …: connect: connection refused`).
pub async fn get(url: &Url, headers: &[(String, String)], timeout: Duration) -> Result<Response, String> {
    match tokio::time::timeout(timeout, get_following(url.clone(), headers)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get {:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            url.to_string()
        )),
    }
}

async fn get_following(mut url: Url, headers: &[(String, String)]) -> Result<Response, String> {
    let first_host = url.host.clone();
    for _ in 0..=MAX_REDIRECTS {
        let response = get_once(&url, headers).await.map_err(|e| format!("Get {:?}: {e}", url.to_string()))?;
        if !(300..400).contains(&response.status) {
            return Ok(response);
        }
        let Some(next) = response.header("Location").and_then(|l| resolve(&url, l)) else { return Ok(response) };
        // kubelet follows redirects only to the same host; another host's redirect is the answer.
        if next.host != first_host {
            return Ok(response);
        }
        url = next;
    }
    Err(format!("Get {:?}: stopped after {MAX_REDIRECTS} redirects", url.to_string()))
}

/// A `Location` relative to `base`, or absolute.
fn resolve(base: &Url, location: &str) -> Option<Url> {
    let (https, rest) = if let Some(r) = location.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = location.strip_prefix("https://") {
        (true, r)
    } else if location.starts_with('/') {
        return Some(Url { path: location.to_owned(), ..base.clone() });
    } else {
        let dir = base.path.rsplit_once('/').map_or("", |(d, _)| d);
        return Some(Url { path: format!("{dir}/{location}"), ..base.clone() });
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h.to_owned(), after.strip_prefix(':').map_or(Some(default_port), |p| p.parse().ok())?)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), default_port),
        }
    };
    Some(Url { https, host, port, path: path.to_owned() })
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(url: &Url) -> Result<Box<dyn Stream>, String> {
    let addr = url.host_port();
    let tcp = TcpStream::connect(&addr).await.map_err(|e| format!("dial tcp {addr}: {}", go_dial_error(&e)))?;
    if !url.https {
        return Ok(Box::new(tcp));
    }
    let config = tls_config().map_err(|e| format!("tls: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| format!("tls: invalid server name {:?}: {e}", url.host))?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    Ok(Box::new(tls))
}

/// Go's wording of the common dial errors.
pub fn go_dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => format!("connect: {e}"),
    }
}

async fn get_once(url: &Url, headers: &[(String, String)]) -> Result<Response, String> {
    let mut stream = connect(url).await?;
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Host"))
        .map_or_else(|| url.host_port(), |(_, v)| v.clone());
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n", url.path);
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("User-Agent") {
        request.push_str(&format!("User-Agent: {}\r\n", super::USER_AGENT));
    }
    if !has("Accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("Host")) {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;

    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err("net/http: response head too large".into());
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("EOF".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("net/http: malformed HTTP status line {status_line:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = buf[head_end + 4..].to_vec();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("Transfer-Encoding") && v.eq_ignore_ascii_case("chunked"));
    let length: Option<usize> =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("Content-Length")).and_then(|(_, v)| v.parse().ok());
    let limit = length.unwrap_or(usize::MAX).min(MAX_BODY + 16);
    while body.len() < limit && !chunked_done(chunked, &body) {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    if chunked {
        body = dechunk(&body);
    }
    body.truncate(length.unwrap_or(MAX_BODY).min(MAX_BODY));
    Ok(Response { status, headers, body, url: url.clone() })
}

fn chunked_done(chunked: bool, body: &[u8]) -> bool {
    chunked && (body.ends_with(b"\r\n0\r\n\r\n") || body.starts_with(b"0\r\n\r\n"))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..i]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else { break };
        if size == 0 {
            break;
        }
        let start = i + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = data.get(end + 2..).unwrap_or_default();
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// kubelet's probe transport skips certificate verification (`InsecureSkipVerify`).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    use std::sync::OnceLock;
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerifier(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

#[derive(Debug)]
struct NoVerifier(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn url(path: &str, port: u16) -> Url {
        Url { https: false, host: "127.0.0.1".into(), port, path: path.into() }
    }

    /// Serves canned responses by path, recording each request head.
    async fn server(routes: Vec<(&'static str, String)>) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let _ = tx.send(head);
                let reply = routes
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into());
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn status_headers_and_same_host_redirects() {
        let (port, mut heads) = server(vec![
            ("/ok?x=1", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into()),
            ("/moved", "HTTP/1.1 302 Found\r\nLocation: /ok?x=1\r\nContent-Length: 0\r\n\r\n".into()),
            ("/away", "HTTP/1.1 301 Moved\r\nLocation: http://192.0.2.1/x\r\nContent-Length: 0\r\n\r\n".into()),
            ("/chunked", "HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfail\r\n0\r\n\r\n".into()),
        ])
        .await;
        let headers = vec![("X-Custom".to_string(), "v".to_string()), ("Host".to_string(), "example".to_string())];
        let r = get(&url("/ok?x=1", port), &headers, Duration::from_secs(5)).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /ok?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nHost: example\r\n") && head.contains("\r\nX-Custom: v\r\n"), "{head}");
        assert!(head.contains("\r\nUser-Agent: kube-probe/1.28\r\n"), "{head}");
        let r = get(&url("/moved", port), &[], Duration::from_secs(5)).await.unwrap();
        assert_eq!((r.status, r.url.path.as_str()), (200, "/ok?x=1"), "same-host redirect followed");
        let r = get(&url("/away", port), &[], Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.status, 301, "another host's redirect is the answer");
        let r = get(&url("/chunked", port), &[], Duration::from_secs(5)).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"fail"[..]));
    }

    #[tokio::test]
    async fn refused_connection_reads_as_go_does() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get(&url("/", port), &[], Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            e,
            format!("Get \"http://127.0.0.1:{port}/\": dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base = Url { https: false, host: "10.0.0.1".into(), port: 8080, path: "/a/b".into() };
        assert_eq!(resolve(&base, "/c").unwrap().path, "/c");
        assert_eq!(resolve(&base, "c").unwrap().path, "/a/c");
        let abs = resolve(&base, "https://[fd00::1]:8443/z").unwrap();
        assert_eq!((abs.https, abs.host.as_str(), abs.port, abs.path.as_str()), (true, "fd00::1", 8443, "/z"));
        assert_eq!(abs.host_port(), "[fd00::1]:8443");
    }
}
