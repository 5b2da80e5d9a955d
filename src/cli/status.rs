//! `weave status [targets|connections|peers]`: the daemon renders the text (the same
//! views are on the status port for curl); we print it as is.

use std::io::Write;

use super::{StatusArgs, check_answer};

pub(super) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let path = args.view.map_or("/status", |view| view.path());
    let text = check_answer(args.api.client().get(path).await?)?;
    // Weave prints a blank line before the status block; the views come bare.
    let mut out = std::io::stdout().lock();
    if args.view.is_none() {
        writeln!(out)?;
    }
    out.write_all(text.as_bytes())?;
    Ok(())
}
