//! OCI platforms (`linux/arm/v7`) and how they match a board.
//!
//! Unlike a resolver that takes the first `arm` entry of an index, the variant counts: an
//! `arm/v7` board can run `v7`, `v6` and `v5` images, preferring the newest; an `arm/v6` board
//! (Pi Zero, Pi 1) must never get a `v7` image.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A CPU architecture in OCI terms: `amd64`, `arm64`, `arm/v7`, `arm/v6`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arch {
    Amd64,
    Arm64,
    ArmV7,
    ArmV6,
    Other(String),
}

impl Arch {
    /// The architecture a board runs images of: the running binary's family
    /// (`std::env::consts::ARCH`) with the version the kernel reports (`uname -m`). A 32-bit
    /// userland on an ARMv8 CPU (`aarch64` or `armv8l`, as on a Raspberry Pi 3 or 4 with a 32-bit
    /// OS) runs `arm/v7` images, as Docker chooses there; `armv6l` (Pi Zero, Pi 1) runs `arm/v6`.
    pub fn of_board(binary: &str, machine: &str) -> Arch {
        match binary {
            "x86_64" => Arch::Amd64,
            "aarch64" => Arch::Arm64,
            "arm" => {
                if machine.starts_with("armv7") || machine.starts_with("armv8") || machine == "aarch64" {
                    Arch::ArmV7
                } else if machine.starts_with("armv5") || machine.starts_with("armv4") {
                    // Older than any variant the OCI names for images that run on such a board.
                    Arch::Other(format!("arm/v{}", &machine[4..5]))
                } else {
                    Arch::ArmV6
                }
            }
            other => Arch::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::ArmV7 => "arm/v7",
            Arch::ArmV6 => "arm/v6",
            Arch::Other(s) => s,
        })
    }
}

impl TryFrom<String> for Arch {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "amd64" => Arch::Amd64,
            "arm64" | "arm64/v8" => Arch::Arm64,
            "arm/v7" => Arch::ArmV7,
            "arm/v6" => Arch::ArmV6,
            "" => return Err("expected an architecture like \"arm64\" or \"arm/v7\"".into()),
            _ => Arch::Other(s),
        })
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.to_string()
    }
}

/// An image platform. On the wire and in JSON it is the string form (`linux/arm/v7`); a string
/// that is not one is refused when it is decoded, never dropped in silence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], like \"linux/arm/v7\"")]
pub struct PlatformError(String);

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if s.len() > 128 || !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformError(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].into(),
            architecture: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl TryFrom<String> for Platform {
    type Error = PlatformError;
    fn try_from(s: String) -> Result<Self, PlatformError> {
        s.parse()
    }
}

impl From<Platform> for String {
    fn from(p: Platform) -> String {
        p.to_string()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// How well this image platform suits a Linux board of `arch`: `None` if it cannot run
    /// there, otherwise a score where higher is better (an exact variant beats an older one).
    pub fn suits(&self, arch: &Arch) -> Option<u32> {
        if self.os != "linux" {
            return None;
        }
        let variant = self.variant.as_deref();
        match (arch, self.architecture.as_str()) {
            (Arch::Amd64, "amd64") => Some(10),
            (Arch::Arm64, "arm64") => match variant {
                None | Some("v8") => Some(10),
                _ => None,
            },
            (Arch::ArmV7 | Arch::ArmV6, "arm") => {
                let board = if *arch == Arch::ArmV7 { 7 } else { 6 };
                // An index entry without a variant is conventionally v7.
                let image: u32 = match variant {
                    None => 7,
                    Some(v) => v.strip_prefix('v')?.parse().ok()?,
                };
                (image <= board && image >= 5).then_some(image)
            }
            (Arch::Other(a), other) => (a == other).then_some(10),
            _ => None,
        }
    }

    /// The index of the best platform in `offered` for `arch`.
    pub fn choose(offered: &[Platform], arch: &Arch) -> Option<usize> {
        offered
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.suits(arch).map(|s| (s, i)))
            .max_by_key(|(s, i)| (*s, usize::MAX - i))
            .map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ps: &[&str]) -> Vec<Platform> {
        ps.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn variants_matter() {
        let offered = list(&["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"]);
        assert_eq!(Platform::choose(&offered, &Arch::Amd64), Some(0));
        assert_eq!(Platform::choose(&offered, &Arch::ArmV6), Some(1));
        assert_eq!(Platform::choose(&offered, &Arch::ArmV7), Some(2), "v7 preferred over v6 on a v7 board");
        assert_eq!(Platform::choose(&offered, &Arch::Arm64), Some(3));
        assert_eq!(Platform::choose(&list(&["linux/arm/v7"]), &Arch::ArmV6), None, "a v6 board never runs v7");
        assert_eq!(Platform::choose(&list(&["linux/arm/v6"]), &Arch::ArmV7), Some(0), "v7 runs v6");
        assert_eq!(Platform::choose(&list(&["windows/amd64"]), &Arch::Amd64), None);
    }

    #[test]
    fn parse_and_print() {
        assert_eq!("linux/arm/v7".parse::<Platform>().unwrap().to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        let json = serde_json::to_string(&"linux/arm64".parse::<Platform>().unwrap()).unwrap();
        assert_eq!(json, "\"linux/arm64\"");
        let e = serde_json::from_str::<Vec<Platform>>("[\"linux/amd64\", \"nonsense\"]").unwrap_err();
        assert!(e.to_string().contains("invalid platform \"nonsense\""), "a bad entry is refused: {e}");
    }
}
