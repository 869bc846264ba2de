//! Benchmark (not a test): ADD then DEL for N pod namespaces with our plugins and with the
//! reference plugins, same configuration (bridge + host-local, isGateway, ipMasq, hairpinMode),
//! interleaved in one run. Run it through `bench/run.sh`, which puts it in a throw-away "host"
//! network namespace so the bridges and iptables rules never touch the real host.
//!
//! Usage: cni-bench <our-bin-dir> <reference-bin-dir> [pods] [--no-masq]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Impl {
    label: &'static str,
    dir: String,
    net: u32,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn conf(net: u32, masq: bool) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("cntbench{net}"),
        "type": "bridge",
        "bridge": format!("cntb{net}"),
        "isGateway": true,
        "ipMasq": masq,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": format!("/tmp/cnt-bench-ipam-{}", std::process::id()),
            "ranges": [[{"subnet": format!("10.98.{net}.0/24")}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
    .to_string()
}

fn run(dir: &str, cmd: &str, id: &str, netns: &str, conf: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(format!("{dir}/bridge"))
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child.stdin.take().ok_or("stdin")?.write_all(conf.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!("{dir}/bridge {cmd} {id}: {}", String::from_utf8_lossy(&out.stdout)));
    }
    Ok(took)
}

fn stats(v: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.9))
}

fn netns(cmd: &str, name: &str) {
    let _ = Command::new("ip").args(["netns", cmd, name]).stderr(Stdio::null()).status();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: cni-bench <our-bin-dir> <reference-bin-dir> [pods] [--no-masq]");
        std::process::exit(2);
    }
    let pods: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let masq = !args.iter().any(|a| a == "--no-masq");
    let mut impls = [
        Impl { label: "ours", dir: args[1].clone(), net: 210, add: vec![], del: vec![] },
        Impl { label: "reference", dir: args[2].clone(), net: 211, add: vec![], del: vec![] },
    ];
    let name = |imp: usize, i: usize| format!("cntb-{}-{imp}-{i}", std::process::id());
    for imp in 0..impls.len() {
        for i in 0..pods {
            netns("add", &name(imp, i));
        }
    }
    let mut failed = None;
    'outer: for phase in ["ADD", "DEL"] {
        for i in 0..pods {
            for (imp, im) in impls.iter_mut().enumerate() {
                let c = conf(im.net, masq);
                match run(&im.dir, phase, &format!("bench-{i}"), &format!("/var/run/netns/{}", name(imp, i)), &c) {
                    Ok(d) if phase == "ADD" => im.add.push(d),
                    Ok(d) => im.del.push(d),
                    Err(e) => {
                        failed = Some(e);
                        break 'outer;
                    }
                }
            }
        }
    }
    for imp in 0..impls.len() {
        for i in 0..pods {
            netns("del", &name(imp, i));
        }
    }
    let _ = std::fs::remove_dir_all(format!("/tmp/cnt-bench-ipam-{}", std::process::id()));
    if let Some(e) = failed {
        eprintln!("benchmark aborted: {e}");
        std::process::exit(1);
    }
    println!("bridge + host-local, {pods} namespaces, isGateway, hairpinMode, ipMasq={masq}");
    println!("{:<10} {:>5} {:>12} {:>12}", "impl", "verb", "median ms", "p90 ms");
    let mut med = [[0.0; 2]; 2];
    for (k, im) in impls.iter().enumerate() {
        for (j, (verb, v)) in [("ADD", &im.add), ("DEL", &im.del)].into_iter().enumerate() {
            let (m, p) = stats(v);
            med[k][j] = m;
            println!("{:<10} {:>5} {:>12.2} {:>12.2}", im.label, verb, m, p);
        }
    }
    println!("ratio ours/reference (median): ADD {:.2}  DEL {:.2}", med[0][0] / med[1][0], med[0][1] / med[1][1]);
    for (j, verb) in ["ADD", "DEL"].iter().enumerate() {
        let (_, po) = stats(if j == 0 { &impls[0].add } else { &impls[0].del });
        let (_, pr) = stats(if j == 0 { &impls[1].add } else { &impls[1].del });
        println!("ratio ours/reference (p90): {verb} {:.2}", po / pr);
    }
}
