//! Several clusters in one CLI config. The config (`--config`, `BRAMBLE_CONFIG`,
//! `~/.config/bramble/config.toml`) is either one cluster's credentials (a leader's `admin.toml`,
//! a `user create --out` file), or a list of contexts, each naming such a file:
//!
//! ```toml
//! version = 1
//! current_context = "home"
//! [[context]]
//! name = "home"
//! config = "contexts/home.toml"      # relative to this file
//! ```
//!
//! `--context NAME` (or `BRAMBLE_CONTEXT`) picks one for a command; `bramble config use-context`
//! changes the current one; `bramble config add-context NAME --from FILE` copies credentials in
//! (and turns a one-cluster config into a list, keeping it as the context `default`).

use crate::error::CliError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The context `--context` named for this run, if any.
static CHOSEN: OnceLock<Option<String>> = OnceLock::new();

/// Sets the context this run uses (main, from `--context` / `BRAMBLE_CONTEXT`).
pub fn choose(name: Option<String>) {
    let _ = CHOSEN.set(name);
}

fn chosen() -> Option<&'static str> {
    CHOSEN.get().and_then(|c| c.as_deref())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    pub version: u32,
    pub current_context: String,
    #[serde(rename = "context")]
    pub contexts: Vec<Context>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub name: String,
    /// A cluster's credentials file, relative to the contexts file.
    pub config: PathBuf,
}

/// Whether `text` is a list of contexts rather than one cluster's credentials.
pub fn is_contexts(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("context") || t.contains_key("current_context"))
}

impl Contexts {
    pub fn parse(path: &Path, text: &str) -> Result<Contexts, CliError> {
        let c: Contexts = toml::from_str(text)
            .map_err(|e| CliError::Config(format!("{}: {}", path.display(), e.message().trim())))?;
        let bad = |m: String| Err(CliError::Config(format!("{}: {m}", path.display())));
        if c.version != 1 {
            return bad(format!("expected version 1, found {}", c.version));
        }
        for (i, ctx) in c.contexts.iter().enumerate() {
            if bramble_proto::names::check_dns_subdomain(&ctx.name).is_err() {
                return bad(format!("context[{i}].name {:?}: expected a name like home or lab-2", ctx.name));
            }
            if c.contexts[..i].iter().any(|o| o.name == ctx.name) {
                return bad(format!("context {:?} is listed twice", ctx.name));
            }
        }
        if !c.contexts.iter().any(|x| x.name == c.current_context) {
            return bad(format!("current_context {:?} is not a listed context", c.current_context));
        }
        Ok(c)
    }

    fn write(&self, path: &Path) -> Result<(), CliError> {
        let text = toml::to_string(self).map_err(|e| CliError::Other(e.to_string()))?;
        bramble_proto::fsutil::write_file_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))
    }

    /// The credentials file of context `name` (the current one if none).
    pub fn file_of(&self, contexts_file: &Path, name: Option<&str>) -> Result<PathBuf, CliError> {
        let name = name.unwrap_or(&self.current_context);
        let ctx = self.contexts.iter().find(|c| c.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
            CliError::Config(format!(
                "no context {name:?} in {} (there are: {})",
                contexts_file.display(),
                known.join(", ")
            ))
        })?;
        Ok(contexts_file.parent().unwrap_or(Path::new(".")).join(&ctx.config))
    }
}

/// The credentials file to use: `path` itself, or the chosen context's when `path` lists contexts.
/// `--context` with a one-cluster config is refused (it would be silently ignored).
pub fn resolve(path: &Path, text: &str) -> Result<Option<PathBuf>, CliError> {
    if !is_contexts(text) {
        return match chosen() {
            Some(n) => Err(CliError::Config(format!(
                "--context {n}: {} holds one cluster, not contexts (bramble config add-context makes a list)",
                path.display()
            ))),
            None => Ok(None),
        };
    }
    Ok(Some(Contexts::parse(path, text)?.file_of(path, chosen())?))
}

/// `bramble config get-contexts`: every context, the current one marked.
pub fn list(path: &Path) -> Result<Vec<(bool, String, PathBuf)>, CliError> {
    let text = read(path)?;
    if !is_contexts(&text) {
        return Ok(vec![(true, "default".into(), path.to_path_buf())]);
    }
    let c = Contexts::parse(path, &text)?;
    Ok(c.contexts
        .iter()
        .map(|x| (x.name == c.current_context, x.name.clone(), path.parent().unwrap_or(Path::new(".")).join(&x.config)))
        .collect())
}

/// `bramble config use-context NAME`.
pub fn use_context(path: &Path, name: &str) -> Result<(), CliError> {
    let text = read(path)?;
    if !is_contexts(&text) {
        return Err(CliError::Config(format!(
            "{} holds one cluster: add others with bramble config add-context NAME --from FILE",
            path.display()
        )));
    }
    let mut c = Contexts::parse(path, &text)?;
    c.file_of(path, Some(name))?;
    c.current_context = name.to_string();
    c.write(path)
}

/// `bramble config add-context NAME --from FILE`: the credentials copied next to the config (0600)
/// under `contexts/NAME.toml`; a one-cluster config becomes the context `default` first.
pub fn add(path: &Path, name: &str, from: &Path) -> Result<(), CliError> {
    if bramble_proto::names::check_dns_subdomain(name).is_err() {
        return Err(CliError::Other(format!("context name {name:?}: expected a name like home or lab-2")));
    }
    let creds = read(from)?;
    bramble_transport::admin::AdminConfig::parse(&from.display().to_string(), &creds)
        .map_err(|e| CliError::Config(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let store = |n: &str, text: &str| -> Result<PathBuf, CliError> {
        let rel = PathBuf::from("contexts").join(format!("{n}.toml"));
        std::fs::create_dir_all(dir.join("contexts")).map_err(|e| CliError::Other(e.to_string()))?;
        bramble_proto::fsutil::write_file_atomic(&dir.join(&rel), text.as_bytes(), 0o600)
            .map_err(|e| CliError::Other(format!("cannot write {}: {e}", dir.join(&rel).display())))?;
        Ok(rel)
    };
    let mut c = match std::fs::read_to_string(path) {
        Ok(text) if is_contexts(&text) => Contexts::parse(path, &text)?,
        Ok(text) => {
            let rel = store("default", &text)?;
            Contexts {
                version: 1,
                current_context: "default".into(),
                contexts: vec![Context { name: "default".into(), config: rel }],
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Contexts { version: 1, current_context: name.into(), contexts: Vec::new() }
        }
        Err(e) => return Err(CliError::Config(format!("cannot read {}: {e}", path.display()))),
    };
    if c.contexts.iter().any(|x| x.name == name) {
        return Err(CliError::Other(format!("context {name:?} exists in {}", path.display())));
    }
    let rel = store(name, &creds)?;
    c.contexts.push(Context { name: name.into(), config: rel });
    c.write(path)
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Config(format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_contexts_is_told_from_one_cluster_and_checked() {
        assert!(is_contexts("version = 1\ncurrent_context = \"a\"\n[[context]]\nname = \"a\"\nconfig = \"a.toml\"\n"));
        assert!(!is_contexts("version = 1\nleaders = [\"x:7443\"]\nca = \"\"\ncert = \"\"\nkey = \"\"\n"));
        let p = Path::new("/home/u/.config/bramble/config.toml");
        let c = Contexts::parse(
            p,
            "version = 1\ncurrent_context = \"lab\"\n[[context]]\nname = \"home\"\nconfig = \"contexts/home.toml\"\n[[context]]\nname = \"lab\"\nconfig = \"/etc/lab.toml\"\n",
        )
        .unwrap();
        assert_eq!(c.file_of(p, None).unwrap(), PathBuf::from("/etc/lab.toml"));
        assert_eq!(c.file_of(p, Some("home")).unwrap(), PathBuf::from("/home/u/.config/bramble/contexts/home.toml"));
        let e = c.file_of(p, Some("work")).unwrap_err().to_string();
        assert!(e.contains("no context \"work\"") && e.contains("there are: home, lab"), "{e}");
        let e = Contexts::parse(p, "version = 1\ncurrent_context = \"x\"\n[[context]]\nname = \"a\"\nconfig = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("current_context \"x\" is not a listed context"), "{e}");
        let twice = "version = 1\ncurrent_context = \"a\"\n[[context]]\nname = \"a\"\nconfig = \"a\"\n[[context]]\nname = \"a\"\nconfig = \"b\"\n";
        assert!(Contexts::parse(p, twice).unwrap_err().to_string().contains("listed twice"));
    }
}
