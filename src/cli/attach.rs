//! `weave attach [CIDR...] [--name NAME] [--without-dns] [--no-multicast-route] TARGET`
//! and `weave detach [CIDR...] TARGET`: POST /attach and /detach. TARGET is
//! `--netns NAME|PATH`, `--pid PID`, or else the last argument, a Docker container. The
//! daemon does the plumbing: it sees the host's namespaces whatever namespace we run in,
//! and remembers what it attached.

use clap::Args;
use ipnet::Ipv4Net;

use super::{ApiArgs, check_answer, client_runtime, usage_exit};
use crate::control::{Target, check_container_name, parse_cidr};

/// Which container: a namespace, a process, or (without either) a Docker container
/// given as the last argument.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct TargetArgs {
    /// The container's network namespace: a name from `ip netns`, or a path such as
    /// /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH", value_parser = Target::netns, conflicts_with = "pid")]
    pub(crate) netns: Option<Target>,
    /// A process running in the container's network namespace.
    #[arg(long, value_name = "PID", value_parser = Target::pid)]
    pub(crate) pid: Option<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct AttachArgs {
    /// Addresses for the container (198.18.0.5/15 or ip:198.18.0.5/15), then the Docker
    /// container, unless --netns or --pid names it.
    #[arg(value_name = "CIDR|CONTAINER")]
    pub(crate) args: Vec<String>,
    /// The container's name (for DNS).
    #[arg(long, value_parser = check_container_name)]
    pub(crate) name: Option<String>,
    /// Do not register the container in DNS.
    #[arg(long)]
    pub(crate) without_dns: bool,
    /// Do not route multicast (224.0.0.0/4) out of ethwe.
    #[arg(long)]
    pub(crate) no_multicast_route: bool,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct DetachArgs {
    /// Addresses to take away (all, and the interface, if none), then the Docker
    /// container, unless --netns or --pid names it.
    #[arg(value_name = "CIDR|CONTAINER")]
    pub(crate) args: Vec<String>,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// Whether a positional argument is meant as an address rather than a container name
/// (Docker names have no '/', ':' or bare dotted quads).
fn looks_like_address(arg: &str) -> bool {
    arg.starts_with("ip:")
        || arg.starts_with("net:")
        || arg.contains('/')
        || arg.parse::<std::net::IpAddr>().is_ok()
}

/// Splits the positional arguments into addresses and the target.
pub(crate) fn split(
    args: &[String],
    target: &TargetArgs,
) -> Result<(Vec<Ipv4Net>, Target), String> {
    const HOW: &str = "name a Docker container last, or use --netns NAME or --pid PID";
    let (addr_args, target) = match target.netns.clone().or_else(|| target.pid.clone()) {
        Some(target) => {
            if let Some(stray) = args.iter().find(|a| !looks_like_address(a)) {
                return Err(format!(
                    "unexpected argument {stray:?}: the container is already given ({target})"
                ));
            }
            (args, target)
        }
        None => match args.split_last() {
            None => return Err(format!("no container given: {HOW}")),
            Some((last, _)) if looks_like_address(last) => {
                return Err(format!("no container given after {last}: {HOW}"));
            }
            Some((last, rest)) => (rest, Target::container(last)?),
        },
    };
    let addrs = addr_args
        .iter()
        .map(|a| parse_cidr(a))
        .collect::<Result<_, _>>()?;
    Ok((addrs, target))
}

/// The form fields naming `target`.
fn target_field(target: &Target) -> (&'static str, String) {
    match target {
        Target::Netns(ns) => ("netns", ns.clone()),
        Target::Pid(pid) => ("pid", pid.to_string()),
        Target::Container(c) => ("container", c.clone()),
    }
}

fn addr_fields(addrs: &[Ipv4Net]) -> Vec<(&'static str, String)> {
    addrs.iter().map(|a| ("addr", a.to_string())).collect()
}

/// The form `weave attach` posts.
pub(crate) fn attach_form(args: &AttachArgs) -> Result<Vec<(&'static str, String)>, String> {
    let (addrs, target) = split(&args.args, &args.target)?;
    let mut form = addr_fields(&addrs);
    form.push(target_field(&target));
    if let Some(name) = &args.name {
        form.push(("name", name.clone()));
    }
    if args.without_dns {
        form.push(("without-dns", "true".to_owned()));
    }
    if args.no_multicast_route {
        form.push(("no-multicast-route", "true".to_owned()));
    }
    Ok(form)
}

/// The form `weave detach` posts.
pub(crate) fn detach_form(args: &DetachArgs) -> Result<Vec<(&'static str, String)>, String> {
    let (addrs, target) = split(&args.args, &args.target)?;
    let mut form = addr_fields(&addrs);
    form.push(target_field(&target));
    Ok(form)
}

/// POSTs `form` to `path` and prints the answer (the addresses, for attach).
pub(super) fn post(api: &ApiArgs, path: &str, form: &[(&str, String)]) -> anyhow::Result<()> {
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = client_runtime()?
        .block_on(async { check_answer(api.client().post_form(path, &pairs).await?) })?;
    print!("{body}");
    Ok(())
}

pub(super) fn run_attach(args: AttachArgs) -> anyhow::Result<()> {
    let form = attach_form(&args).unwrap_or_else(|why| usage_exit("attach", &why));
    post(&args.api, "/attach", &form)
}

pub(super) fn run_detach(args: DetachArgs) -> anyhow::Result<()> {
    let form = detach_form(&args).unwrap_or_else(|why| usage_exit("detach", &why));
    post(&args.api, "/detach", &form)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn attach(args: &[&str]) -> Result<Vec<(&'static str, String)>, String> {
        let argv = ["weave", "attach"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Attach(a) => attach_form(&a),
            other => panic!("expected attach, got {other:?}"),
        }
    }

    fn detach(args: &[&str]) -> Result<Vec<(&'static str, String)>, String> {
        let argv = ["weave", "detach"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Detach(a) => detach_form(&a),
            other => panic!("expected detach, got {other:?}"),
        }
    }

    fn form(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn attach_targets_and_addresses() {
        assert_eq!(
            attach(&["198.18.0.1/15", "--netns", "web"]),
            Ok(form(&[("addr", "198.18.0.1/15"), ("netns", "web")]))
        );
        assert_eq!(
            attach(&["--pid", "42", "ip:198.18.0.1/15", "198.19.0.1/16"]),
            Ok(form(&[
                ("addr", "198.18.0.1/15"),
                ("addr", "198.19.0.1/16"),
                ("pid", "42")
            ]))
        );
        assert_eq!(
            attach(&[
                "198.18.0.1/15",
                "--name",
                "db",
                "--without-dns",
                "--no-multicast-route",
                "b07565b06c53"
            ]),
            Ok(form(&[
                ("addr", "198.18.0.1/15"),
                ("container", "b07565b06c53"),
                ("name", "db"),
                ("without-dns", "true"),
                ("no-multicast-route", "true"),
            ]))
        );
        // No address: the daemon asks IPAM for one.
        assert_eq!(
            attach(&["--netns", "/run/netns/web"]),
            Ok(form(&[("netns", "/run/netns/web")]))
        );
    }

    #[test]
    fn attach_usage_errors() {
        for (args, why) in [
            (&[][..], "no container given"),
            (&["198.18.0.1/15"], "no container given after 198.18.0.1/15"),
            (
                &["198.18.0.1/15", "--netns", "web", "db"],
                "unexpected argument \"db\"",
            ),
            (&["198.18.0.1", "web"], "198.18.0.1: no prefix length"),
            (
                &["198.18.0.0/15", "web"],
                "198.18.0.0/15: 198.18.0.0 is the network address",
            ),
            (
                &["127.0.0.2/8", "web"],
                "127.0.0.2/8: 127.0.0.2 is a loopback address",
            ),
            (
                &["net:198.18.0.0/16", "web"],
                "net:198.18.0.0/16: allocating from a subnet needs IPAM",
            ),
            (&["fd00::1/64", "web"], "fd00::1/64: IPv6 is not supported"),
            (
                &["198.18.0.1/15", "web!"],
                "\"web!\" is not a Docker container ID or name",
            ),
        ] {
            let err = attach(args).expect_err("a usage error");
            assert!(err.starts_with(why), "{args:?}: {err}");
        }
        // These clap refuses itself (exit code 2 either way).
        for args in [
            &["--netns", "a", "--pid", "3"][..],
            &["--pid", "0"],
            &["--pid", "x"],
            &["--netns", ""],
            &["--name", "two words", "--netns", "a"],
        ] {
            let err = attach(args).expect_err("a usage error");
            assert!(err.starts_with("error:"), "{args:?}: {err}");
        }
    }

    #[test]
    fn detach_forms() {
        assert_eq!(detach(&["web"]), Ok(form(&[("container", "web")])));
        assert_eq!(
            detach(&["198.18.0.1/15", "--pid", "7"]),
            Ok(form(&[("addr", "198.18.0.1/15"), ("pid", "7")]))
        );
        assert!(detach(&[]).is_err());
        assert!(detach(&["--name", "x", "web"]).is_err());
    }
}
