//! Boards' content for other boards: a board pulling an image asks here first; the leader asks the
//! boards that hold the image (from what they report) and copies the answer across. What comes is
//! checked by the asking board against its digest; the leader only relays.
//!
//! Rules: a board may ask only for an image one of its replicas uses (the desired set says), and a
//! holder serves only what that image's record names. A layer no board holds yet is fetched from
//! its registry by the first board that asks for it (`NotHere` makes it that layer's fetcher); the
//! others are told to wait for its copy (`Wait`) while it is connected, for at most
//! [`FETCH_LEASE_MS`] after it asked. What a tag names is asked of the registry first: a board's answer to
//! `Resolve` is used only when no registry answers (see `bramble_images::pull`).

use super::relay::Handles;
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::time::now_ms;
use bramble_proto::wire::{AgentRequest, PeerReply, PeerRequest};
use bramble_transport::quic::{read_frame, write_frame};
use quinn::SendStream;
use std::collections::HashMap;
use std::sync::Mutex;
use tracing::{debug, info};

/// How long a board counts as an image's fetcher for the others after it last asked for one of
/// its layers (then they fetch too: a fetcher that failed holds nobody up for long).
pub const FETCH_LEASE_MS: u64 = 120_000;

/// The layers being fetched from a registry, by digest (a board of another platform fetching the
/// same reference holds nobody up): the board and since when; and how many copies each board is
/// serving now (the least busy holder is asked first).
#[derive(Debug, Default)]
pub struct Fetching(Mutex<HashMap<String, (String, u64)>>, Mutex<HashMap<String, usize>>);

/// A copy being served by `holder` (counted while it lives).
struct Serving<'a>(&'a Fetching, String);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0 .1.lock().expect("serving lock").get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Fetching {
    /// Who `node` should wait for to get `key` (a layer's digest), if anyone; otherwise `node`
    /// becomes its fetcher. `connected` says whether a board is still there.
    pub fn wait_for(&self, key: &str, node: &str, now: u64, connected: impl Fn(&str) -> bool) -> Option<String> {
        let mut map = self.0.lock().expect("fetching lock");
        map.retain(|_, (_, since)| now.saturating_sub(*since) < FETCH_LEASE_MS);
        match map.get(key) {
            Some((fetcher, _)) if fetcher != node && connected(fetcher) => Some(fetcher.clone()),
            _ => {
                map.insert(key.to_string(), (node.to_string(), now));
                None
            }
        }
    }

    /// `holders` in the order to ask them: the least busy first, then by name.
    pub fn order(&self, mut holders: Vec<String>) -> Vec<String> {
        let busy = self.1.lock().expect("serving lock");
        holders.sort_by_key(|h| (busy.get(h).copied().unwrap_or(0), h.clone()));
        holders
    }

    fn serving(&self, holder: &str) -> Serving<'_> {
        *self.1.lock().expect("serving lock").entry(holder.to_string()).or_default() += 1;
        Serving(self, holder.to_string())
    }

    /// Some board holds `key` now: nobody waits on a fetcher any more.
    pub fn done(&self, key: &str) {
        self.0.lock().expect("fetching lock").remove(key);
    }
}

/// Whether a replica of `node` uses `reference` (its app's, a container's or an init's image).
fn uses(api: &Handles, node: &str, reference: &str) -> bool {
    let desired = api.published.desired.borrow().clone();
    desired.as_ref().and_then(|d| d.get(node)).is_some_and(|set| set_uses(set, reference))
}

fn set_uses(set: &crate::controllers::desired::DesiredSet, reference: &str) -> bool {
    set.values().any(|a| {
        std::iter::once(&a.spec.image)
            .chain(a.spec.containers.iter().chain(&a.spec.init).map(|c| &c.image))
            .any(|i| i.as_str() == reference)
    })
}

/// `s` quoted with its control characters escaped, cut to 64 characters.
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

pub async fn serve(api: Handles, node: String, req: PeerRequest, mut send: SendStream) {
    let reference = match &req {
        PeerRequest::Resolve { reference } | PeerRequest::Blob { reference, .. } => reference.clone(),
    };
    if !uses(&api, &node, &reference) {
        // (What the board sent, quoted and cut: it has not been checked against anything.)
        let reason = format!("no replica of {node} uses {}", quoted(&reference));
        let _ = write_frame(&mut send, &PeerReply::Refused { reason }).await;
        let _ = send.finish();
        return;
    }
    let not_from: Vec<String> = match &req {
        PeerRequest::Blob { not_from, .. } => not_from.clone(),
        PeerRequest::Resolve { .. } => Vec::new(),
    };
    let holders: Vec<String> = api
        .observed
        .all_node_images()
        .into_iter()
        .filter(|(n, images)| *n != node && images.contains(&reference) && !not_from.contains(n))
        .map(|(n, _)| n)
        .collect();
    if !holders.is_empty() {
        if let PeerRequest::Blob { digest, .. } = &req {
            api.fetching.done(digest);
        }
    }
    // The mirror's cache first (one hop), then the boards, then the mirror's upstream.
    let mirrored = api.mirror.clone().filter(|m| reference.parse().is_ok_and(|i| m.serves(&i)));
    match (&mirrored, &req) {
        // What a tag names: the mirror asks the registry, which is worth more than a board's word.
        (Some(m), PeerRequest::Resolve { .. }) => return from_mirror(&api, m, &reference, &req, send).await,
        (Some(m), PeerRequest::Blob { digest, .. }) if digest.parse().is_ok_and(|d| m.has(&d)) => {
            return from_mirror(&api, m, &reference, &req, send).await;
        }
        _ => {}
    }
    for holder in api.fetching.order(holders) {
        let Some(conn) = api.registry.connection(&holder) else { continue };
        let asked = async {
            let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut s, &AgentRequest::Peer(req.clone())).await.map_err(|e| e.to_string())?;
            let _ = s.finish();
            let reply = read_frame::<PeerReply>(&mut r, MAX_FRAME_LEN).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((reply, r))
        }
        .await;
        match asked {
            Ok((Some(PeerReply::Found { digest, size, .. }), mut from_holder)) => {
                let reply = PeerReply::Found { from: holder.clone(), digest, size };
                if write_frame(&mut send, &reply).await.is_err() {
                    return;
                }
                if matches!(req, PeerRequest::Blob { .. }) {
                    let _busy = api.fetching.serving(&holder);
                    match tokio::io::copy(&mut from_holder, &mut send).await {
                        Ok(n) => debug!(from = %holder, to = %node, bytes = n, "blob relayed"),
                        Err(e) => info!(from = %holder, to = %node, "relaying a blob failed: {e}"),
                    }
                }
                let _ = send.finish();
                let _ = send.stopped().await;
                return;
            }
            Ok(_) => continue,
            Err(e) => debug!(holder = %holder, "asking for {reference}: {e}"),
        }
    }
    if let Some(m) = &mirrored {
        return from_mirror(&api, m, &reference, &req, send).await;
    }
    // Nobody has it: the first to ask for one of its layers fetches it; the rest wait for its
    // copy. (Documents are small, and a board whose platform the image lacks stops at them: it
    // becomes nobody's fetcher.)
    let reply = match &req {
        PeerRequest::Blob { layer: true, digest, .. } => {
            let connected = |n: &str| api.registry.connection(n).is_some();
            match api.fetching.wait_for(digest, &node, now_ms(), connected) {
                Some(fetcher) => PeerReply::Wait { fetcher },
                None => PeerReply::NotHere,
            }
        }
        PeerRequest::Blob { .. } | PeerRequest::Resolve { .. } => PeerReply::NotHere,
    };
    let _ = write_frame(&mut send, &reply).await;
    let _ = send.finish();
}

/// Where a mirror's answer says it came from.
pub const MIRROR: &str = "the leader's mirror";

/// Answers from the mirror: a tag's digest, or a blob (fetched from the upstream if need be, once
/// for every board that asks meanwhile), with the cluster's settings for that registry.
async fn from_mirror(
    api: &Handles,
    mirror: &crate::mirror::Mirror,
    reference: &str,
    req: &PeerRequest,
    mut send: SendStream,
) {
    let Ok(image) = reference.parse::<bramble_images::ImageRef>() else { return };
    let (objects, keyring, host) = (api.objects.clone(), api.keyring.clone(), image.registry.clone());
    let settings = tokio::task::spawn_blocking(move || crate::sessions::registry_payload(&objects, &keyring, &host))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let cluster = settings
        .map(|(_, values)| {
            let held = std::collections::BTreeMap::from([(image.registry.clone(), values)]);
            bramble_images::registry::configs_from_payloads(&held)
        })
        .unwrap_or_default();
    let client = std::sync::Arc::new(bramble_images::registry::RegistryClient::new(vec![]).with_extra(cluster));
    let answer = match req {
        PeerRequest::Resolve { .. } => mirror
            .resolve(client, &image, now_ms())
            .await
            .map(|d| (PeerReply::Found { from: MIRROR.into(), digest: Some(d.to_string()), size: 0 }, None)),
        PeerRequest::Blob { digest, size, .. } => match digest.parse::<bramble_images::Digest>() {
            Ok(d) => mirror
                .blob(client, &image, &d, *size)
                .await
                .map(|(path, len)| (PeerReply::Found { from: MIRROR.into(), digest: None, size: len }, Some(path))),
            Err(e) => Err(e.to_string()),
        },
    };
    let (reply, file) = match answer {
        Ok(v) => v,
        Err(e) => {
            info!(image = %reference, "mirror: {e}");
            (PeerReply::NotHere, None)
        }
    };
    if write_frame(&mut send, &reply).await.is_err() {
        return;
    }
    if let Some(path) = file {
        if let Ok(mut f) = tokio::fs::File::open(&path).await {
            let _ = tokio::io::copy(&mut f, &mut send).await;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_to_ask_fetches_the_others_wait_while_it_is_there_and_not_forever() {
        let f = Fetching::default();
        let up = |_: &str| true;
        assert_eq!(f.wait_for("r", "b1", 0, up), None, "b1 fetches");
        assert_eq!(f.wait_for("r", "b2", 10, up), Some("b1".into()));
        assert_eq!(f.wait_for("r", "b1", 20, up), None, "the fetcher asking again is not told to wait for itself");
        assert_eq!(f.wait_for("other", "b2", 20, up), None, "per image");
        // The fetcher went away: the next to ask fetches.
        assert_eq!(f.wait_for("r", "b3", 30, |n| n != "b1"), None);
        assert_eq!(f.wait_for("r", "b2", 40, up), Some("b3".into()));
        // Its lease ran out: the next fetches.
        assert_eq!(f.wait_for("r", "b2", 30 + FETCH_LEASE_MS, up), None);
        f.done("r");
        assert_eq!(f.wait_for("r", "b4", 50 + FETCH_LEASE_MS, up), None);
    }

    #[test]
    fn a_board_may_ask_only_for_the_images_its_replicas_use() {
        let m = bramble_proto::manifest::parse_manifest(
            "t.toml",
            "[[app]]\nname = \"web\"\nimage = \"reg.lan/web:1\"\n[[app.init]]\nname = \"seed\"\nimage = \"reg.lan/seed:2\"\n",
        )
        .unwrap();
        let a = bramble_proto::wire::Assignment {
            replica: "web-1".into(),
            app: "web".into(),
            revision: "r".into(),
            spec: std::sync::Arc::new(m.apps[0].clone()),
        };
        let set = crate::controllers::desired::DesiredSet::from([("web-1".to_string(), a)]);
        assert!(set_uses(&set, "reg.lan/web:1"));
        assert!(set_uses(&set, "reg.lan/seed:2"), "an init container's image");
        assert!(!set_uses(&set, "reg.lan/secret-sauce:1"), "another team's private image");
        assert!(!set_uses(&set, "reg.lan/web:2"), "by the reference as written");
        let long = format!("reg.lan/{}\n", "x".repeat(500));
        let q = quoted(&long);
        assert!(q.len() < 80 && q.ends_with('…') && !q.contains('\n'), "{q}");
        assert_eq!(quoted("reg.lan/web:1"), "\"reg.lan/web:1\"");
        assert!(!set_uses(&Default::default(), "reg.lan/web:1"));
    }

    #[test]
    fn the_least_busy_holder_is_asked_first() {
        let f = Fetching::default();
        let all = || vec!["b3".to_string(), "b1".to_string(), "b2".to_string()];
        assert_eq!(f.order(all()), ["b1", "b2", "b3"], "by name when none is busy");
        let one = f.serving("b1");
        let _two = f.serving("b1");
        let _three = f.serving("b2");
        assert_eq!(f.order(all()), ["b3", "b2", "b1"]);
        drop(one);
        assert_eq!(f.order(all()), ["b3", "b1", "b2"], "b1 and b2 serve one each: by name");
    }
}
