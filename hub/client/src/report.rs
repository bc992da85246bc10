//! One line for an error and its causes, as command-line tools print it:
//! each cause once, and none whose words the line already says
//! (`cannot reach hub at h:1: Connection refused`, not `...: Connection
//! refused: Connection refused`).

use std::error::Error;

/// The error and each cause not already part of the text, joined by `: `.
pub fn error_line(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(String, Option<Box<dyn Error + 'static>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn causes_already_said_are_left_out() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = refused.to_string();
        let outer = Wrap(
            format!("cannot reach hub at h:1: {text}"),
            Some(Box::new(refused)),
        );
        assert_eq!(
            error_line(&outer),
            format!("cannot reach hub at h:1: {text}")
        );
        let chained = Wrap(
            "reading hub.toml".into(),
            Some(Box::new(Wrap("bad port".into(), None))),
        );
        assert_eq!(error_line(&chained), "reading hub.toml: bad port");
    }
}
