//! Property tests for what callers of the kubelet server control: paths and query parameters. Arbitrary text never
//! panics a parser, and sent through the whole server (auth filter and routes) to the container and stats endpoints
//! it is answered with a 4xx: the pod does not exist, the query is refused, or there is no such route.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use proptest::prelude::*;
use tower::ServiceExt;

use crate::config::{AuthorizationMode, ServerAuth};
use crate::logs::cri::log_options;
use crate::runtime::Runtime;
use crate::server::auth::{bearer_token, subresource_for_path, verb_for_method, Authenticator};
use crate::server::containers::{query_pairs, ContainerServerState};
use crate::server::stats::StatsState;
use crate::server::streaming::{command, ports, split_url, stream_options};
use crate::server::{kubelet_router, secure, ServerState};
use crate::status::store::PodStore;

/// Anything a URL component may carry once decoded: ASCII with the delimiters, controls, and any Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9=&%+?#/;:@. _~-]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// The parameters the endpoints read, with arbitrary values, mixed with arbitrary ones.
fn query_pair() -> impl Strategy<Value = (String, String)> {
    let known = prop::sample::select(vec![
        "follow",
        "previous",
        "timestamps",
        "sinceSeconds",
        "sinceTime",
        "tailLines",
        "limitBytes",
        "container",
        "command",
        "input",
        "output",
        "error",
        "stdin",
        "stdout",
        "stderr",
        "tty",
        "port",
        "only_cpu_and_memory",
    ])
    .prop_map(str::to_owned);
    let value = prop_oneof![
        text(),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("1".to_owned()),
        Just("2024-01-02T03:04:05Z".to_owned()),
        Just("-0".to_owned()),
        Just("99999999999999999999999".to_owned()),
    ];
    (prop_oneof![known, text()], value)
}

/// Every byte outside the unreserved set percent-encoded, so that any text makes a valid URI component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A raw query: encoded pairs, sometimes with raw `%`, `+`, empty pairs and truncated escapes left in.
fn raw_query() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(query_pair(), 0..6).prop_map(|pairs| {
            pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
        }),
        "[a-zA-Z0-9=&%+]{0,40}",
    ]
}

fn auth_config() -> ServerAuth {
    ServerAuth {
        client_ca_file: None,
        webhook_authentication: true,
        authentication_cache_ttl: Duration::from_secs(120),
        anonymous: true,
        authorization_mode: AuthorizationMode::AlwaysAllow,
        authorization_mode_set: true,
        authorized_ttl: Duration::from_secs(300),
        unauthorized_ttl: Duration::from_secs(30),
    }
}

/// The kubelet server's whole router, with an empty pod store and a runtime that accepts connections and never
/// answers (no request here may reach it).
fn server(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> axum::Router {
    let socket = dir.join("cri.sock");
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket) }).unwrap();
    rt.spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let runtime: Runtime = rt.block_on(Runtime::connect(&format!("unix://{}", socket.display()))).unwrap();
    let store = PodStore::default();
    let state = ServerState {
        store: store.clone(),
        runtime_metrics: Arc::default(),
        pod_workers: Arc::default(),
        pleg: Default::default(),
    };
    let containers = ContainerServerState { store: store.clone(), runtime: runtime.clone() };
    let stats = StatsState {
        stats: crate::stats::StatsProvider {
            node_name: "n".into(),
            runtime,
            pods: Arc::new(store.clone()),
            root_dir: dir.to_owned(),
            pod_logs_dir: dir.to_owned(),
            node_cpu: Arc::default(),
            volume_stats: Arc::default(),
        },
        store,
        configz: serde_json::json!({}),
    };
    let auth = Arc::new(Authenticator::new(auth_config(), "n".into(), None));
    secure::with_auth(kubelet_router(state, containers, stats), auth)
}

fn path() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec!["containerLogs", "exec", "attach", "portForward", "run", "stats"]);
    (prefix, prop::collection::vec(text(), 0..6)).prop_map(|(prefix, segments)| {
        let mut p = format!("/{prefix}");
        for s in segments {
            p.push('/');
            p.push_str(&encode(&s));
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn query_parameters_never_panic_the_parsers(raw in raw_query(), pairs in prop::collection::vec(query_pair(), 0..8)) {
        let decoded = query_pairs(Some(&raw));
        prop_assert!(decoded.len() <= raw.len());
        for query in [&decoded, &pairs] {
            if let Err(e) = log_options(query, jiff::Timestamp::now()) {
                prop_assert!((400..500).contains(&e.status), "{}", e.status);
            }
            let _ = stream_options(query);
            let _ = command(query);
            if let Ok(ports) = ports(query) {
                prop_assert!(ports.iter().all(|p| (1..=65535).contains(p)));
            }
        }
    }

    #[test]
    fn paths_headers_and_urls_never_panic_their_parsers(s in text(), method in text()) {
        let _ = subresource_for_path(&s);
        let _ = verb_for_method(&method);
        let _ = split_url(&s);
        if let Some(token) = bearer_token(Some(&s)) {
            prop_assert!(!token.is_empty() && token.trim() == token);
        }
    }
}

#[test]
fn arbitrary_paths_and_queries_to_the_container_and_stats_endpoints_get_a_4xx() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = server(&rt, dir.path());
    let methods = prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS]);
    let config = ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&(methods, path(), raw_query()), |(method, path, query)| {
        // The summary itself reads the runtime: only its query parsing is in question, covered above.
        prop_assume!(path != "/stats/summary");
        let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let request = Request::builder().method(method.clone()).uri(&uri).body(Body::empty()).unwrap();
        let response = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), app.clone().oneshot(request)).await })
            .map_err(|_| TestCaseError::fail(format!("{method} {uri}: no answer within 5 s")))?
            .unwrap();
        let status = response.status().as_u16();
        prop_assert!((400..500).contains(&status), "{method} {uri}: {status}");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
