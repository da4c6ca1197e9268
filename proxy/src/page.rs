//! The maintenance page template: parsed once at start, rendered once per gate change; and the
//! built-in page of the proxy's own error answers (502, 504), rendered through the same template
//! code once per process.
//!
//! Placeholders are `{{title}}`, `{{reason}}`, `{{message}}`, `{{until}}` and `{{until_rfc3339}}`;
//! values are HTML-escaped. An unknown placeholder is a config error, not a blank on the page.

use std::fmt::Write;

const BUILTIN: &str = include_str!("../../static/maintenance.html");

/// The page of an error the proxy answers itself. Not the maintenance template: that one says
/// "planned maintenance", and an upstream that fails is not planned.
const ERROR_PAGE: &str = "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<meta name=\"robots\" content=\"noindex\">
<meta name=\"color-scheme\" content=\"light dark\">
<title>{{title}}</title>
<style>
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:1.5rem;box-sizing:border-box;font:1rem/1.55 system-ui,-apple-system,\"Segoe UI\",Roboto,Arial,sans-serif}
main{max-width:34rem}
h1{font-size:1.6rem;line-height:1.25;margin:0 0 1rem}
</style>
</head>
<body>
<main role=\"main\">
<h1>{{title}}</h1>
<p>{{message}}</p>
<p><a href=\"\">Try again</a> in a moment.</p>
</main>
</body>
</html>
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Title,
    Reason,
    Message,
    Until,
    UntilRfc3339,
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        match name {
            "title" => Some(Field::Title),
            "reason" => Some(Field::Reason),
            "message" => Some(Field::Message),
            "until" => Some(Field::Until),
            "until_rfc3339" => Some(Field::UntilRfc3339),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A parsed page template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageTemplate {
    pieces: Vec<Piece>,
}

/// The values a page is rendered with (not yet escaped).
#[derive(Debug, Default)]
pub struct PageFields<'a> {
    pub title: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
    /// A full sentence such as "Expected back by 2026-11-25 21:00 UTC.", or empty.
    pub until: &'a str,
    pub until_rfc3339: &'a str,
}

impl PageTemplate {
    /// The page shipped in `static/maintenance.html`.
    pub fn builtin() -> PageTemplate {
        PageTemplate::parse(BUILTIN).expect("the built-in page uses only known placeholders")
    }

    /// The page of an error the proxy answers itself, with `title` and `message` (escaped).
    pub fn error_page(title: &str, message: &str) -> String {
        PageTemplate::parse(ERROR_PAGE)
            .expect("the error page uses only known placeholders")
            .render(&PageFields {
                title,
                message,
                ..PageFields::default()
            })
    }

    /// Parses a template.
    ///
    /// # Errors
    /// An unknown or unclosed placeholder, named in the message.
    pub fn parse(text: &str) -> Result<PageTemplate, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "a `{{` placeholder is not closed with `}}`".to_string())?;
            let name = after[..end].trim();
            let field = Field::from_name(name).ok_or_else(|| {
                format!("unknown placeholder {{{{{name}}}}}: use title, reason, message, until or until_rfc3339")
            })?;
            pieces.push(Piece::Field(field));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(PageTemplate { pieces })
    }

    /// The page with every placeholder replaced by its escaped value.
    pub fn render(&self, fields: &PageFields<'_>) -> String {
        let mut out = String::with_capacity(4096);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => {
                    let value = match field {
                        Field::Title => fields.title,
                        Field::Reason => fields.reason,
                        Field::Message => fields.message,
                        Field::Until => fields.until,
                        Field::UntilRfc3339 => fields.until_rfc3339,
                    };
                    escape_html_into(&mut out, value);
                }
            }
        }
        out
    }
}

/// Appends `value` to `out` with HTML's special characters escaped.
pub(crate) fn escape_html_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {
                let _ = write!(out, "&#{};", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let t = PageTemplate::parse("<h1>{{reason}}</h1><p>{{ message }}</p>").unwrap();
        let html = t.render(&PageFields {
            reason: "<script>alert(1)</script>",
            message: "Tom & \"Jerry\"",
            ..PageFields::default()
        });
        assert_eq!(
            html,
            "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1><p>Tom &amp; &quot;Jerry&quot;</p>"
        );
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_refused() {
        assert!(PageTemplate::parse("{{reasn}}")
            .unwrap_err()
            .contains("reasn"));
        assert!(PageTemplate::parse("{{reason").is_err());
    }

    #[test]
    fn error_page_shows_its_title_and_message_escaped() {
        let html = PageTemplate::error_page("Bad Gateway", "a <b> & c");
        assert!(html.contains("<title>Bad Gateway</title>"), "{html}");
        assert!(html.contains("<p>a &lt;b&gt; &amp; c</p>"), "{html}");
        assert!(!html.contains("{{"), "{html}");
        assert!(!html.to_lowercase().contains("maintenance"), "{html}");
    }

    #[test]
    fn builtin_page_shows_every_field() {
        let html = PageTemplate::builtin().render(&PageFields {
            title: "T-title",
            reason: "R-reason",
            message: "M-message",
            until: "U-until",
            until_rfc3339: "2026-11-25T21:00:00Z",
        });
        for part in ["R-reason", "M-message", "U-until"] {
            assert!(html.contains(part), "{part} missing from the built-in page");
        }
    }
}
