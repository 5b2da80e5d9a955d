//! The subset of Go templates `weave report -f` supports: enough for the one-liners
//! people wrote against Weave (`{{.Router.Name}}`, `{{json .Router.Peers}}`), not loops.
//!
//! A template is text with `{{ACTION}}` placeholders. An action is a path, `json PATH`
//! or `len PATH`. A path is `.` (the whole report) or `.Field.Field...` with the JSON
//! report's field names (`.Router.Connections`); a number selects a list element
//! (`.Router.Peers.0.Name`). A path's value prints as text when it is a string, number
//! or boolean, and as compact JSON when it is a list or object (Go would print its own
//! `map[...]` syntax; JSON is more useful). Anything else (`range`, `if`, pipes) is an
//! error naming the action, never a silent blank.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("template: unclosed action starting at byte {0}")]
    Unclosed(usize),
    #[error(
        "template: unsupported action {{{{{0}}}}}: only paths like .Router.Name, json PATH and len PATH"
    )]
    Unsupported(String),
    #[error("template: {path}: no field {field:?}")]
    NoField { path: String, field: String },
    #[error("template: len of {0}, which is not a list, object or string")]
    NoLen(String),
}

/// Expands `template` against `report`.
pub(crate) fn render(template: &str, report: &Value) -> Result<String, TemplateError> {
    let mut out = String::new();
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + start))?;
        let action = after[..end].trim();
        out.push_str(&action_text(action, report)?);
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn action_text(action: &str, report: &Value) -> Result<String, TemplateError> {
    let words: Vec<&str> = action.split_whitespace().collect();
    match words.as_slice() {
        [path] if path.starts_with('.') => Ok(plain(lookup(report, path)?)),
        ["json", path] if path.starts_with('.') => Ok(lookup(report, path)?.to_string()),
        ["len", path] if path.starts_with('.') => match lookup(report, path)? {
            Value::Array(items) => Ok(items.len().to_string()),
            Value::Object(fields) => Ok(fields.len().to_string()),
            Value::String(s) => Ok(s.len().to_string()),
            _ => Err(TemplateError::NoLen((*path).to_owned())),
        },
        _ => Err(TemplateError::Unsupported(action.to_owned())),
    }
}

fn lookup<'a>(report: &'a Value, path: &str) -> Result<&'a Value, TemplateError> {
    let mut value = report;
    if path == "." {
        return Ok(value);
    }
    let mut walked = String::new();
    for field in path.trim_start_matches('.').split('.') {
        let next = match value {
            Value::Object(fields) => fields.get(field),
            Value::Array(items) => field.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        value = next.ok_or_else(|| TemplateError::NoField {
            path: if walked.is_empty() {
                ".".to_owned()
            } else {
                walked.clone()
            },
            field: field.to_owned(),
        })?;
        walked.push('.');
        walked.push_str(field);
    }
    Ok(value)
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "<no value>".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{PeerReport, Report, RouterReport};

    fn report() -> Value {
        let report = Report {
            ipam: None,
            dns: None,
            version: "0.1.0".to_owned(),
            router: RouterReport {
                name: "02:00:00:00:00:01".to_owned(),
                nick_name: "host1".to_owned(),
                port: 6783,
                encryption: true,
                targets: vec!["192.0.2.2".to_owned()],
                peers: vec![PeerReport {
                    name: "02:00:00:00:00:01".to_owned(),
                    nick_name: "host1".to_owned(),
                    ..PeerReport::default()
                }],
                ..RouterReport::default()
            },
        };
        serde_json::to_value(report).expect("a report serialises")
    }

    #[test]
    fn paths_json_and_len() {
        let r = report();
        assert_eq!(
            render("{{.Router.Name}}", &r).expect("ok"),
            "02:00:00:00:00:01"
        );
        assert_eq!(
            render(
                "name={{ .Router.NickName }} port={{.Router.Port}} enc={{.Router.Encryption}}",
                &r
            )
            .expect("ok"),
            "name=host1 port=6783 enc=true"
        );
        assert_eq!(
            render("{{json .Router.Targets}}", &r).expect("ok"),
            r#"["192.0.2.2"]"#
        );
        assert_eq!(
            render("{{.Router.Targets}}", &r).expect("ok"),
            r#"["192.0.2.2"]"#
        );
        assert_eq!(
            render("{{len .Router.Peers}} {{len .Router.Connections}}", &r).expect("ok"),
            "1 0"
        );
        assert_eq!(
            render("{{.Router.Peers.0.NickName}}", &r).expect("ok"),
            "host1"
        );
        assert_eq!(render("no actions", &r).expect("ok"), "no actions");
        let whole: Value =
            serde_json::from_str(&render("{{json .}}", &r).expect("ok")).expect("json");
        assert_eq!(whole, r);
    }

    #[test]
    fn errors_name_the_problem() {
        let r = report();
        assert_eq!(
            render("{{.Router.Nmae}}", &r),
            Err(TemplateError::NoField {
                path: ".Router".to_owned(),
                field: "Nmae".to_owned()
            })
        );
        assert_eq!(
            render("{{.Router.Peers.7}}", &r),
            Err(TemplateError::NoField {
                path: ".Router.Peers".to_owned(),
                field: "7".to_owned()
            })
        );
        assert_eq!(render("ab {{.Version", &r), Err(TemplateError::Unclosed(3)));
        assert_eq!(
            render("{{range .Router.Peers}}x{{end}}", &r),
            Err(TemplateError::Unsupported("range .Router.Peers".to_owned()))
        );
        assert_eq!(
            render("{{len .Router.Port}}", &r),
            Err(TemplateError::NoLen(".Router.Port".to_owned()))
        );
        assert!(render("{{}}", &r).is_err());
        let msg = render("{{if .X}}", &r)
            .expect_err("unsupported")
            .to_string();
        assert_eq!(
            msg,
            "template: unsupported action {{if .X}}: only paths like .Router.Name, json PATH and len PATH"
        );
    }
}
