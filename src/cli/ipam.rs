//! `weave prime` (GET /ring: wait until the IP allocation ring exists) and `weave rmpeer
//! PEER...` (DELETE /peer/PEER: take over a dead peer's ranges, printing Weave's `N IPs
//! taken over from PEER`).

use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::{ApiArgs, check_answer};
use crate::control::ipam::PRIME_TIMEOUT;

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct RmpeerArgs {
    /// Dead peers, by name (aa:bb:cc:dd:ee:ff) or nickname.
    #[arg(value_name = "PEER", required = true)]
    pub(crate) peers: Vec<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

pub(super) async fn run_prime(args: ApiArgs) -> anyhow::Result<()> {
    // The daemon gives up first and says why (awaiting consensus...).
    let client = args
        .client()
        .with_timeout(PRIME_TIMEOUT + Duration::from_secs(10));
    check_answer(client.get("/ring").await?)?;
    Ok(())
}

pub(super) async fn run_rmpeer(args: RmpeerArgs) -> anyhow::Result<()> {
    let client = args.api.client();
    let mut out = std::io::stdout().lock();
    for peer in &args.peers {
        let path = format!("/peer/{}", path_segment(peer));
        let text = check_answer(client.request("DELETE", &path, None).await?)?;
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Percent-escapes everything but unreserved characters and ':' (peer names), so a
/// nickname is one path segment whatever it holds.
fn path_segment(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").expect("writing to a String cannot fail");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::path_segment;
    use crate::cli::{Cli, Command, StatusView};

    #[test]
    fn commands_parse() {
        let parsed =
            Cli::try_parse_from(["weave", "rmpeer", "aa:bb:cc:dd:ee:ff", "host2"]).expect("valid");
        let Command::Rmpeer(args) = parsed.command else {
            panic!("expected rmpeer");
        };
        assert_eq!(args.peers, ["aa:bb:cc:dd:ee:ff", "host2"]);
        assert!(Cli::try_parse_from(["weave", "rmpeer"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["weave", "prime"])
                .expect("valid")
                .command,
            Command::Prime(_)
        ));
        let status = Cli::try_parse_from(["weave", "status", "ipam"]).expect("valid");
        assert!(matches!(status.command, Command::Status(a) if a.view == Some(StatusView::Ipam)));
    }

    #[test]
    fn peers_are_one_path_segment() {
        assert_eq!(path_segment("aa:bb:cc:dd:ee:ff"), "aa:bb:cc:dd:ee:ff");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
