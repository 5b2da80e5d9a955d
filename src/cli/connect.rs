//! `weave connect [--replace] PEER...`: POST /connect.

use super::{ConnectArgs, check_answer};

pub(super) async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let mut form: Vec<(&str, &str)> = args.peers.iter().map(|p| ("peer", p.as_str())).collect();
    if args.replace {
        form.push(("replace", "true"));
    }
    check_answer(args.api.client().post_form("/connect", &form).await?)?;
    Ok(())
}
