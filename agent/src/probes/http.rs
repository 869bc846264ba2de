//! The HTTP GET of httpGet probes and lifecycle hooks, on hyper's HTTP/1.1 client, shaped as kubelet's prober
//! (`pkg/probe/http/http.go`, `request.go`): one connection per request, certificates not verified for HTTPS, at
//! most 10 KiB of body read, same-host redirects followed up to 10 times, a redirect to another host returned as the
//! answer. What stays ours is the request's shape: the request target kubelet's `formatURL` and `url.URL` give a
//! probe path (escaped, never sent raw), the headers (validated as Go's transport does before anything is sent) and
//! the resolution of a redirect's `Location`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// kubelet reads at most this much of a probe's response body (`maxRespBodyLength`, pkg/probe/http/http.go).
pub const MAX_BODY: usize = 10 * 1024;
/// kubelet's `RedirectChecker`: "stopped after 10 redirects".
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// The host without brackets (an IPv6 address as it is).
    pub host: String,
    pub port: u16,
    /// The request target (origin form, escaped), as [`normalize_path`] gives it.
    pub path: String,
}

impl Url {
    /// Go's `net.JoinHostPort`: the host bracketed when it is an IPv6 address.
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

/// Go's `shouldEscape(c, encodePath)` (net/url): what `url.URL.EscapedPath` percent-encodes.
fn should_escape_in_path(c: u8) -> bool {
    !(c.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&c))
}

/// Go's `validEncoded(s, encodePath)`: a path Go sends as it is written.
fn valid_encoded_path(s: &[u8]) -> bool {
    s.iter().all(|&c| b"!$&'()*+,;=:@[]%".contains(&c) || !should_escape_in_path(c))
}

/// Go's `unescape(s, encodePath)`; `None` on an invalid escape ("invalid URL escape").
fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

fn escape_path(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s {
        if should_escape_in_path(c) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(char::from(c));
        }
    }
    out
}

/// A query as Go keeps it (`RawQuery`, verbatim), except bytes RFC 3986 does not allow in a query: Go would write
/// them raw (a space breaks its request line); here they are percent-encoded.
fn escape_query(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s {
        if !(c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&c)) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(char::from(c));
        }
    }
    out
}

/// The request target of a probe or hook path, as kubelet's `formatURL` and `http.NewRequest` make it: `url.Parse`
/// of the path (fragment dropped, query kept), the path escaped as `EscapedPath` does, a leading `/`. A path Go
/// cannot parse (a control character such as CR or LF, an invalid `%` escape) is taken whole as the path and
/// escaped, `?` and `#` included: it reaches the server as one percent-encoded request target, never as raw bytes.
pub fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let parsed = if bytes.iter().any(|&c| c < b' ' || c == 0x7f) {
        None
    } else {
        let before_fragment = bytes.split(|&c| c == b'#').next().unwrap_or_default();
        let (mut p, q) = match before_fragment.iter().position(|&c| c == b'?') {
            Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
            None => (before_fragment, None),
        };
        // `//authority/path`: Go parses an authority, which `formatURL` then replaces with the probe's host.
        if let Some(rest) = p.strip_prefix(b"//") {
            p = rest.iter().position(|&c| c == b'/').map_or(&[][..], |i| &rest[i..]);
        }
        let fragment_ok = bytes.iter().position(|&c| c == b'#').is_none_or(|i| unescape(&bytes[i + 1..]).is_some());
        unescape(p).filter(|_| fragment_ok).map(|decoded| {
            let p = if valid_encoded_path(p) { String::from_utf8_lossy(p).into_owned() } else { escape_path(&decoded) };
            (p, q.map(escape_query))
        })
    };
    let (p, q) = parsed.unwrap_or_else(|| (escape_path(bytes), None));
    let mut target = if p.starts_with('/') { p } else { format!("/{p}") };
    if let Some(q) = q {
        target.push('?');
        target.push_str(&q);
    }
    target
}

/// The reply to a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// At most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
    /// Reading the body failed (kubelet's `ReadAtMost` error): the probe errored.
    pub body_error: Option<String>,
    /// The last URL requested (after redirects).
    pub url: Url,
}

/// Why a request could not be sent or answered; `Display` is Go's `url.Error` text (`Get "http://…": …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Get {url:?}: {message}")]
pub struct GetError {
    pub url: String,
    pub message: String,
}

/// The headers of a request as kubelet's `newProbeRequest` builds them and Go's transport checks them.
#[derive(Debug, Clone)]
pub struct RequestHeaders {
    /// The `Host` header's override, as `req.Host`.
    pub host: Option<HeaderValue>,
    pub headers: HeaderMap,
}

/// Go's `httpguts.ValidHostHeader` (`validHostByte`, golang.org/x/net/http/httpguts/httplex.go): the bytes a Host
/// header may hold.
fn valid_host(host: &[u8]) -> bool {
    host.iter().all(|c| c.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=[]_~".contains(c))
}

/// kubelet's `newProbeRequest`: the user's headers, `User-Agent` and `Accept: */*` unless the user gave them (an
/// empty `Accept` removes it, an empty `User-Agent` sends none), `Host` taken out as the request's host. A header
/// name or value Go's transport refuses (CR, LF and other control characters) is an error with Go's message, and
/// nothing is sent.
pub fn request_headers(user: &[(String, String)], user_agent: &'static str) -> Result<RequestHeaders, String> {
    let mut headers = HeaderMap::new();
    let mut host = None;
    for (name, value) in user {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("net/http: invalid header field name {name:?}"))?;
        // Go's message leaves the value out: it may be a secret.
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| format!("net/http: invalid header field value for {name:?}"))?;
        // Go's request writer leaves these out of the user's headers (`reqWriteExcludeHeader`, net/http): a GET's
        // framing is its own, so a probe cannot announce a body it does not send.
        if [hyper::header::TRANSFER_ENCODING, hyper::header::CONTENT_LENGTH, hyper::header::TRAILER].contains(&header) {
            continue;
        }
        if header == hyper::header::HOST {
            if host.is_none() {
                if !valid_host(value.as_bytes()) {
                    return Err("http: invalid Host header".into());
                }
                host = Some(value).filter(|v| !v.is_empty());
            }
            continue;
        }
        headers.append(header, value);
    }
    if !headers.contains_key(hyper::header::USER_AGENT) {
        headers.insert(hyper::header::USER_AGENT, HeaderValue::from_static(user_agent));
    } else if headers.get(hyper::header::USER_AGENT).is_some_and(|v| v.is_empty()) {
        headers.remove(hyper::header::USER_AGENT);
    }
    if !headers.contains_key(hyper::header::ACCEPT) {
        headers.insert(hyper::header::ACCEPT, HeaderValue::from_static("*/*"));
    } else if headers.get(hyper::header::ACCEPT).is_some_and(|v| v.is_empty()) {
        headers.remove(hyper::header::ACCEPT);
    }
    Ok(RequestHeaders { host, headers })
}

/// GETs `url` with the user's `headers` as kubelet's prober does, `timeout` (if any) covering the whole exchange:
/// connection, redirects and the body. `Err` is Go's error text for the request.
pub async fn get(
    url: &Url,
    headers: &[(String, String)],
    user_agent: &'static str,
    timeout: Option<Duration>,
) -> Result<Response, GetError> {
    let request = request_headers(headers, user_agent).map_err(|message| GetError { url: url.to_string(), message })?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut url = url.clone();
    let mut host = request.host.clone();
    let mut headers = request.headers;
    let first_host = url.host.clone();
    let mut requests = 1;
    loop {
        let exchange = get_once(&url, host.as_ref(), &headers);
        let response = match deadline {
            Some(d) => tokio::time::timeout_at(d, exchange).await.map_err(|_| GetError {
                url: url.to_string(),
                message: "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into(),
            })?,
            None => exchange.await,
        }
        .map_err(|message| GetError { url: url.to_string(), message })?;
        // Go's `redirectBehavior`: only these are followed, and only with a Location.
        let location = response.headers().get(hyper::header::LOCATION).cloned();
        let (Some(location), true) = (location, matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308))
        else {
            return Ok(read_body(&url, response, deadline).await);
        };
        let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
        let next = resolve(&url, &location).map_err(|message| GetError {
            url: url.to_string(),
            message: format!("failed to parse Location header {location:?}: {message}"),
        })?;
        // kubelet's RedirectChecker: another host's redirect is the answer (a warning), then at most 10 followed.
        if next.host != first_host {
            return Ok(read_body(&url, response, deadline).await);
        }
        if requests >= MAX_REDIRECTS {
            return Err(GetError { url: location, message: format!("stopped after {MAX_REDIRECTS} redirects") });
        }
        requests += 1;
        // Go keeps a custom Host only through a relative redirect, and sends the previous URL as the Referer
        // unless it leaves HTTPS for HTTP.
        if location.contains("://") || location.starts_with("//") {
            host = None;
        }
        if url.https && !next.https {
            headers.remove(hyper::header::REFERER);
        } else if let Ok(referer) = HeaderValue::from_str(&url.to_string()) {
            headers.insert(hyper::header::REFERER, referer);
        }
        url = next;
    }
}

/// An exchange's head; the body is read by [`read_body`]. The connection's task ends with the response.
async fn get_once(
    url: &Url,
    host: Option<&HeaderValue>,
    headers: &HeaderMap,
) -> Result<hyper::Response<ConnBody>, String> {
    let addr = url.host_port();
    let tcp = TcpStream::connect(&addr).await.map_err(|e| format!("dial tcp {addr}: {}", go_dial_error(&e)))?;
    let mut builder = hyper::client::conn::http1::Builder::new();
    // Go writes canonical header names (`X-Custom`), hyper lower case unless told otherwise.
    builder.title_case_headers(true);
    // Go's `req.Host` defaults to the URL's host, which `formatURL` always gives with its port.
    let host = match host {
        Some(h) => h.clone(),
        None => HeaderValue::from_str(&url.host_port()).map_err(|_| "http: invalid Host header".to_owned())?,
    };
    let mut request = hyper::Request::get(url.path.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("net/http: invalid request target {:?}: {e}", url.path))?;
    let h = request.headers_mut();
    h.insert(hyper::header::HOST, host);
    h.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    // kubelet's probe transport has keep-alives off: Go sends `Connection: close`.
    h.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    if url.https {
        let config = tls_config().map_err(|e| format!("tls: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("tls: invalid server name {:?}: {e}", url.host))?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| tls_error(&e))?;
        send(builder, TokioIo::new(tls), request).await
    } else {
        send(builder, TokioIo::new(tcp), request).await
    }
}

/// Go's message when the server of an HTTPS request answers in plain HTTP (Go sees `HTTP/` where a TLS record
/// header should be; rustls, a first byte that is no record type), which lifecycle hooks retry over HTTP.
pub const HTTP_RESPONSE_TO_HTTPS: &str = "http: server gave HTTP response to HTTPS client";

fn tls_error(e: &std::io::Error) -> String {
    let plain = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)));
    if plain {
        HTTP_RESPONSE_TO_HTTPS.into()
    } else {
        format!("tls: {e}")
    }
}

type ConnBody = WithConn<hyper::body::Incoming>;

/// A response body that keeps its connection's task alive while it is read, and stops it when dropped.
pub struct WithConn<B> {
    body: B,
    _conn: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send<T>(
    builder: hyper::client::conn::http1::Builder,
    io: TokioIo<T>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<ConnBody>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = builder.handshake(io).await.map_err(|e| hyper_error(&e))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "probe connection ended");
        }
    }));
    let response = sender.send_request(request).await.map_err(|e| hyper_error(&e))?;
    Ok(response.map(|body| WithConn { body, _conn: conn }))
}

/// Reads at most [`MAX_BODY`] bytes (kubelet's `ReadAtMost`; more is truncated silently), within the deadline.
async fn read_body(url: &Url, response: hyper::Response<ConnBody>, deadline: Option<Instant>) -> Response {
    let status = response.status().as_u16();
    // The connection's task lives as long as `_conn`.
    let WithConn { mut body, _conn } = response.into_body();
    let mut data = Vec::new();
    let read = async {
        while data.len() < MAX_BODY {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(hyper_error(&e)),
                Some(Ok(frame)) => {
                    if let Ok(chunk) = frame.into_data() {
                        data.extend_from_slice(&chunk);
                    }
                }
            }
        }
        Ok(())
    };
    let result = match deadline {
        Some(d) => tokio::time::timeout_at(d, read).await.unwrap_or_else(|_| {
            Err("context deadline exceeded (Client.Timeout or context cancellation while reading body)".into())
        }),
        None => read.await,
    };
    data.truncate(MAX_BODY);
    Response { status, body: data, body_error: result.err(), url: url.clone() }
}

/// hyper's error with its cause; Go's wording where a probe's output is commonly read.
fn hyper_error(e: &hyper::Error) -> String {
    use std::error::Error;
    if e.is_incomplete_message() {
        return "EOF".into();
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return "unexpected EOF".into();
            }
        }
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Go's `url.URL.ResolveReference` of a redirect's `Location` against the request's URL; `Err` is why it is not
/// a URL this client can follow.
fn resolve(base: &Url, location: &str) -> Result<Url, String> {
    if location.bytes().any(|c| c < b' ' || c == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    let location = location.split('#').next().unwrap_or_default();
    let scheme_end = location.find("://").filter(|i| {
        location[..*i].bytes().enumerate().all(|(n, c)| c.is_ascii_alphabetic() || (n > 0 && b"+-.".contains(&c)))
    });
    let (https, rest) = match scheme_end {
        Some(i) => match location[..i].to_ascii_lowercase().as_str() {
            "http" => (false, &location[i + 3..]),
            "https" => (true, &location[i + 3..]),
            other => return Err(format!("unsupported protocol scheme {other:?}")),
        },
        None => match location.strip_prefix("//") {
            Some(rest) => (base.https, rest),
            None => {
                let (path, query) = location.split_once('?').map_or((location, None), |(p, q)| (p, Some(q)));
                let base_path = base.path.split('?').next().unwrap_or("/");
                let path = if path.is_empty() {
                    base_path.to_owned()
                } else if path.starts_with('/') {
                    remove_dot_segments(path)
                } else {
                    let dir = base_path.rsplit_once('/').map_or("", |(d, _)| d);
                    remove_dot_segments(&format!("{dir}/{path}"))
                };
                let target = match query {
                    Some(q) => format!("{path}?{q}"),
                    None if location.is_empty() => base.path.clone(),
                    None => path,
                };
                return Ok(Url { path: normalize_path(&target), ..base.clone() });
            }
        },
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("missing ']' in host")?;
        let port = match after.strip_prefix(':') {
            Some(p) if !p.is_empty() => p.parse().map_err(|_| format!("invalid port {p:?} after host"))?,
            _ => default_port,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() => (h.to_owned(), p.parse().map_err(|_| format!("invalid port {p:?}"))?),
            Some((h, _)) => (h.to_owned(), default_port),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err("http: no Host in request URL".into());
    }
    let path = if path.starts_with('/') { remove_dot_segments_keeping_query(path) } else { path.to_owned() };
    Ok(Url { https, host, port, path: normalize_path(&path) })
}

fn remove_dot_segments_keeping_query(target: &str) -> String {
    match target.split_once('?') {
        Some((p, q)) => format!("{}?{q}", remove_dot_segments(p)),
        None => remove_dot_segments(target),
    }
}

/// RFC 3986 §5.2.4, as Go's `resolvePath` applies it.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// Go's wording of the common dial errors.
pub fn go_dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => format!("connect: {e}"),
    }
}

/// kubelet's probe transport skips certificate verification (`InsecureSkipVerify`): a pod's certificate is not
/// issued for its IP.
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
    use crate::probes::USER_AGENT as PROBE_USER_AGENT;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn url(path: &str, port: u16) -> Url {
        Url { https: false, host: "127.0.0.1".into(), port, path: path.into() }
    }

    const T: Option<Duration> = Some(Duration::from_secs(5));

    /// Answers every connection's first read with `reply`, whatever was asked (raw bytes: bodies hyper would refuse).
    async fn answering(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        port
    }

    /// Serves canned responses by path, recording all a connection sent before it was answered.
    async fn server(routes: Vec<(&'static str, String)>) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = Vec::new();
                while !buf.ends_with(b"\r\n\r\n") {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
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
            ("/loop", "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n".into()),
        ])
        .await;
        let headers = vec![("x-custom".to_string(), "v".to_string()), ("Host".to_string(), "example".to_string())];
        let r = get(&url("/ok?x=1", port), &headers, PROBE_USER_AGENT, T).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /ok?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nHost: example\r\n") && head.contains("\r\nX-Custom: v\r\n"), "{head}");
        assert!(head.contains("\r\nUser-Agent: kube-probe/1.28\r\n"), "{head}");
        assert!(head.contains("\r\nAccept: */*\r\n") && head.contains("\r\nConnection: close\r\n"), "{head}");
        let r = get(&url("/moved", port), &[], PROBE_USER_AGENT, T).await.unwrap();
        assert_eq!((r.status, r.url.path.as_str()), (200, "/ok?x=1"), "same-host redirect followed");
        let r = get(&url("/away", port), &[], PROBE_USER_AGENT, T).await.unwrap();
        assert_eq!(r.status, 301, "another host's redirect is the answer");
        let r = get(&url("/chunked", port), &[], PROBE_USER_AGENT, T).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"fail"[..]));
        let e = get(&url("/loop", port), &[], PROBE_USER_AGENT, T).await.unwrap_err();
        assert_eq!(e.to_string(), "Get \"/loop\": stopped after 10 redirects");
    }

    /// kubelet's prober does not verify a pod's certificate (`InsecureSkipVerify`): one issued for another name,
    /// self-signed, is accepted.
    #[tokio::test]
    async fn https_probes_skip_certificate_verification() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["elsewhere.example".into()]).unwrap().self_signed(&key).unwrap();
        let der_key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der_key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut s) = acceptor.accept(tcp).await else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls").await;
                let _ = s.shutdown().await;
            }
        });
        let u = Url { https: true, ..url("/", port) };
        let r = get(&u, &[], PROBE_USER_AGENT, T).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"tls"[..]));
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_reads_as_go_does() {
        // A plain HTTP server answers the ClientHello with a 400, as most do.
        let port = answering(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
        let u = Url { https: true, ..url("/", port) };
        let e = get(&u, &[], PROBE_USER_AGENT, T).await.unwrap_err();
        assert_eq!(e.message, HTTP_RESPONSE_TO_HTTPS);
    }

    #[tokio::test]
    async fn refused_connection_reads_as_go_does() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get(&url("/", port), &[], PROBE_USER_AGENT, T).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Get \"http://127.0.0.1:{port}/\": dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
    }

    /// The chunk bomb: a chunk of 2^64-1 bytes announced, and a body that never ends (or ends early). The read stops
    /// at 10 KiB or errors; nothing panics, nothing grows.
    #[tokio::test]
    async fn a_chunk_bomb_is_read_to_10_kib_or_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                n += 1;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n").await;
                if n % 2 == 0 {
                    // Endless data.
                    let junk = vec![b'a'; 64 * 1024];
                    while s.write_all(&junk).await.is_ok() {}
                }
            }
        });
        let r = get(&url("/", port), &[], PROBE_USER_AGENT, T).await.unwrap();
        assert_eq!((r.status, r.body_error.as_deref()), (200, Some("unexpected EOF")), "{r:?}");
        let r = get(&url("/", port), &[], PROBE_USER_AGENT, T).await.unwrap();
        assert_eq!((r.status, r.body.len(), r.body_error), (200, MAX_BODY, None));
        // A size beyond 64 bits.
        let port = answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n").await;
        let r = get(&url("/", port), &[], PROBE_USER_AGENT, T).await.unwrap();
        assert!(r.body_error.is_some_and(|e| e.contains("overflow")));
    }

    #[tokio::test]
    async fn the_timeout_covers_the_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        let began = std::time::Instant::now();
        let r = get(&url("/", port), &[], PROBE_USER_AGENT, Some(Duration::from_millis(300))).await.unwrap();
        assert!(began.elapsed() < Duration::from_secs(2));
        assert_eq!(
            r.body_error.as_deref(),
            Some("context deadline exceeded (Client.Timeout or context cancellation while reading body)")
        );
    }

    #[tokio::test]
    async fn crlf_in_a_header_is_refused_before_anything_is_sent() {
        let (port, mut heads) = server(vec![]).await;
        for (name, value) in [("X-Evil", "a\r\nX-Smuggled: 1"), ("X-Evil\r\nX-Smuggled", "1"), ("Host", "a\r\nb")] {
            let headers = vec![(name.to_string(), value.to_string())];
            let e = get(&url("/", port), &headers, PROBE_USER_AGENT, T).await.unwrap_err();
            let want = match name {
                "X-Evil" => "net/http: invalid header field value for \"X-Evil\"".to_owned(),
                // Go's transport checks every header, `Host` among them, before the Host header's own check.
                "Host" => "net/http: invalid header field value for \"Host\"".to_owned(),
                _ => format!("net/http: invalid header field name {name:?}"),
            };
            assert_eq!(e.to_string(), format!("Get \"http://127.0.0.1:{port}/\": {want}"));
        }
        assert!(heads.try_recv().is_err(), "nothing reached the server");
    }

    #[test]
    fn probe_paths_become_go_request_targets() {
        for (path, want) in [
            ("", "/"),
            ("healthz", "/healthz"),
            ("/a b", "/a%20b"),
            ("/a!b(c)", "/a!b(c)"),
            ("/x?y=1&z", "/x?y=1&z"),
            ("/x#frag", "/x"),
            ("/%41", "/%41"),
            ("/a\r\nHost: evil", "/a%0D%0AHost:%20evil"),
            ("/a?b\r\n", "/a%3Fb%0D%0A"),
            ("/bad%zz", "/bad%25zz"),
            ("/é", "/%C3%A9"),
            ("//other/p", "/p"),
        ] {
            assert_eq!(normalize_path(path), want, "{path:?}");
        }
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base = Url { https: false, host: "10.0.0.1".into(), port: 8080, path: "/a/b?q".into() };
        assert_eq!(resolve(&base, "/c").unwrap().path, "/c");
        assert_eq!(resolve(&base, "c").unwrap().path, "/a/c");
        assert_eq!(resolve(&base, "../../c/./d").unwrap().path, "/c/d");
        assert_eq!(resolve(&base, "?z").unwrap().path, "/a/b?z");
        let abs = resolve(&base, "https://[fd00::1]:8443/z").unwrap();
        assert_eq!((abs.https, abs.host.as_str(), abs.port, abs.path.as_str()), (true, "fd00::1", 8443, "/z"));
        assert_eq!(abs.host_port(), "[fd00::1]:8443");
        let rel = resolve(&base, "//10.0.0.1/p").unwrap();
        assert_eq!((rel.https, rel.port, rel.path.as_str()), (false, 80, "/p"));
        assert!(resolve(&base, "ftp://x/").is_err());
        assert!(resolve(&base, "http://:80/").is_err());
    }

    #[test]
    fn headers_as_kubelet_builds_them() {
        let h = |list: &[(&str, &str)]| {
            let list: Vec<(String, String)> = list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            request_headers(&list, PROBE_USER_AGENT).unwrap()
        };
        let r = h(&[]);
        assert_eq!(
            (r.headers["user-agent"].as_bytes(), r.headers["accept"].as_bytes()),
            (&b"kube-probe/1.28"[..], &b"*/*"[..])
        );
        let r = h(&[("user-agent", "mine"), ("Accept", ""), ("X-A", "1"), ("x-a", "2"), ("Host", "h")]);
        assert_eq!(r.headers["user-agent"], "mine");
        assert!(!r.headers.contains_key("accept"), "an empty Accept removes it");
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        assert_eq!((r.host.as_ref().map(|v| v.as_bytes()), r.headers.contains_key("host")), (Some(&b"h"[..]), false));
        assert!(!h(&[("User-Agent", "")]).headers.contains_key("user-agent"), "an empty User-Agent sends none");
        let r = h(&[("Content-Length", "100"), ("transfer-encoding", "chunked"), ("Trailer", "x")]);
        assert_eq!(r.headers.len(), 2, "the request's framing is not the user's: {:?}", r.headers);
    }

    proptest! {
        /// Whatever the path, the request target is one valid origin-form target: no byte that could end the
        /// request line or start a header, accepted by hyper, stable under a second normalisation.
        #[test]
        fn any_path_gives_one_valid_request_target(path in any::<String>()) {
            let target = normalize_path(&path);
            prop_assert!(target.starts_with('/'));
            prop_assert!(target.bytes().all(|c| c > b' ' && c < 0x7f), "{target:?}");
            prop_assert!(target.parse::<hyper::Uri>().is_ok(), "{target:?}");
            prop_assert_eq!(normalize_path(&target), target.clone());
        }

        /// Paths of unreserved characters go as they are (with a leading slash); `//…` is Go's authority form.
        #[test]
        fn plain_paths_are_kept(path in "[A-Za-z0-9._~/-]{0,40}") {
            prop_assume!(!path.starts_with("//"));
            let target = normalize_path(&path);
            let want = if path.starts_with('/') { path.clone() } else { format!("/{path}") };
            prop_assert_eq!(target, want);
        }

        /// A header with CR or LF in its name or value is never built; any header that is built holds no control
        /// byte but tab.
        #[test]
        fn headers_never_carry_line_breaks(name in "[ -~\r\n]{1,12}", value in any::<String>()) {
            let built = request_headers(&[(name.clone(), value.clone())], PROBE_USER_AGENT);
            if name.contains(['\r', '\n']) || value.contains(['\r', '\n']) {
                prop_assert!(built.is_err());
            }
            if let Ok(r) = built {
                for (k, v) in &r.headers {
                    prop_assert!(k.as_str().bytes().all(|c| c > b' ' && c < 0x7f));
                    prop_assert!(v.as_bytes().iter().all(|&c| c == b'\t' || (c >= b' ' && c != 0x7f)));
                }
            }
        }

        /// Any Location resolves to a valid request target or is refused; nothing panics.
        #[test]
        fn any_location_resolves_or_is_refused(location in any::<String>()) {
            let base = Url { https: false, host: "10.0.0.1".into(), port: 8080, path: "/a/b".into() };
            if let Ok(next) = resolve(&base, &location) {
                prop_assert!(next.path.parse::<hyper::Uri>().is_ok(), "{:?}", next.path);
                prop_assert!(next.path.starts_with('/'));
            }
        }
    }
}
