//! The kubelet server on `address:port` (10250): HTTPS, every request authenticated and authorised as kubelet's
//! `InstallAuthFilter` does, then the read-only endpoints plus the container endpoints (logs, exec, attach,
//! port-forward, run).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::server::auth::{bearer_token, Authenticator, Credentials, Refusal};
use crate::server::connection::Limits;
use crate::server::tls::certificate_user;
use crate::api::auth::UserInfo;

/// The verified client certificate's user for one connection.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(pub Option<UserInfo>);

/// kubelet's auth filter: 401 without an identity, 403 without the right, 500 when the authoriser fails.
async fn auth_filter(
    State(auth): State<Arc<Authenticator>>,
    peer: Option<Extension<PeerCertificate>>,
    request: Request,
    next: Next,
) -> Response {
    let credentials = match peer.and_then(|Extension(p)| p.0) {
        Some(user) => Credentials::Certificate(user),
        None => match bearer_token(request.headers().get("authorization").and_then(|v| v.to_str().ok())) {
            Some(token) => Credentials::Bearer(token),
            None => Credentials::None,
        },
    };
    let user = match auth.authenticate(&credentials).await {
        Ok(user) => user,
        Err(Refusal::TooManyRequests) => return too_many_requests(),
        Err(_) => return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
    };
    match auth.authorize(&user, request.method().as_str(), request.uri().path()).await {
        Ok(()) => {
            let (method, uri) = (request.method().clone(), request.uri().clone());
            let response = next.run(request).await;
            tracing::debug!(%method, %uri, user = %user.name, status = response.status().as_u16(), "kubelet server request");
            response
        }
        Err(Refusal::Unauthorized) => (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
        Err(Refusal::Forbidden(msg)) => {
            tracing::debug!(user = %user.name, path = %request.uri().path(), "{msg}");
            (StatusCode::FORBIDDEN, msg).into_response()
        }
        Err(Refusal::AuthorizationError(msg)) => (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response(),
        Err(Refusal::TooManyRequests) => too_many_requests(),
    }
}

/// The API server's answer when it is overloaded (`tooManyRequests`,
/// k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go).
fn too_many_requests() -> Response {
    (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")], "Too many requests, please try again later.\n")
        .into_response()
}

/// Wraps the routes in the auth filter (for every path, as kubelet filters its whole container).
pub fn with_auth(routes: Router, auth: Arc<Authenticator>) -> Router {
    routes.layer(axum::middleware::from_fn_with_state(auth, auth_filter))
}

/// Serves `app` over TLS on `listener`, one task per connection, HTTP/2 or HTTP/1.1 as ALPN agrees (the API server's
/// reads of logs and stats come over HTTP/2, as with kubelet; its streaming upgrades over HTTP/1.1, which stay open).
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) -> std::io::Result<()> {
    serve_tls_with(listener, tls, app, Limits::default()).await
}

/// As [`serve_tls`], with other limits.
pub async fn serve_tls_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    max = limits.max_connections,
                    "kubelet server at its connection limit: waiting for one to end"
                );
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return Ok(()),
                }
            }
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept on the kubelet server failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small frames both ways (SPDY, WebSocket): without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall each
        // exchange by tens of milliseconds. Go, and so kubelet, sets it on every connection.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(limits.tls_handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let (_, tls) = stream.get_ref();
            let user = tls.peer_certificates().and_then(|c| c.first()).and_then(certificate_user);
            let h2 = tls.alpn_protocol() == Some(b"h2");
            let app = app.layer(Extension(PeerCertificate(user)));
            crate::server::connection::serve(stream, h2, app, limits, remote).await;
        });
    }
}
