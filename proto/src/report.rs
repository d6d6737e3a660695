//! How an error is printed for a person: its message, then each cause the message does not
//! already say.
//!
//! Most of our errors include their cause in their own message (`cannot read {path}: {source}`),
//! so that a log line or an API answer made with `{e}` is complete. The same errors also expose
//! that cause as `source()`, and printing the whole chain (anyhow's `{:#}`) then said it twice:
//! `cannot read /x: No such file or directory (os error 2): No such file or directory (os error
//! 2)`. [`Report`] walks the chain and leaves out a cause whose text is already in what was said.

use std::error::Error;
use std::fmt;

/// An error and its causes, each said once (see the module's comment).
#[derive(Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !text.is_empty() && !said.contains(&text) {
                said.push_str(": ");
                said.push_str(&text);
            }
            cause = c.source();
        }
        f.write_str(&said)
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[derive(Debug, thiserror::Error)]
    enum Layer {
        #[error("layer entry {entry:?}: the path {path:?} would leave the layer")]
        Escapes { entry: String, path: String },
    }

    /// Includes its cause in its message and exposes it: the usual shape.
    #[derive(Debug, thiserror::Error)]
    enum Store {
        #[error("cannot read {path}: {source}")]
        Read { path: String, source: std::io::Error },
        #[error("{0}")]
        Layer(#[from] Layer),
    }

    /// Exposes its cause without saying it.
    #[derive(Debug, thiserror::Error)]
    #[error("pulling {image}")]
    struct Pull {
        image: String,
        source: Store,
    }

    fn enoent() -> std::io::Error {
        std::io::Error::from_raw_os_error(2)
    }

    #[test]
    fn a_cause_in_the_message_is_not_said_again() {
        let e = Store::Read { path: "/nonexistent".into(), source: enoent() };
        assert_eq!(Report(&e).to_string(), "cannot read /nonexistent: No such file or directory (os error 2)");
    }

    #[test]
    fn a_wrapper_that_repeats_its_cause_says_it_once() {
        let e = Store::from(Layer::Escapes { entry: "x".into(), path: "../../etc/passwd".into() });
        assert_eq!(Report(&e).to_string(), "layer entry \"x\": the path \"../../etc/passwd\" would leave the layer");
    }

    #[test]
    fn a_cause_left_out_of_the_message_is_added() {
        let e = Pull { image: "busybox:1".into(), source: Store::Read { path: "/blobs/x".into(), source: enoent() } };
        assert_eq!(
            Report(&e).to_string(),
            "pulling busybox:1: cannot read /blobs/x: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn anyhow_context_chains_print_each_part_once() {
        let inner = Store::Read { path: "/etc/bramble/agent.toml".into(), source: enoent() };
        let e = anyhow::Error::new(inner).context("loading the config");
        assert_eq!(
            Report(e.as_ref()).to_string(),
            "loading the config: cannot read /etc/bramble/agent.toml: No such file or directory (os error 2)"
        );
        // What anyhow's own chain printing says, for contrast.
        assert!(format!("{e:#}").matches("No such file").count() == 2);
    }
}
