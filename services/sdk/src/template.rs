//! Baetyl v1's templating of config files: before parsing, v1 ran every config file through Go's
//! `text/template` with the process's environment as the data, with `missingkey=error`, and when that failed
//! for any reason it used the file exactly as written. So `address: {{.HUB_ADDRESS}}` takes the variable's
//! value, while a file with other template text (the timer's `{{.Time.Now}}` payloads, which v1's timer
//! expands itself at each tick) stays untouched.
//!
//! We evaluate the part of the template language v1's configs use: `{{.NAME}}` (with optional spaces and
//! the `{{-`/`-}}` trim markers) and `{{/* comments */}}`. Any other action makes the whole file stay as
//! written, as an unknown variable does: the same result v1 gave for every file we know of.

use std::collections::HashMap;

/// Why a file was left as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{.NAME}}` names a variable that is not set (v1: `missingkey=error`).
    #[error("`{{{{.{0}}}}}`: environment variable {0} is not set")]
    Missing(String),
    /// An action other than `.NAME` or a comment (a Go template feature, or another program's template).
    #[error("`{{{{{0}}}}}` is not an environment variable reference")]
    Unsupported(String),
    #[error("a `{{{{` is not closed by `}}}}`")]
    Unclosed,
}

/// Expands `{{.NAME}}` references in `text` from `vars`, all or nothing.
pub fn render(text: &str, vars: &HashMap<String, String>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let after_open = &rest[open + 2..];
        let close = after_open.find("}}").ok_or(TemplateError::Unclosed)?;
        let mut action = &after_open[..close];
        // Go's trim markers are `{{- ` and ` -}}`: the dash must be followed (or preceded) by a space.
        if let Some(a) = action.strip_prefix("- ") {
            before = before.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix(" -") {
            trim_next = true;
            action = a;
        }
        out.push_str(before);
        let action = action.trim();
        if action.starts_with("/*") && action.ends_with("*/") {
            // A comment: expands to nothing.
        } else if let Some(name) = action.strip_prefix('.').filter(|n| is_identifier(n)) {
            let value = vars
                .get(name)
                .ok_or_else(|| TemplateError::Missing(name.to_string()))?;
            out.push_str(value);
        } else {
            return Err(TemplateError::Unsupported(action.to_string()));
        }
        rest = &after_open[close + 2..];
    }
    out.push_str(if trim_next { rest.trim_start() } else { rest });
    Ok(out)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The text of a config file as v1 read it: templated from the process's environment when that succeeds,
/// otherwise as written. A reference to an unset variable is logged (it is most likely a mistake); other
/// template text is left for the program that owns it, quietly.
pub fn expand_env(text: &str, file: &std::path::Path) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let vars: HashMap<String, String> = std::env::vars().collect();
    match render(text, &vars) {
        Ok(t) => t,
        Err(e @ TemplateError::Missing(_)) => {
            tracing::warn!(
                file = %file.display(),
                "{e}; the file is used as written, without substituting any variable (as Baetyl v1 did)"
            );
            text.to_string()
        }
        Err(e) => {
            tracing::debug!(file = %file.display(), "not templated: {e}");
            text.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// v1's own case (`TestParseEnv`, utils/config_test.go at 1.0.2).
    #[test]
    fn substitutes_set_variables_like_v1() {
        let text = "id: id\nenv: {{.BAETYL_HOST_ID}}\nmodules:\n  - name: m1\n";
        let v = vars(&[("BAETYL_HOST_ID", "test_host_id")]);
        assert_eq!(
            render(text, &v).unwrap(),
            text.replace("{{.BAETYL_HOST_ID}}", "test_host_id")
        );
        assert_eq!(
            render("a: {{ .X }}{{.Y}}\n", &vars(&[("X", "1"), ("Y", "2")])).unwrap(),
            "a: 12\n"
        );
    }

    #[test]
    fn unset_variable_is_an_error_and_the_file_stays_as_written() {
        let text = "env: {{.BAETYL_NOT_EXIST}}\n";
        assert_eq!(
            render(text, &vars(&[])),
            Err(TemplateError::Missing("BAETYL_NOT_EXIST".into()))
        );
        assert_eq!(
            expand_env(text, std::path::Path::new("f.yml")),
            text,
            "all or nothing"
        );
    }

    #[test]
    fn other_template_text_is_left_for_its_owner() {
        // v1's timer example: its payload is a template the timer expands itself.
        let timer = r#"payload: "{\"time\": {{.Time.NowUnix}}, \"id\": {{.Rand.Intn 10}}}""#;
        assert!(matches!(
            render(timer, &vars(&[("Time", "x")])),
            Err(TemplateError::Unsupported(_))
        ));
        assert_eq!(expand_env(timer, std::path::Path::new("t.yml")), timer);
        assert_eq!(
            render("a: {{.X", &vars(&[("X", "1")])),
            Err(TemplateError::Unclosed)
        );
    }

    #[test]
    fn trim_markers_and_comments() {
        let v = vars(&[("A", "x")]);
        assert_eq!(render("k:  {{- .A -}}  \n", &v).unwrap(), "k:x");
        assert_eq!(render("k: {{/* note */}}v", &v).unwrap(), "k: v");
        assert_eq!(render("no templates", &v).unwrap(), "no templates");
    }
}
