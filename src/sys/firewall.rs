//! Firewall rules that let the bridge's traffic through a FORWARD chain whose policy is
//! DROP (Docker sets that) and past br_netfilter, which sends bridged frames through
//! iptables too.
//!
//! Why `iptables` and not an nftables table of our own: in nftables every base chain on
//! a hook must accept a packet, so an `accept` in our table cannot overrule the DROP
//! policy of the FORWARD chain in the `filter` table that Docker (through iptables-nft
//! or iptables-legacy) owns. Only a rule inside that very chain can, and the `iptables`
//! command is what reaches it under both backends. No maintained crate does more than
//! run that same command, so we run it: `-w` for the xtables lock, `-C` before every
//! change, so install and remove are idempotent.

use std::process::Command;

use super::error::SysError;
use super::netns::Netns;

/// Our chain in the filter table; FORWARD jumps to it first.
pub(crate) const FORWARD_CHAIN: &str = "WEAVE-FORWARD";

const IPTABLES: &str = "iptables";

/// The rules for one bridge: `install` adds what is missing, `remove` takes all away.
#[derive(Clone, Debug)]
pub(crate) struct ForwardRules {
    bridge: String,
    chain: String,
    netns: Option<Netns>,
}

impl ForwardRules {
    /// Rules for `bridge` in the host's namespace, in chain [`FORWARD_CHAIN`].
    pub(crate) fn new(bridge: &str) -> Self {
        Self {
            bridge: bridge.to_owned(),
            chain: FORWARD_CHAIN.to_owned(),
            netns: None,
        }
    }

    /// Uses another chain name (up to 28 bytes).
    pub(crate) fn with_chain(mut self, chain: &str) -> Self {
        chain.clone_into(&mut self.chain);
        self
    }

    /// Applies the rules inside `ns` rather than the caller's namespace.
    pub(crate) fn in_netns(mut self, ns: Netns) -> Self {
        self.netns = Some(ns);
        self
    }

    /// The rule bodies in our chain: traffic between bridge ports (br_netfilter), from
    /// the bridge out, and replies coming back to it, as Weave Net allowed.
    fn rules(&self) -> [Vec<&str>; 3] {
        let br = self.bridge.as_str();
        [
            vec!["-i", br, "-o", br, "-j", "ACCEPT"],
            vec!["-i", br, "!", "-o", br, "-j", "ACCEPT"],
            vec![
                "-o",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        ]
    }

    /// Adds whatever is missing of the chain, its rules and the jump from FORWARD.
    pub(crate) async fn install(&self) -> Result<(), SysError> {
        let this = self.clone();
        self.exec(move || this.install_now()).await
    }

    /// Removes the jump, the rules and the chain; nothing happens for what is absent.
    pub(crate) async fn remove(&self) -> Result<(), SysError> {
        let this = self.clone();
        self.exec(move || this.remove_now()).await
    }

    /// Whether the chain, every rule and the jump are all in place.
    pub(crate) async fn is_installed(&self) -> Result<bool, SysError> {
        let this = self.clone();
        self.exec(move || this.installed_now()).await
    }

    async fn exec<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, SysError> + Send + 'static,
    ) -> Result<T, SysError> {
        match &self.netns {
            // A child inherits the namespace of the thread that forks it.
            Some(ns) => ns.run(work).await?,
            None => tokio::task::spawn_blocking(work)
                .await
                .map_err(|_| SysError::ThreadPanicked("firewall worker".into()))?,
        }
    }

    fn install_now(&self) -> Result<(), SysError> {
        if !iptables_ok(&["-S", &self.chain])? {
            iptables(&["-N", &self.chain])?;
        }
        for rule in self.rules() {
            let mut check = vec!["-C", self.chain.as_str()];
            check.extend(&rule);
            if !iptables_ok(&check)? {
                let mut add = vec!["-A", self.chain.as_str()];
                add.extend(&rule);
                iptables(&add)?;
            }
        }
        // First in FORWARD, so it runs before Docker's chains and the DROP policy.
        if !iptables_ok(&["-C", "FORWARD", "-j", &self.chain])? {
            iptables(&["-I", "FORWARD", "1", "-j", &self.chain])?;
        }
        Ok(())
    }

    fn remove_now(&self) -> Result<(), SysError> {
        // Without the chain there can be no jump to it (and `-C` would fail, not say no).
        if !iptables_ok(&["-S", &self.chain])? {
            return Ok(());
        }
        while iptables_ok(&["-C", "FORWARD", "-j", &self.chain])? {
            iptables(&["-D", "FORWARD", "-j", &self.chain])?;
        }
        iptables(&["-F", &self.chain])?;
        iptables(&["-X", &self.chain])
    }

    fn installed_now(&self) -> Result<bool, SysError> {
        if !iptables_ok(&["-S", &self.chain])? {
            return Ok(false);
        }
        for rule in self.rules() {
            let mut check = vec!["-C", self.chain.as_str()];
            check.extend(&rule);
            if !iptables_ok(&check)? {
                return Ok(false);
            }
        }
        iptables_ok(&["-C", "FORWARD", "-j", &self.chain])
    }
}

fn run(args: &[&str]) -> Result<std::process::Output, SysError> {
    Command::new(IPTABLES)
        .args(["-w", "10", "-t", "filter"])
        .args(args)
        .output()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SysError::FirewallToolMissing { tool: IPTABLES }
            } else {
                SysError::Io {
                    context: format!("running {IPTABLES}"),
                    source,
                }
            }
        })
}

/// Runs a check (`-C`, `-S`): exit 0 is yes, 1 is no, anything else is a failure.
fn iptables_ok(args: &[&str]) -> Result<bool, SysError> {
    let out = run(args)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failure(args, &out)),
    }
}

/// Runs a change; any non-zero exit is a failure.
fn iptables(args: &[&str]) -> Result<(), SysError> {
    let out = run(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failure(args, &out))
    }
}

fn failure(args: &[&str], out: &std::process::Output) -> SysError {
    SysError::Firewall {
        command: format!("{IPTABLES} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}
