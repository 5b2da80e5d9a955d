//! `weave expose [CIDR...]` / `weave hide [CIDR...]`: POST /expose and /hide, putting the
//! host itself on the overlay (addresses on the `weave` bridge, identity `weave:expose`)
//! or taking it off. `expose` prints every address the host now has there.

use clap::Args;
use ipnet::Ipv4Net;

use super::ApiArgs;
use super::attach::post;
use crate::control::parse_cidr;

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ExposeArgs {
    /// Addresses for the host (198.18.0.100/15); `hide` without any hides all.
    #[arg(value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) addrs: Vec<Ipv4Net>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

fn form(addrs: &[Ipv4Net]) -> Vec<(&'static str, String)> {
    addrs.iter().map(|a| ("addr", a.to_string())).collect()
}

pub(super) fn run_expose(args: ExposeArgs) -> anyhow::Result<()> {
    post(&args.api, "/expose", &form(&args.addrs))
}

pub(super) fn run_hide(args: ExposeArgs) -> anyhow::Result<()> {
    post(&args.api, "/hide", &form(&args.addrs))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn expose_takes_checked_addresses() {
        let parsed = Cli::try_parse_from(["weave", "expose", "198.18.0.100/15"]).expect("valid");
        let Command::Expose(args) = parsed.command else {
            panic!("expected expose");
        };
        assert_eq!(args.addrs, ["198.18.0.100/15".parse().expect("literal")]);
        let hide_all = Cli::try_parse_from(["weave", "hide"]).expect("valid");
        assert!(matches!(hide_all.command, Command::Hide(a) if a.addrs.is_empty()));
        for bad in ["198.18.0.100", "224.0.0.1/4", "x"] {
            let err = Cli::try_parse_from(["weave", "expose", bad]).expect_err("invalid");
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }
}
