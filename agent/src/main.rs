//! The `rkubelet` binary: flags named as kubelet's, the configuration they and the config file give, logging, and
//! start-up (`kubelet::run`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use rkubelet::config::{FlagOverrides, KubeletConfig, KubeletConfigurationFile};
use rkubelet::kubelet::run::StartOptions;
use rkubelet::node;
use rkubelet::server;

mod allocator;
mod flags;
mod join;
mod profiling;

/// A kubelet-compatible node agent.
#[derive(Debug, Parser)]
#[command(name = "rkubelet")]
struct Flags {
    /// KubeletConfiguration file (kubelet.config.k8s.io/v1beta1). Flags override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder of static pod manifests (staticPodPath).
    #[arg(long)]
    pod_manifest_path: Option<String>,
    /// CRI endpoint of the container runtime [default: unix:///run/containerd/containerd.sock].
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// Folder for the agent's own files [default: /var/lib/rkubelet].
    #[arg(long)]
    root_dir: Option<String>,
    /// Node name to use instead of the hostname.
    #[arg(long)]
    hostname_override: Option<String>,
    /// Port of the read-only HTTP server (/healthz, /pods, /metrics); 0 disables it.
    #[arg(long)]
    read_only_port: Option<u16>,
    /// Address the kubelet and read-only servers listen on [default: 0.0.0.0].
    #[arg(long)]
    address: Option<String>,
    /// Port of the authenticated HTTPS kubelet server (logs, exec, port-forward, stats) [default: 10250].
    #[arg(long)]
    port: Option<u16>,
    /// Port of the healthz server on healthzBindAddress; 0 disables it [default: 10248].
    #[arg(long)]
    healthz_port: Option<u16>,
    /// Serving certificate of the kubelet server; without it a self-signed one is kept in --cert-dir.
    #[arg(long)]
    tls_cert_file: Option<String>,
    /// Key of --tls-cert-file.
    #[arg(long)]
    tls_private_key_file: Option<String>,
    /// CA bundle that verifies client certificates of callers of the kubelet server.
    #[arg(long)]
    client_ca_file: Option<String>,
    /// Allow anonymous requests to the kubelet server.
    #[arg(long)]
    anonymous_auth: Option<bool>,
    /// Authenticate bearer tokens through TokenReview.
    #[arg(long)]
    authentication_token_webhook: Option<bool>,
    /// AlwaysAllow or Webhook (SubjectAccessReview).
    #[arg(long)]
    authorization_mode: Option<String>,
    /// Pod CIDR of this node when running without an API server.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Resolver configuration pods of the Default DNS policy get (resolvConf); "" gives them the node's
    /// loopback resolver [default: /etc/resolv.conf].
    #[arg(long)]
    resolv_conf: Option<String>,
    /// kubeconfig for the API server; without it the agent runs standalone.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig used to obtain a client certificate (TLS bootstrap) when --kubeconfig does not exist yet.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Folder of the client certificate obtained by TLS bootstrap [default: <root-dir>/pki].
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// IP address(es) of the node, comma-separated; detected from the host's interfaces when not given.
    #[arg(long)]
    node_ip: Option<String>,
    /// Labels to add when registering the node: key=value,key=value.
    #[arg(long)]
    node_labels: Option<String>,
    /// The pod sandbox image, which image garbage collection never removes (kubelet's flag; containerd's own
    /// sandbox image is kept too).
    #[arg(long)]
    pod_infra_container_image: Option<String>,
    /// Log verbosity, as kubelet's -v: 0-2 info, 3-4 debug, 5 and above trace. RUST_LOG overrides it.
    #[arg(short = 'v', long = "v")]
    v: Option<u32>,
}

fn init_logging(verbosity: u32) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},h2=info,tower=info,hyper=info")));
    // Plain text in the journal and in log files, as kubelet writes; colours only on a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn parse_labels(text: Option<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').with_context(|| format!("--node-labels: {pair:?} is not key=value"))?;
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(labels)
}

async fn run(flags: Flags, command_line: flags::CommandLine) -> anyhow::Result<()> {
    let fields = &command_line.config_fields;
    let file = match &flags.config {
        Some(path) => Some((path.as_path(), KubeletConfigurationFile::load_with_flags(path, fields)?)),
        None if !fields.is_empty() => {
            Some((std::path::Path::new("<flags>"), KubeletConfigurationFile::from_flags(fields)?))
        }
        None => None,
    };
    let overrides = FlagOverrides {
        pod_manifest_path: flags.pod_manifest_path.clone(),
        container_runtime_endpoint: flags.container_runtime_endpoint.clone(),
        root_dir: flags.root_dir.clone(),
        hostname_override: flags.hostname_override.clone(),
        read_only_port: flags.read_only_port,
        address: flags.address.clone(),
        pod_cidr: flags.pod_cidr.clone(),
        resolv_conf: flags.resolv_conf.clone(),
        verbosity: flags.v,
        port: flags.port,
        healthz_port: flags.healthz_port,
        tls_cert_file: flags.tls_cert_file.clone(),
        tls_private_key_file: flags.tls_private_key_file.clone(),
        client_ca_file: flags.client_ca_file.clone(),
        anonymous_auth: flags.anonymous_auth,
        authentication_token_webhook: flags.authentication_token_webhook,
        authorization_mode: flags.authorization_mode.clone(),
    };
    let config = KubeletConfig::resolve(file, &overrides, &node::hostname())?;
    init_logging(config.verbosity);
    if let Some(refusal) = server::auth::refuse_without_api_server(&config.auth, flags.kubeconfig.is_some()) {
        anyhow::bail!("{refusal} (set authorization.mode: AlwaysAllow, or give --kubeconfig)");
    }
    for w in command_line.warnings.iter().chain(&config.warnings) {
        tracing::warn!("{w}");
    }
    tracing::info!(node = %config.node_name, endpoint = %config.container_runtime_endpoint, "starting rkubelet");

    let options = StartOptions {
        hostname_override: flags.hostname_override.clone(),
        node_labels: parse_labels(flags.node_labels.as_deref())?,
        node_ip: flags.node_ip.clone(),
        cert_dir: flags.cert_dir.clone(),
        kubeconfig: flags.kubeconfig.clone(),
        bootstrap_kubeconfig: flags.bootstrap_kubeconfig.clone(),
        pod_infra_container_image: flags.pod_infra_container_image.clone(),
    };
    rkubelet::kubelet::run::run(config, options).await
}

#[tokio::main]
async fn main() -> ExitCode {
    // Heap profile with `--features dhat-heap` (written at exit or on SIGUSR2); nothing otherwise.
    let _heap_profile = profiling::start();
    tokio::spawn(allocator::trim_periodically());
    let args: Vec<String> = std::env::args().collect();
    // `rkubelet join ...` is a command of its own, not kubelet flags.
    if args.get(1).is_some_and(|a| a == "join") {
        return join::main(&args[1..]).await;
    }
    let command_line = match flags::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rkubelet: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(version) = &command_line.version {
        if version != "false" {
            println!("{}", flags::version_line(version));
            return ExitCode::SUCCESS;
        }
    }
    // kubelet exits 1 on a bad flag value; --help is not an error.
    let flags = match Flags::try_parse_from(&command_line.parser_args) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match run(flags, command_line).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rkubelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_are_key_value_pairs() {
        let labels = parse_labels(Some("a=1, b = 2,,")).unwrap();
        assert_eq!(labels, BTreeMap::from([("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())]));
        assert!(parse_labels(Some("novalue")).is_err());
    }
}
