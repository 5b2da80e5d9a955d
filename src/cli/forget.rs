//! `weave forget PEER...`: POST /forget. Connections that are up stay up; they are just
//! not retried by this peer when they drop.

use super::{ForgetArgs, check_answer};

pub(super) async fn run(args: ForgetArgs) -> anyhow::Result<()> {
    let form: Vec<(&str, &str)> = args.peers.iter().map(|p| ("peer", p.as_str())).collect();
    check_answer(args.api.client().post_form("/forget", &form).await?)?;
    Ok(())
}
