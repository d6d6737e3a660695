//! Joining and authentication over real QUIC with real certificates on loopback: what is allowed,
//! and every refusal the issue lists, with the message each side gets.

use bramble_agent::join::{self, JoinError};
use bramble_agent::sysinfo::node_info;
use bramble_agent::AgentConfig;
use bramble_leader::{init::init, trust::tokens, LeaderConfig, RunningLeader};
use bramble_proto::time::now_ms;
use bramble_proto::wire::{ErrorCode, Request, Response};
use bramble_transport::pki::{node_csr, Ca};
use bramble_transport::quic::{call, client_endpoint, connect};
use bramble_transport::tls::client_config;
use std::time::Duration;

struct Cluster {
    _dir: tempfile::TempDir,
    leader: RunningLeader,
    ca_pem: String,
    admin: bramble_transport::admin::AdminConfig,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("leader");
    let out = init(&data, "127.0.0.1:0".parse().unwrap(), "test", false, &Default::default()).unwrap();
    let config = LeaderConfig::load(&out.config_path).unwrap();
    let leader = bramble_leader::start(&config).await.unwrap();
    let ca_pem = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let admin_text = std::fs::read_to_string(&out.admin_path).unwrap();
    let admin = bramble_transport::admin::AdminConfig::parse("admin.toml", &admin_text).unwrap();
    Cluster { _dir: dir, leader, ca_pem, admin }
}

impl Cluster {
    fn token(&self, ttl: Duration, created_ms: u64) -> String {
        let (t, _) = tokens::create(&self.leader.api.objects, &self.leader.ca_fingerprint, ttl, created_ms).unwrap();
        t.to_string()
    }

    async fn join(&self, dir: &std::path::Path, token: &str, name: &str) -> Result<join::Credentials, JoinError> {
        join::join(dir, self.leader.local_addr, token, name, node_info(&AgentConfig::default())).await
    }

    fn join_refusals(&self, name: &str) -> Vec<String> {
        self.leader
            .api
            .events
            .about(&bramble_proto::model::ObjectRef::node(name))
            .into_iter()
            .filter(|e| e.reason == bramble_proto::model::EventReason::JoinRefused)
            .map(|e| e.message)
            .collect()
    }

    /// A call with the given identity (certificate and key PEM), or none.
    async fn call_as(&self, identity: Option<(&str, &str)>, request: Request) -> Result<Response, String> {
        let tls = client_config(&self.ca_pem, identity).unwrap();
        let addr = self.leader.local_addr;
        let endpoint = client_endpoint(addr).unwrap();
        let conn = connect(&endpoint, addr, tls, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
        call(&conn, request, Duration::from_secs(5)).await.map_err(|e| e.to_string())
    }
}

#[tokio::test]
async fn a_node_joins_once_and_then_uses_its_certificate() {
    let c = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let token = c.token(Duration::from_secs(3600), now_ms());
    let creds = c.join(dir.path(), &token, "pi-1").await.unwrap();
    for f in ["ca.crt", "node.crt", "node.key"] {
        assert!(dir.path().join(f).exists(), "{f} stored");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.path().join("node.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let loaded = join::load(dir.path(), "pi-1").unwrap().unwrap();
    assert_eq!(loaded.cert_pem, creds.cert_pem);
    assert!(matches!(join::load(dir.path(), "pi-2"), Err(JoinError::NameMismatch { .. })));
    // The node exists on the leader.
    let r = c.call_as(Some((&c.admin.cert, &c.admin.key)), Request::GetNode { name: "pi-1".into() }).await.unwrap();
    assert!(matches!(r, Response::Node { .. }), "{r:?}");
    // A node certificate is no user: it may not even read.
    let r = c.call_as(Some((&creds.cert_pem, &creds.key_pem)), Request::GetNodes).await.unwrap();
    match r {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::PermissionDenied);
            assert!(e.message.contains("node:pi-1 may not make client requests"), "{}", e.message);
        }
        r => panic!("expected a refusal, got {r:?}"),
    }
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_on_both_sides() {
    let c = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let good: bramble_proto::token::JoinToken = c.token(Duration::from_secs(3600), now_ms()).parse().unwrap();
    let wrong = bramble_proto::token::JoinToken { secret: "0".repeat(32), ..good };
    let e = c.join(dir.path(), &wrong.to_string(), "pi-1").await.unwrap_err();
    assert!(matches!(&e, JoinError::Refused(m) if m.contains("wrong secret for token")), "{e}");
    assert!(!dir.path().join("node.crt").exists(), "nothing stored after a refusal");
    assert_eq!(c.join_refusals("pi-1").len(), 1, "the leader recorded the refusal");
    assert!(c.join_refusals("pi-1")[0].contains("wrong secret"));
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let c = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let token = c.token(Duration::from_secs(60), now_ms() - 3_600_000);
    let e = c.join(dir.path(), &token, "pi-1").await.unwrap_err();
    assert!(e.to_string().contains("expired 59m ago"), "{e}");
    assert!(c.join_refusals("pi-1")[0].contains("expired"));
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_single_use_token_lets_one_board_in_and_a_revoked_one_none() {
    let c = cluster().await;
    let admin = Some((c.admin.cert.as_str(), c.admin.key.as_str()));
    let create = |single_use| Request::CreateToken { ttl_secs: 3600, single_use };
    let Response::Token { token: once, .. } = c.call_as(admin, create(true)).await.unwrap() else { panic!() };
    let Response::Token { token: revoked, .. } = c.call_as(admin, create(false)).await.unwrap() else { panic!() };
    let Response::Tokens(list) = c.call_as(admin, Request::GetTokens).await.unwrap() else { panic!() };
    let mut kinds: Vec<bool> = list.iter().map(|t| t.single_use).collect();
    kinds.sort();
    assert_eq!(kinds, [false, true], "two tokens, one of them single-use: {list:?}");
    let (d1, d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    c.join(d1.path(), &once, "pi-1").await.unwrap();
    let e = c.join(d2.path(), &once, "pi-2").await.unwrap_err();
    assert!(e.to_string().contains("is not known to this leader"), "used up: {e}");
    let id = revoked.split("::").nth(1).unwrap().split('.').next().unwrap().to_string();
    let r = c.call_as(admin, Request::RevokeToken { id: id.clone() }).await.unwrap();
    assert_eq!(r, Response::Done(format!("token {id} revoked")));
    let e = c.join(d3.path(), &revoked, "pi-3").await.unwrap_err();
    assert!(e.to_string().contains("is not known to this leader"), "revoked: {e}");
    let Response::Tokens(list) = c.call_as(admin, Request::GetTokens).await.unwrap() else { panic!() };
    assert!(list.is_empty(), "both gone: {list:?}");
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_leader_whose_ca_does_not_match_the_pin_is_not_trusted() {
    let c = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let good: bramble_proto::token::JoinToken = c.token(Duration::from_secs(3600), now_ms()).parse().unwrap();
    // A token for another cluster: the agent must refuse this leader before sending anything.
    let other =
        bramble_proto::token::JoinToken { ca_fingerprint: Ca::generate("other").unwrap().fingerprint(), ..good };
    let e = c.join(dir.path(), &other.to_string(), "pi-1").await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("the leader's CA does not match the join token"), "{text}");
    assert!(c.join_refusals("pi-1").is_empty(), "the token never reached the leader");
    assert!(!dir.path().join("node.crt").exists());
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_client_without_a_certificate_may_only_join() {
    let c = cluster().await;
    for request in [
        Request::GetNodes,
        Request::CreateToken { ttl_secs: 3600, single_use: false },
        Request::SetCordon { name: "x".into(), cordoned: true },
    ] {
        match c.call_as(None, request).await.unwrap() {
            Response::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unauthenticated);
                assert!(
                    e.message.contains("client certificate signed by this cluster's CA is required"),
                    "{}",
                    e.message
                );
            }
            r => panic!("expected a refusal, got {r:?}"),
        }
    }
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let c = cluster().await;
    let other = Ca::generate("other").unwrap().issue_admin("mallory").unwrap();
    let e = c.call_as(Some((&other.cert_pem, &other.key_pem)), Request::GetNodes).await.unwrap_err();
    assert!(e.contains("the peer rejected the TLS handshake: certificate from an unknown CA"), "{e}");
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_second_board_cannot_take_an_existing_name() {
    let c = cluster().await;
    let token = c.token(Duration::from_secs(3600), now_ms());
    let first = tempfile::tempdir().unwrap();
    c.join(first.path(), &token, "pi-1").await.unwrap();
    let second = tempfile::tempdir().unwrap();
    let e = c.join(second.path(), &token, "pi-1").await.unwrap_err();
    assert!(e.to_string().contains("node name \"pi-1\" already belongs to another board"), "{e}");
    assert!(c.join_refusals("pi-1")[0].contains("already belongs to another board"));
    // Requests with a CSR for a name that is not a DNS name are refused too.
    let (csr, _) = node_csr("x").unwrap();
    let info = node_info(&AgentConfig::default());
    let r = c
        .call_as(None, Request::Join { token, node_name: "Bad_Name".into(), csr_pem: csr, info: Box::new(info) })
        .await
        .unwrap();
    assert!(
        matches!(r, Response::Error(e) if e.code == ErrorCode::InvalidArgument && e.message.contains("invalid name"))
    );
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_client_speaking_another_protocol_version_is_told_so() {
    use bramble_proto::wire::{Open, OpenKind};
    use bramble_transport::quic::{read_frame, write_frame};
    let c = cluster().await;
    let tls = client_config(&c.ca_pem, Some((&c.admin.cert, &c.admin.key))).unwrap();
    let endpoint = client_endpoint(c.leader.local_addr).unwrap();
    let conn = connect(&endpoint, c.leader.local_addr, tls, Duration::from_secs(5)).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, &Open { version: 99, kind: OpenKind::Call(Request::GetNodes) }).await.unwrap();
    send.finish().unwrap();
    match read_frame::<Response>(&mut recv, 1 << 20).await.unwrap().unwrap() {
        Response::Error(e) => {
            assert_eq!((e.code, e.message.contains("version 99 is not supported")), (ErrorCode::VersionMismatch, true))
        }
        r => panic!("{r:?}"),
    }
    // Garbage instead of a frame: the stream is reset, the leader keeps serving.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 4, b'{', b'{', b'{', b'{']).await.unwrap();
    send.finish().unwrap();
    assert!(read_frame::<Response>(&mut recv, 1 << 20).await.is_err());
    let r = c.call_as(Some((&c.admin.cert, &c.admin.key)), Request::GetNodes).await.unwrap();
    assert!(matches!(r, Response::Nodes(_)));
    c.leader.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn an_expired_node_certificate_is_refused_by_the_leader_itself() {
    let c = cluster().await;
    let ca = Ca::load(&c.ca_pem, &std::fs::read_to_string(c._dir.path().join("leader/pki/ca.key")).unwrap()).unwrap();
    let (csr, key) = node_csr("pi-1").unwrap();
    let (cert, _) = ca.sign_node_csr_for(&csr, "pi-1", Duration::from_secs(1)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = c.call_as(Some((&cert, &key)), Request::GetNodes).await;
    let e = refused.expect_err("an expired certificate gets no answer");
    assert!(e.to_lowercase().contains("expired"), "{e}");
    c.leader.shutdown(Duration::from_secs(2)).await;
}

/// Issue 27: before a peer shows a certificate, only a small opening frame is read (a join); a
/// flood of refused joins is one event a minute with a count, not one event (and log line) each.
#[tokio::test]
async fn strangers_get_a_small_frame_and_a_flood_of_bad_joins_one_event() {
    use bramble_proto::wire::{Open, OpenKind};
    use bramble_transport::quic::{read_frame, write_frame};
    let c = cluster().await;
    let tls = client_config(&c.ca_pem, None).unwrap();
    let endpoint = client_endpoint(c.leader.local_addr).unwrap();
    let conn = connect(&endpoint, c.leader.local_addr, tls, Duration::from_secs(5)).await.unwrap();
    // A join whose token is 1 MiB: over the 64 KiB a stranger may send; the stream is reset.
    let big = Request::Join {
        token: "x".repeat(1 << 20),
        node_name: "pi-9".into(),
        csr_pem: String::new(),
        info: Box::new(node_info(&AgentConfig::default())),
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = write_frame(&mut send, &Open { version: bramble_proto::wire::PROTOCOL_VERSION, kind: OpenKind::Call(big) })
        .await;
    let _ = send.finish();
    assert!(read_frame::<Response>(&mut recv, 1 << 20).await.is_err(), "no answer to an oversized frame");
    assert!(c.join_refusals("pi-9").is_empty(), "not even decoded");
    // Fifty joins with a wrong token: one event, the rest counted.
    let good: bramble_proto::token::JoinToken = c.token(Duration::from_secs(3600), now_ms()).parse().unwrap();
    let wrong = bramble_proto::token::JoinToken { secret: "0".repeat(32), ..good }.to_string();
    for _ in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        assert!(c.join(dir.path(), &wrong, "pi-8").await.is_err());
    }
    assert_eq!(c.join_refusals("pi-8").len(), 1, "{:?}", c.join_refusals("pi-8"));
    // The leader still serves.
    let r = c.call_as(Some((&c.admin.cert, &c.admin.key)), Request::GetNodes).await.unwrap();
    assert!(matches!(r, Response::Nodes(_)));
    c.leader.shutdown(Duration::from_secs(2)).await;
}
