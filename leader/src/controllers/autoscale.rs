//! The autoscaler's decision: Kubernetes' HorizontalPodAutoscaler rule as a pure function of an
//! app's replicas' usage, its targets and its recent recommendations. No store, no clock.
//!
//! Per metric (CPU, memory; a share of the request): ratio = mean usage of the ready replicas with
//! a sample ÷ target. Within the tolerance (10 %) nothing changes. Replicas without a sample
//! count as using 100 % of the target when scaling down and 0 % when scaling up (so missing data
//! never causes a scale down); replicas that are not ready, or started less than the
//! initialization period ago, count as 0 % when scaling up and are left out when scaling down. If
//! filling in reverses the direction, nothing changes. desired = ceil(ratio × replicas counted);
//! the largest over the metrics wins. A scale up is limited to max(2 × current, current + 4) per
//! period; a scale down goes only as low as the highest recommendation of the stabilization window.
//! The result is clamped to min..max.

use std::time::Duration;

/// One replica as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub ready: bool,
    /// When its container started (ms).
    pub started_ms: Option<u64>,
    /// Its latest usage, if a sample came: CPU millicores and memory bytes.
    pub cpu_millis: Option<u64>,
    pub memory: Option<u64>,
}

/// An app's autoscaling settings, in the units the decision uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// Targets as a share of the request, in percent, with the requests they are shares of.
    pub cpu: Option<(u32, u64)>,
    pub memory: Option<(u32, u64)>,
    pub tolerance: f64,
    pub scale_down_window: Duration,
    pub scale_up_period: Duration,
    /// Replicas younger than this that are not ready count as 0 % when scaling up.
    pub initialization: Duration,
}

impl Policy {
    pub fn new(min: u32, max: u32) -> Policy {
        Policy {
            min,
            max,
            cpu: None,
            memory: None,
            tolerance: 0.1,
            scale_down_window: Duration::from_secs(300),
            scale_up_period: Duration::from_secs(15),
            initialization: Duration::from_secs(300),
        }
    }
}

/// What the autoscaler decided, and the figures behind it (for events and `describe app`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    /// The recommendation before stabilization and limits (kept for the window).
    pub recommended: u32,
    /// Per metric: (name, mean usage in % of the request, target %), where there was data.
    pub figures: Vec<(&'static str, u64, u32)>,
    pub why: String,
}

/// A metric: its name, its (target %, request), and how to read it from a replica.
type Metric = (&'static str, Option<(u32, u64)>, fn(&Observed) -> Option<u64>);

/// The replica count one metric asks for, if it asks for a change.
fn by_metric(
    replicas: &[Observed],
    usage: impl Fn(&Observed) -> Option<u64>,
    target_pct: u32,
    request: u64,
    policy: &Policy,
    now_ms: u64,
) -> (Option<u32>, Option<u64>) {
    let target = request as f64 * f64::from(target_pct) / 100.0;
    if target <= 0.0 {
        return (None, None);
    }
    let init_ms = policy.initialization.as_millis() as u64;
    let young = |r: &Observed| r.started_ms.is_none_or(|s| now_ms < s + init_ms);
    // Ready replicas with data; not-ready ones (or young and not ready); those without data.
    let mut with: Vec<f64> = Vec::new();
    let mut unready = 0usize;
    let mut missing = 0usize;
    for r in replicas {
        match usage(r) {
            Some(u) if r.ready => with.push(u as f64),
            Some(_) if !r.ready && young(r) => unready += 1,
            Some(u) => with.push(u as f64),
            None if r.ready => missing += 1,
            None => unready += 1,
        }
    }
    if with.is_empty() {
        return (None, None);
    }
    let mean = with.iter().sum::<f64>() / with.len() as f64;
    let pct = (mean * 100.0 / request as f64).round() as u64;
    let ratio = mean / target;
    if (ratio - 1.0).abs() <= policy.tolerance {
        return (None, Some(pct));
    }
    let up = ratio > 1.0;
    // Fill in what is missing, against the direction: missing data never scales down.
    let mut all = with.clone();
    if up {
        all.extend(std::iter::repeat_n(0.0, missing + unready));
    } else {
        all.extend(std::iter::repeat_n(target, missing));
    }
    let new_ratio = all.iter().sum::<f64>() / all.len() as f64 / target;
    if (new_ratio - 1.0).abs() <= policy.tolerance || (new_ratio > 1.0) != up {
        return (None, Some(pct));
    }
    let desired = (new_ratio * all.len() as f64).ceil() as u32;
    (Some(desired.max(1)), Some(pct))
}

/// Decides an app's replica count now, from `current`. `history` holds past recommendations
/// `(ms, count)` within the scale-down window (the caller keeps them).
pub fn decide(current: u32, replicas: &[Observed], policy: &Policy, history: &[(u64, u32)], now_ms: u64) -> Decision {
    let mut figures = Vec::new();
    let mut wanted: Option<u32> = None;
    let metrics: [Metric; 2] = [("cpu", policy.cpu, |r| r.cpu_millis), ("memory", policy.memory, |r| r.memory)];
    for (name, setting, usage) in metrics {
        let Some((target, request)) = setting else { continue };
        let (d, pct) = by_metric(replicas, usage, target, request, policy, now_ms);
        if let Some(p) = pct {
            figures.push((name, p, target));
        }
        if let Some(d) = d {
            wanted = Some(wanted.map_or(d, |w| w.max(d)));
        }
    }
    let recommended = wanted.unwrap_or(current).clamp(policy.min, policy.max.max(policy.min));
    let text = |f: &[(&str, u64, u32)]| -> String {
        f.iter().map(|(n, p, t)| format!("{n} {p}% of request (target {t}%)")).collect::<Vec<_>>().join(", ")
    };
    let mut desired = recommended;
    let mut why = if figures.is_empty() { "no usage data yet: the count stays".to_string() } else { text(&figures) };
    if desired > current {
        let cap = (current.saturating_mul(2)).max(current + 4);
        if desired > cap {
            desired = cap;
            why.push_str(&format!("; growth limited to {cap} this period"));
        }
    } else if desired < current {
        // Only as low as the highest recommendation of the window (this one included).
        let window = policy.scale_down_window.as_millis() as u64;
        let highest = history
            .iter()
            .filter(|(t, _)| t + window > now_ms)
            .map(|(_, c)| *c)
            .chain([recommended])
            .max()
            .unwrap_or(recommended);
        if highest > desired {
            desired = highest.min(current);
            why.push_str(&format!("; held at {desired} by the last {} of recommendations", humanize(window)));
        }
    }
    if current < policy.min || current > policy.max {
        desired = current.clamp(policy.min, policy.max.max(policy.min));
        why = format!("kept within min {} and max {}", policy.min, policy.max);
    }
    Decision { desired, recommended, figures, why }
}

fn humanize(ms: u64) -> String {
    bramble_proto::quantity::format_duration(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(cpu: u64) -> Observed {
        Observed { ready: true, started_ms: Some(0), cpu_millis: Some(cpu), memory: None }
    }

    fn cpu_policy(min: u32, max: u32, target: u32, request: u64) -> Policy {
        Policy { cpu: Some((target, request)), ..Policy::new(min, max) }
    }

    const NOW: u64 = 10 * 60 * 1000;

    #[test]
    fn the_examples_of_the_kubernetes_documentation() {
        // "if the current metric value is 200m, and the desired value is 100m, the number of
        // replicas will be doubled" (target 100% of a 100m request).
        let p = cpu_policy(1, 100, 100, 100);
        assert_eq!(decide(3, &[ready(200), ready(200), ready(200)], &p, &[], NOW).desired, 6);
        // "if the current value is instead 50m, you'll halve the number of replicas".
        assert_eq!(decide(4, &[ready(50), ready(50), ready(50), ready(50)], &p, &[], NOW).desired, 2);
        // "if the ratio is sufficiently close to 1.0 (within a globally-configurable tolerance,
        // 0.1 by default), the control plane skips any scaling action".
        assert_eq!(decide(4, &[ready(106), ready(106), ready(106), ready(106)], &p, &[], NOW).desired, 4);
    }

    #[test]
    fn table() {
        let p = cpu_policy(1, 10, 70, 1000);
        // (current, cpu per ready replica, desired)
        let cases: &[(u32, &[u64], u32)] = &[
            (2, &[700, 700], 2),                      // at the target
            (2, &[1400, 1400], 4),                    // twice the target
            (1, &[1000], 2),                          // ceil(1 × 1000/700)
            (4, &[100, 100, 100, 100], 4),            // held by the window below (history of 4)
            (5, &[2100, 2100, 2100, 2100, 2100], 10), // capped by max
        ];
        for (current, cpus, want) in cases {
            let replicas: Vec<Observed> = cpus.iter().map(|c| ready(*c)).collect();
            let history = [(NOW - 60_000, 4)];
            let d = decide(*current, &replicas, &p, &history, NOW);
            assert_eq!(d.desired, *want, "current {current}, cpu {cpus:?}: {d:?}");
        }
    }

    #[test]
    fn missing_data_never_scales_down_and_unready_replicas_do_not_push_up() {
        let p = cpu_policy(1, 10, 50, 1000);
        let none = Observed { ready: true, started_ms: Some(0), cpu_millis: None, memory: None };
        // Two idle with data, two without: counted as at the target, so 4 → 2 becomes ceil(4 × 0.55).
        let d = decide(4, &[ready(50), ready(50), none.clone(), none.clone()], &p, &[], NOW);
        assert!(d.desired >= 3, "{d:?}");
        // No data at all: nothing changes.
        assert_eq!(decide(4, &[none.clone(), none], &p, &[], NOW).desired, 4);
        // Scaling up: a just-started unready replica counts as 0 %, which may cancel the scale up.
        let young = Observed { ready: false, started_ms: Some(NOW - 1000), cpu_millis: Some(900), memory: None };
        let d = decide(2, &[ready(560), young], &p, &[], NOW);
        assert_eq!(d.desired, 2, "560 and 0 average to 280 = 0.56 of the target: within reach, no change: {d:?}");
    }

    #[test]
    fn growth_is_limited_and_shrinking_waits_for_the_window() {
        let p = cpu_policy(1, 100, 10, 1000);
        // 10× the target on 2 replicas wants 20; at most max(4, 2 + 4) = 6 now.
        let d = decide(2, &[ready(1000), ready(1000)], &p, &[], NOW);
        assert_eq!(d.desired, 6, "{d:?}");
        assert!(d.why.contains("growth limited to 6"), "{}", d.why);
        // Load gone: wants 1, but 5 was recommended 2 minutes ago.
        let idle = vec![ready(0); 6];
        let d = decide(6, &idle, &p, &[(NOW - 120_000, 5)], NOW);
        assert_eq!(d.desired, 5, "{d:?}");
        // Past the window: down to the recommendation.
        let d = decide(6, &idle, &p, &[(NOW - 400_000, 5)], NOW);
        assert_eq!(d.desired, 1, "{d:?}");
        assert_eq!(d.figures, vec![("cpu", 0, 10)]);
    }

    #[test]
    fn memory_and_cpu_the_larger_wins_and_bounds_hold() {
        let p = Policy { cpu: Some((50, 1000)), memory: Some((50, 100 << 20)), ..Policy::new(2, 8) };
        let r = |cpu, mem| Observed { ready: true, started_ms: Some(0), cpu_millis: Some(cpu), memory: Some(mem) };
        let d = decide(2, &[r(500, 150 << 20), r(500, 150 << 20)], &p, &[], NOW);
        assert_eq!(d.desired, 6, "memory at 150% of a 50% target wants 6: {d:?}");
        // Below min: brought up to it whatever the load.
        assert_eq!(decide(1, &[r(0, 0)], &p, &[], NOW).desired, 2);
    }
}
