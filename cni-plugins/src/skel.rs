//! The exec protocol: parameters from the environment, configuration on stdin, a result or an
//! error as JSON on stdout, and the exit status (SPEC.md, "Section 3: Execution Protocol").

use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{CniError, Result, ERR_DECODE};
use crate::spec::{
    check_version, CniResult, NetConf, Version, VersionInfo, LATEST_VERSION, SUPPORTED_VERSIONS, V0_4_0, V1_1_0,
};

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// Everything a verb needs: the environment and the configuration.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    /// `None` when CNI_NETNS is unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// CNI_ARGS as key/value pairs.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
    /// The parsed common part of the configuration.
    pub conf: NetConf,
    /// The configuration as a JSON value (for plugin-specific fields).
    pub raw: Value,
    pub version: Version,
}

impl CmdArgs {
    /// Parse the plugin's own configuration type from stdin.
    pub fn parse_conf<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.raw).map_err(|e| CniError::decode("failed to decode network configuration", e))
    }

    /// The `prevResult`, if the configuration carries one.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.conf.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v).map(Some),
        }
    }

    pub fn cni_arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A plugin's verbs. STATUS and GC (1.1.0) default to success.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult>;
    fn del(&self, args: &CmdArgs) -> Result<()>;
    fn check(&self, args: &CmdArgs) -> Result<()>;
    fn status(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
    fn gc(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
}

/// An environment lookup, injectable for tests.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn get(&self, key: &str) -> Option<String> {
        self(key)
    }
}

/// What the process prints and how it exits.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Validate a container ID as libcni does: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!("invalid characters in CNI_CONTAINERID {id:?}")))
    }
}

/// A byte Linux's `isspace` takes (lib/ctype.c): its Latin-1 table counts 0xa0, the no-break space, which is also
/// the second byte of UTF-8 characters such as "à".
fn kernel_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ' | 0xa0)
}

/// Validate an interface name as the kernel would accept it (`dev_valid_name`, net/core/dev.c, which looks at
/// bytes), and as libcni does (no whitespace characters), and without control characters.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > MAX_IFNAME_LEN
        || name == "."
        || name == ".."
        || name.bytes().any(kernel_space)
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        Err(CniError::invalid_env(format!("invalid CNI_IFNAME {name:?}")))
    } else {
        Ok(())
    }
}

/// Parse CNI_ARGS (`K1=V1;K2=V2`).
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            _ => return Err(CniError::invalid_env(format!("invalid CNI_ARGS pair {pair:?}"))),
        }
    }
    Ok(out)
}

/// Parse the environment and stdin into [`CmdArgs`]; `Err` carries the version to report in.
pub fn parse(env: &dyn Env, stdin: &[u8]) -> std::result::Result<CmdArgs, (CniError, String)> {
    let latest = LATEST_VERSION.to_string();
    let cmd_str = env.get("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&cmd_str).ok_or_else(|| {
        (CniError::invalid_env(format!("unknown or missing CNI_COMMAND {cmd_str:?}")), latest.clone())
    })?;

    // VERSION may come with an empty or minimal stdin.
    let raw: Value = if stdin.iter().all(|b| b.is_ascii_whitespace()) && command == Command::Version {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(stdin).map_err(|e| {
            (CniError::with_details(ERR_DECODE, "failed to decode network configuration", e), latest.clone())
        })?
    };
    if !raw.is_object() {
        return Err((CniError::new(ERR_DECODE, "network configuration is not a JSON object"), latest));
    }
    let conf = NetConf::deserialize_from(&raw).map_err(|e| (e, latest.clone()))?;
    let reply_version =
        if SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) { conf.cni_version.clone() } else { latest.clone() };
    let fail = |e: CniError| (e, reply_version.clone());

    let mut args = CmdArgs {
        command,
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        args: Vec::new(),
        path: Vec::new(),
        stdin: stdin.to_vec(),
        conf,
        raw,
        version: Version(1, 1, 0),
    };
    if command == Command::Version {
        return Ok(args);
    }
    args.version = check_version(&args.conf.cni_version).map_err(fail)?;
    if args.conf.name.is_empty() {
        return Err(fail(CniError::invalid_config("network configuration has no \"name\"")));
    }
    let required = |key: &str| -> Result<String> {
        match env.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(CniError::invalid_env(format!("required environment variable {key} is not set"))),
        }
    };
    match command {
        Command::Add | Command::Check | Command::Del => {
            args.container_id = required("CNI_CONTAINERID").map_err(fail)?;
            validate_container_id(&args.container_id).map_err(fail)?;
            args.ifname = required("CNI_IFNAME").map_err(fail)?;
            validate_ifname(&args.ifname).map_err(fail)?;
            if command == Command::Del {
                args.netns = env.get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from);
            } else {
                args.netns = Some(PathBuf::from(required("CNI_NETNS").map_err(fail)?));
            }
            args.args = parse_cni_args(&env.get("CNI_ARGS").unwrap_or_default()).map_err(fail)?;
        }
        Command::Status | Command::Gc | Command::Version => {}
    }
    if command == Command::Check && args.version < V0_4_0 {
        return Err(fail(CniError::new(
            crate::error::ERR_INCOMPATIBLE_VERSION,
            format!("config version {:?} does not allow CHECK", args.conf.cni_version),
        )));
    }
    if matches!(command, Command::Status | Command::Gc) && args.version < V1_1_0 {
        return Err(fail(CniError::new(
            crate::error::ERR_INCOMPATIBLE_VERSION,
            format!("config version {:?} does not allow {cmd_str}", args.conf.cni_version),
        )));
    }
    args.path =
        env.get("CNI_PATH").unwrap_or_default().split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
    Ok(args)
}

impl NetConf {
    fn deserialize_from(raw: &Value) -> Result<NetConf> {
        use serde::Deserialize;
        NetConf::deserialize(raw).map_err(|e| CniError::decode("failed to decode network configuration", e))
    }
}

/// Run one invocation without touching the process (testable).
pub fn dispatch(plugin: &dyn Plugin, env: &dyn Env, stdin: &[u8]) -> Outcome {
    let args = match parse(env, stdin) {
        Ok(a) => a,
        Err((e, v)) => return Outcome { stdout: e.to_json(&v), exit_code: 1 },
    };
    let version = args.conf.cni_version.clone();
    let res = match args.command {
        Command::Version => {
            let v = if SUPPORTED_VERSIONS.contains(&version.as_str()) {
                version.clone()
            } else {
                LATEST_VERSION.to_string()
            };
            let info = VersionInfo {
                cni_version: v,
                supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
            };
            return Outcome { stdout: serde_json::to_string(&info).unwrap_or_default(), exit_code: 0 };
        }
        Command::Add => plugin.add(&args).and_then(|r| {
            serde_json::to_string(&r.to_version(&version))
                .map_err(|e| CniError::internal(format!("failed to encode result: {e}")))
        }),
        Command::Del => plugin.del(&args).map(|()| String::new()),
        Command::Check => plugin.check(&args).map(|()| String::new()),
        Command::Status => plugin.status(&args).map(|()| String::new()),
        Command::Gc => plugin.gc(&args).map(|()| String::new()),
    };
    match res {
        Ok(stdout) => Outcome { stdout, exit_code: 0 },
        Err(e) => Outcome { stdout: e.to_json(&version), exit_code: 1 },
    }
}

/// The body of every plugin's `main`: read stdin, dispatch, print, exit.
pub fn run(plugin: &dyn Plugin) -> ! {
    let mut stdin = Vec::new();
    let out = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => dispatch(plugin, &ProcessEnv, &stdin),
        Err(e) => Outcome { stdout: CniError::io("failed to read stdin", e).to_json(LATEST_VERSION), exit_code: 1 },
    };
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    if !out.stdout.is_empty() {
        let _ = so.write_all(b"\n");
    }
    let _ = so.flush();
    std::process::exit(out.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Nop;
    impl Plugin for Nop {
        fn add(&self, _: &CmdArgs) -> Result<CniResult> {
            Ok(CniResult::default())
        }
        fn del(&self, _: &CmdArgs) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> Result<()> {
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    fn code(o: &Outcome) -> u64 {
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        v["code"].as_u64().unwrap()
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt"),
    ];

    #[test]
    fn error_codes() {
        let ok = br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        assert_eq!(dispatch(&Nop, &env(ADD_ENV), ok).exit_code, 0);
        assert_eq!(code(&dispatch(&Nop, &env(ADD_ENV), b"{not json")), 6);
        assert_eq!(code(&dispatch(&Nop, &env(ADD_ENV), br#"{"cniVersion":"0.2.0","name":"n"}"#)), 1);
        assert_eq!(code(&dispatch(&Nop, &env(ADD_ENV), br#"{"cniVersion":"1.0.0"}"#)), 7);
        assert_eq!(code(&dispatch(&Nop, &env(&ADD_ENV[..2]), ok)), 4);
        assert_eq!(code(&dispatch(&Nop, &env(&[("CNI_COMMAND", "NOPE")]), ok)), 4);
        let bad_id = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "../x"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")];
        assert_eq!(code(&dispatch(&Nop, &env(&bad_id), ok)), 4);
        let check = [("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "a"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")];
        assert_eq!(code(&dispatch(&Nop, &env(&check), br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#)), 1);
        let del = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0")];
        assert_eq!(dispatch(&Nop, &env(&del), ok).exit_code, 0);
    }

    #[test]
    fn version_verb() {
        let o = dispatch(&Nop, &env(&[("CNI_COMMAND", "VERSION")]), b"");
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], LATEST_VERSION);
        assert!(v["supportedVersions"].as_array().unwrap().iter().any(|x| x == "0.3.1"));
    }

    #[test]
    fn interface_names_the_kernel_refuses_are_refused() {
        // "à" is c3 a0: the kernel's isspace(0xa0) refuses it (RTNETLINK: Invalid argument).
        assert_eq!(validate_ifname("t\u{e0}").unwrap_err().code, 4);
        assert!(validate_ifname("t\u{e1}").is_ok());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcde").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
    }

    /// The kernel's `dev_valid_name`.
    fn dev_valid_name(name: &[u8]) -> bool {
        !name.is_empty()
            && name.len() < 16
            && name != b"."
            && name != b".."
            && !name.contains(&0)
            && !name.iter().any(|&b| b == b'/' || b == b':' || kernel_space(b))
    }

    fn ifname_like() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let c = prop_oneof![
            prop::char::range('a', 'z'),
            prop::char::range('0', '9'),
            prop::sample::select(
                &['.', '-', '_', '/', ':', ' ', '\t', '\0', '\u{a0}', '\u{e0}', '\u{e1}', '\u{2000}', '\u{1F600}'][..]
            ),
            any::<char>(),
        ];
        prop::collection::vec(c, 0..18).prop_map(|v| v.into_iter().collect())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        #[test]
        fn an_accepted_interface_name_is_one_the_kernel_accepts(name in ifname_like()) {
            match validate_ifname(&name) {
                Ok(()) => proptest::prop_assert!(dev_valid_name(name.as_bytes()), "{name:?}"),
                Err(e) => proptest::prop_assert_eq!(e.code, 4),
            }
            // Printable ASCII: exactly the kernel's rule.
            if name.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                proptest::prop_assert_eq!(validate_ifname(&name).is_ok(), dev_valid_name(name.as_bytes()));
            }
        }

        #[test]
        fn cni_args_round_trip(
            pairs in proptest::collection::vec(("[A-Za-z0-9_]{1,12}", "[A-Za-z0-9_./=-]{0,12}"), 0..6),
        ) {
            let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let parsed = parse_cni_args(&joined.join(";")).unwrap();
            proptest::prop_assert_eq!(parsed, pairs);
        }

        #[test]
        fn any_cni_args_parse_to_pairs_or_an_environment_error(s in "[a-zA-Z=;_ \u{0}-\u{7f}\u{e0}]{0,40}") {
            match parse_cni_args(&s) {
                Ok(pairs) => {
                    for (k, v) in &pairs {
                        proptest::prop_assert!(!k.is_empty() && !k.contains('=') && !k.contains(';') && !v.contains(';'));
                    }
                    let rejoined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    proptest::prop_assert_eq!(parse_cni_args(&rejoined.join(";")).unwrap(), pairs);
                }
                Err(e) => proptest::prop_assert_eq!(e.code, crate::error::ERR_INVALID_ENV),
            }
        }
    }

    #[test]
    fn cni_args() {
        assert_eq!(parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a").unwrap().len(), 2);
        assert_eq!(parse_cni_args("oops").unwrap_err().code, 4);
        assert!(parse_cni_args("").unwrap().is_empty());
    }
}
