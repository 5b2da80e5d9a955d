//! `weave ps [TARGET...]`: GET /ps. One line per attached container, `<id> <mac>
//! <ip/len>...`, after `weave:expose` with the bridge's MAC and the host's addresses, as
//! Weave printed them; the daemon renders the lines.

use clap::Args;

use super::{ApiArgs, check_answer, client_runtime};

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct PsArgs {
    /// Only these: Docker container IDs or names, netns names, PIDs, `--name`s, or
    /// weave:expose.
    #[arg(value_name = "TARGET")]
    pub(crate) targets: Vec<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

pub(super) fn run(args: PsArgs) -> anyhow::Result<()> {
    let query: Vec<(&str, &str)> = args
        .targets
        .iter()
        .map(|t| ("target", t.as_str()))
        .collect();
    let body = client_runtime()?
        .block_on(async { check_answer(args.api.client().get_with("/ps", &query).await?) })?;
    print!("{body}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn ps_takes_any_targets() {
        let parsed = Cli::try_parse_from(["weave", "ps", "web", "weave:expose"]).expect("valid");
        let Command::Ps(args) = parsed.command else {
            panic!("expected ps");
        };
        assert_eq!(args.targets, ["web", "weave:expose"]);
    }
}
