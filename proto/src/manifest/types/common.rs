//! Values several objects use: replica counts and other ranged numbers, percentages, the autoscale
//! spec, protocols, environment variable names, labels.

use crate::names::{check_env_name, check_label_key, check_label_value};
use crate::quantity::HumanDuration;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The most replicas one app may ask for.
pub const MAX_REPLICAS: u32 = 1000;

macro_rules! ranged_int {
    ($(#[$m:meta])* $name:ident, $inner:ty, $min:expr, $max:expr, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} from {} to {}", $what, $min, $max)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        if v < $min as i64 || v > $max as i64 {
                            return Err(E::custom(format!("expected {} from {} to {}, found {v}", $what, $min, $max)));
                        }
                        Ok($name(v as $inner))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

ranged_int!(
    /// A replica count, 0 to [`MAX_REPLICAS`].
    Replicas, u32, 0, MAX_REPLICAS, "a replica count"
);
ranged_int!(
    /// A TCP or UDP port, 1 to 65535.
    Port, u16, 1, 65535, "a port number"
);
ranged_int!(
    /// A small positive count (probe thresholds).
    Threshold, u32, 1, 100, "a count"
);
ranged_int!(
    /// Replicas a rolling update may add or take away at once.
    #[derive(Default)]
    Step, u32, 0, MAX_REPLICAS, "a replica count"
);

/// How many of an app's replicas a drain leaves ready at least: a count (`2`) or a share of its
/// replicas (`"50%"`, rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinAvailable {
    Count(u32),
    Percent(u32),
}

impl MinAvailable {
    /// The count for an app of `replicas` replicas.
    pub fn of(self, replicas: u32) -> u32 {
        match self {
            MinAvailable::Count(n) => n,
            MinAvailable::Percent(p) => (u64::from(replicas) * u64::from(p)).div_ceil(100) as u32,
        }
    }
}

impl Serialize for MinAvailable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MinAvailable::Count(n) => s.serialize_u32(*n),
            MinAvailable::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for MinAvailable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MinAvailable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a replica count from 0 to {MAX_REPLICAS} or a share such as \"50%\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MinAvailable, E> {
                if !(0..=i64::from(MAX_REPLICAS)).contains(&v) {
                    return Err(E::custom(format!("expected a replica count from 0 to {MAX_REPLICAS}, found {v}")));
                }
                Ok(MinAvailable::Count(v as u32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MinAvailable, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MinAvailable, E> {
                match v.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) if n <= 100 => Ok(MinAvailable::Percent(n)),
                    _ => Err(E::custom(format!("expected a share from \"0%\" to \"100%\" or a count, found {v:?}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A share of a request: `"70%"`, 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(pub u32);

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", self.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let n = s.strip_suffix('%').and_then(|n| n.trim().parse::<u32>().ok()).ok_or_else(|| {
            de::Error::custom(format!("expected a share of the request such as \"70%\", found {s:?}"))
        })?;
        if !(1..=1000).contains(&n) {
            return Err(de::Error::custom(format!("expected a target from 1% to 1000%, found {s:?}")));
        }
        Ok(Percent(n))
    }
}

/// `[app.autoscale]`: the replica count follows usage, as Kubernetes' HorizontalPodAutoscaler
/// does, between `min` and `max`; targets are shares of the app's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    pub min: Replicas,
    pub max: Replicas,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Percent>,
    /// A scale down goes only as low as the highest recommendation of this window (5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_window: Option<HumanDuration>,
    /// How often it may grow (at most doubling, or +4) (15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up_period: Option<HumanDuration>,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// An environment variable name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvName(pub String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_env_name(&s).map_err(de::Error::custom)?;
        Ok(EnvName(s))
    }
}

/// Labels (for node selectors): keys and values checked as Kubernetes does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        for (k, v) in &map {
            check_label_key(k).map_err(de::Error::custom)?;
            check_label_value(v).map_err(de::Error::custom)?;
        }
        Ok(Labels(map))
    }
}
