//! `weave report [-f TEMPLATE]`: the daemon's state as pretty JSON, or the fields a
//! template asks for (see [`super::template`]).

use std::io::Write;

use anyhow::Context;

use super::{ReportArgs, check_answer, template};

pub(super) async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let json = check_answer(args.api.client().get("/report").await?)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        None => out.write_all(json.as_bytes())?,
        Some(format) => {
            let report: serde_json::Value =
                serde_json::from_str(&json).context("the daemon's report is not valid JSON")?;
            let mut text = template::render(&format, &report)?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}
