//! `weave dns-add [ADDR...] (CONTAINER | -h FQDN)`, `weave dns-remove [ADDR...]
//! (CONTAINER | -h FQDN)` and `weave dns-lookup NAME`: POST /dns-add, /dns-remove and GET
//! /lookup/NAME. CONTAINER is `--netns NAME|PATH`, `--pid PID`, or else the last
//! argument, a Docker container; it must be attached. Without addresses, the
//! container's; without `-h`, the name it was attached with (`--name`). Names may leave
//! out the domain.

use std::net::Ipv4Addr;

use clap::{ArgAction, Args};

use super::attach::TargetArgs;
use super::{ApiArgs, check_answer};
use crate::control::Target;

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct DnsArgs {
    /// Addresses, then the Docker container, unless --netns or --pid names it.
    #[arg(value_name = "ADDR|CONTAINER")]
    pub(crate) args: Vec<String>,
    /// The name (`db` or `db.weave.local`).
    #[arg(short = 'h', long = "hostname", value_name = "FQDN")]
    pub(crate) fqdn: Option<String>,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Print help (-h is the name, as in Weave).
    #[arg(long, action = ArgAction::Help)]
    pub(crate) help: Option<bool>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct LookupArgs {
    /// A name, with or without the domain.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

fn parse_addr(arg: &str) -> Option<Ipv4Addr> {
    let bare = arg.strip_prefix("ip:").unwrap_or(arg);
    bare.split('/').next().and_then(|ip| ip.parse().ok())
}

/// The form for /dns-add and /dns-remove.
pub(crate) fn dns_form(args: &DnsArgs) -> Result<Vec<(&'static str, String)>, String> {
    let mut form = Vec::new();
    let mut target = args
        .target
        .netns
        .clone()
        .or_else(|| args.target.pid.clone());
    for (i, arg) in args.args.iter().enumerate() {
        if let Some(addr) = parse_addr(arg) {
            form.push(("addr", addr.to_string()));
        } else if i + 1 == args.args.len() && target.is_none() {
            target = Some(Target::container(arg)?);
        } else {
            return Err(format!(
                "{arg:?} is not an address (the container comes last, or with --netns/--pid)"
            ));
        }
    }
    match &target {
        Some(Target::Netns(ns)) => form.push(("netns", ns.clone())),
        Some(Target::Pid(pid)) => form.push(("pid", pid.to_string())),
        Some(Target::Container(c)) => form.push(("container", c.clone())),
        None if args.fqdn.is_none() => {
            return Err("give a container, or -h FQDN".to_owned());
        }
        None => {}
    }
    if let Some(fqdn) = &args.fqdn {
        form.push(("fqdn", fqdn.clone()));
    }
    Ok(form)
}

async fn post(args: &DnsArgs, path: &str, subcommand: &str) -> anyhow::Result<()> {
    let form = dns_form(args).unwrap_or_else(|why| super::usage_exit(subcommand, &why));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    check_answer(args.api.client().post_form(path, &pairs).await?)?;
    Ok(())
}

pub(super) async fn run_add(args: DnsArgs) -> anyhow::Result<()> {
    post(&args, "/dns-add", "dns-add").await
}

pub(super) async fn run_remove(args: DnsArgs) -> anyhow::Result<()> {
    post(&args, "/dns-remove", "dns-remove").await
}

/// Prints the addresses, one per line (as `dig +short` did for Weave); none is an error.
pub(super) async fn run_lookup(args: LookupArgs) -> anyhow::Result<()> {
    let name = args.name.trim();
    if name.is_empty() || name.contains(['/', '?', '#', '%', ' ']) {
        super::usage_exit("dns-lookup", &format!("{name:?} is not a name"));
    }
    let body = check_answer(args.api.client().get(&format!("/lookup/{name}")).await?)?;
    print!("{body}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn form(argv: &[&str]) -> Result<Vec<(&'static str, String)>, String> {
        let mut full = vec!["weave", "dns-add"];
        full.extend(argv);
        let Command::DnsAdd(args) = Cli::try_parse_from(full).expect("parses").command else {
            panic!("expected dns-add");
        };
        dns_form(&args)
    }

    #[test]
    fn dns_add_takes_weaves_shapes() {
        assert_eq!(
            form(&["198.18.0.9", "-h", "x.weave.local"]),
            Ok(vec![
                ("addr", "198.18.0.9".to_owned()),
                ("fqdn", "x.weave.local".to_owned())
            ])
        );
        assert_eq!(
            form(&["198.18.0.9", "db"]),
            Ok(vec![
                ("addr", "198.18.0.9".to_owned()),
                ("container", "db".to_owned())
            ])
        );
        assert_eq!(
            form(&["--netns", "web", "-h", "www"]),
            Ok(vec![
                ("netns", "web".to_owned()),
                ("fqdn", "www".to_owned())
            ])
        );
        assert!(form(&["198.18.0.9"]).is_err());
        assert!(form(&["db", "198.18.0.9"]).is_err());
        assert!(form(&["--netns", "web", "db"]).is_err());
    }
}
