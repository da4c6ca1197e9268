//! Text from outside (a request, an upstream, a value at the gate key) made safe for one log
//! line: a line break in it must not end the line and forge the next one.

use std::fmt::{self, Write as _};

/// Displays its text with control characters escaped (`\n`, `\u{1b}`).
pub struct OneLine<'a>(pub &'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_cannot_break_the_line() {
        assert_eq!(
            OneLine("a\nINFO forged\r\u{1b}[31m").to_string(),
            "a\\nINFO forged\\r\\u{1b}[31m"
        );
        assert_eq!(OneLine("/plain/päth").to_string(), "/plain/päth");
    }
}
