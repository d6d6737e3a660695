//! The CLI's client config (`admin.toml`, or `~/.config/bramble/config.toml`): where the leaders
//! are and the admin identity, with the PEMs inline so one file is all an operator copies.

use bramble_proto::source::{parse_toml, SourceError};
use serde::{Deserialize, Serialize};

pub const ADMIN_CONFIG_VERSION: u32 = 1;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub version: u32,
    /// Leader addresses (`host:port`), tried in order.
    pub leaders: Vec<String>,
    /// The cluster CA certificate (PEM).
    pub ca: String,
    /// This admin's certificate (PEM).
    pub cert: String,
    /// This admin's private key (PEM).
    pub key: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig").field("leaders", &self.leaders).finish_non_exhaustive()
    }
}

impl AdminConfig {
    pub fn parse(file: &str, text: &str) -> Result<Self, SourceError> {
        let cfg: AdminConfig = parse_toml(file, text)?;
        if cfg.version != ADMIN_CONFIG_VERSION {
            let at = text.find("version").unwrap_or(0);
            return Err(SourceError::at(
                file,
                text,
                at,
                "version",
                format!("expected version {ADMIN_CONFIG_VERSION}, found {}", cfg.version),
            ));
        }
        if cfg.leaders.is_empty() {
            let at = text.find("leaders").unwrap_or(0);
            return Err(SourceError::at(file, text, at, "leaders", "expected at least one leader address"));
        }
        Ok(cfg)
    }

    pub fn render(&self) -> String {
        let leaders: Vec<String> = self.leaders.iter().map(|l| format!("{l:?}")).collect();
        format!(
            "# Bramble CLI config: the leaders and an admin identity. Keep it private (it holds a key).\n\
             # Used by `bramble` via --config, BRAMBLE_CONFIG or ~/.config/bramble/config.toml.\n\
             version = {ADMIN_CONFIG_VERSION}\n\
             leaders = [{}]\n\
             ca = \"\"\"\n{}\"\"\"\n\
             cert = \"\"\"\n{}\"\"\"\n\
             key = \"\"\"\n{}\"\"\"\n",
            leaders.join(", "),
            self.ca,
            self.cert,
            self.key
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_back() {
        let c = AdminConfig {
            version: 1,
            leaders: vec!["127.0.0.1:7443".into()],
            ca: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            cert: "c\n".into(),
            key: "k\n".into(),
        };
        assert_eq!(AdminConfig::parse("a.toml", &c.render()).unwrap(), c);
        let e = AdminConfig::parse("a.toml", "version = 1\nleaders = []\nca=''\ncert=''\nkey=''\n").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "leaders"));
    }
}
