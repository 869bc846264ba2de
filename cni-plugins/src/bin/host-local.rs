//! host-local IPAM plugin: hands out addresses from configured ranges, tracked on local disk.

use cni_plugins::error::{CniError, Result};
use cni_plugins::ipam::{self, Config, IpamConf, Store};
use cni_plugins::skel::{self, CmdArgs, Plugin};
use cni_plugins::spec::CniResult;

struct HostLocal;

#[derive(serde::Deserialize)]
struct Conf {
    #[serde(default)]
    ipam: Option<IpamConf>,
}

fn config(args: &CmdArgs) -> Result<Config> {
    let c: Conf = args.parse_conf()?;
    let ipam = c.ipam.ok_or_else(|| CniError::invalid_config("IPAM config missing 'ipam' key"))?;
    Config::from_ipam(&args.conf.name, &ipam)
}

impl Plugin for HostLocal {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let cfg = config(args)?;
        let dns = match &cfg.resolv_conf {
            Some(p) => ipam::parse_resolv_conf(p)?,
            None => Default::default(),
        };
        let ips = ipam::allocate(&cfg, &args.container_id, &args.ifname)?;
        Ok(CniResult { cni_version: String::new(), interfaces: vec![], ips, routes: cfg.routes.clone(), dns })
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let cfg = config(args)?;
        if !cfg.data_dir.exists() {
            return Ok(());
        }
        Store::open(&cfg.data_dir)?.release_by_id(&args.container_id, &args.ifname).map(|_| ())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let cfg = config(args)?;
        let found =
            cfg.data_dir.exists() && !Store::open(&cfg.data_dir)?.find(&args.container_id, &args.ifname)?.is_empty();
        if found {
            Ok(())
        } else {
            Err(CniError::internal(format!(
                "host-local: failed to find address added by container {}",
                args.container_id
            )))
        }
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        let cfg = config(args)?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            CniError::with_details(
                cni_plugins::error::ERR_NOT_AVAILABLE,
                format!("cannot use {}", cfg.data_dir.display()),
                e,
            )
        })
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let cfg = config(args)?;
        ipam::gc(&cfg, args.conf.valid_attachments.as_deref().unwrap_or_default())
    }
}

fn main() {
    skel::run(&HostLocal)
}
