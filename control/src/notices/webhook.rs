//! Notices by webhook: a POST of JSON, either the default body ([`Notice::json`]) or the
//! recipient's template, JSON in which each `{{field}}` inside a string is replaced by the
//! notice's field (escaped for JSON): `env`, `event`, `window_id`, `start`, `end`, `reason`,
//! `message`, `subject`, `text`. Ready templates for chat and status-page APIs are in
//! `config/notices/`. The recipient's `authorization` is sent as the `Authorization` header.
//! Any 2xx answer is a delivery.

use super::Notice;

/// The fields a template may name.
const FIELDS: [&str; 9] = [
    "env",
    "event",
    "window_id",
    "start",
    "end",
    "reason",
    "message",
    "subject",
    "text",
];

/// Fills `template` with `fields`: each `{{name}}` becomes the field's value escaped as the
/// inside of a JSON string.
///
/// # Errors
/// A `{{…}}` that names no field.
fn fill(template: &str, fields: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "a `{{` is never closed".to_string())?;
        let name = after[..close].trim();
        let value = fields
            .iter()
            .find(|(field, _)| *field == name)
            .map(|(_, value)| value)
            .ok_or_else(|| format!("{{{{{name}}}}} is not one of {}", FIELDS.join(", ")))?;
        let quoted = serde_json::to_string(value).expect("a string always serialises");
        out.push_str(&quoted[1..quoted.len() - 1]);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template when the inventory is read: every placeholder names a field, and filled
/// with sample values (quotes, backslashes and line breaks included) it is JSON.
///
/// # Errors
/// What is wrong, to be shown with the template's path.
pub fn check_template(template: &str) -> Result<(), String> {
    let sample: Vec<(&str, String)> = FIELDS
        .iter()
        .map(|f| (*f, format!("a \"{f}\" \\ sample\nline")))
        .collect();
    let filled = fill(template, &sample)?;
    serde_json::from_str::<serde_json::Value>(&filled)
        .map(drop)
        .map_err(|e| {
            format!("filled in, it is not JSON ({e}): put each {{{{field}}}} inside a string")
        })
}

/// POSTs `notice` to `url`.
///
/// # Errors
/// No answer, or an answer other than 2xx (with the start of its body).
pub async fn post(
    url: &str,
    template: Option<&str>,
    authorization: Option<&str>,
    notice: &Notice<'_>,
) -> Result<(), String> {
    let client = crate::commands::http_client()?;
    let body = match template {
        Some(template) => fill(template, &notice.fields())?,
        None => notice.json().to_string(),
    };
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(value) = authorization {
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| format!("POST to {}: {}", origin(url), e.without_url()))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let text = answer.text().await.unwrap_or_default();
    let start: String = text.chars().take(200).collect();
    Err(format!(
        "POST to {}: {status}: {}",
        origin(url),
        start.trim()
    ))
}

/// The scheme and host of `url`: what an error may show of a webhook, whose path or query is
/// often its secret (a chat's incoming-webhook URL).
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or("?"))
                + &parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
        }
        Err(_) => "a webhook URL that cannot be read".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_filled_with_json_escaped_fields() {
        let fields = vec![
            ("subject", "db \"upgrade\"".to_string()),
            ("text", "line 1\nline 2 \\".to_string()),
        ];
        let filled = fill(r#"{"text": "{{subject}}: {{ text }}"}"#, &fields).unwrap();
        let value: serde_json::Value = serde_json::from_str(&filled).unwrap();
        assert_eq!(value["text"], "db \"upgrade\": line 1\nline 2 \\");
        assert!(fill("{{nope}}", &fields)
            .unwrap_err()
            .contains("{{nope}} is not one of"));
        assert!(fill("{{subject", &fields).is_err());
    }

    #[test]
    fn errors_show_a_webhook_by_its_origin_only() {
        assert_eq!(
            origin("https://hooks.slack.com/services/T000/B000/SECRET?token=x"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:8123/chat"),
            "http://127.0.0.1:8123"
        );
    }

    #[test]
    fn templates_are_checked_when_read() {
        assert!(check_template(r#"{"text": "{{subject}}"}"#).is_ok());
        assert!(check_template(r#"{"text": {{subject}}}"#)
            .unwrap_err()
            .contains("inside a string"));
        for shipped in ["slack.json", "statuspage.json"] {
            let path = format!("{}/../config/notices/{shipped}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            check_template(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
}
