//! The cost of the revocation check on every connection, beside the cost of the connection it
//! guards: a lookup in the in-memory list of revoked certificates (empty, and with 10,000
//! entries) vs a whole mTLS QUIC connect + one call (`get nodes`) to a real leader on loopback,
//! with and without the 10,000 revocations.

use crate::stats::summarize;
use bramble_leader::{init::init, LeaderConfig};
use bramble_proto::wire::{Request, Response};
use bramble_transport::pki::identity_of;
use bramble_transport::quic::{call, client_endpoint, connect};
use bramble_transport::tls::client_config;
use std::time::{Duration, Instant};

const REVOKED: usize = 10_000;

fn lookups(revoked: &bramble_leader::trust::users::Revoked, id: &bramble_transport::Identity, fp: &str) -> f64 {
    let n = 1_000_000;
    let t0 = Instant::now();
    for _ in 0..n {
        assert!(std::hint::black_box(revoked.refusal(id, fp)).is_none());
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

pub fn run(runs: usize) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("leader");
        let out = init(&data, "127.0.0.1:0".parse().expect("addr"), "bench", false, &Default::default()).expect("init");
        let config = LeaderConfig::load(&out.config_path).expect("config");
        let leader = bramble_leader::start(&config).await.expect("leader");
        let admin_text = std::fs::read_to_string(&out.admin_path).expect("admin.toml");
        let admin = bramble_transport::admin::AdminConfig::parse("admin.toml", &admin_text).expect("admin");
        let der = bramble_transport::pki::cert_der_from_pem(&admin.cert).expect("pem");
        let (id, fp) = identity_of(&der).expect("identity");
        let tls = client_config(&admin.ca, Some((&admin.cert, &admin.key))).expect("tls");
        let addr = leader.local_addr;
        let connect_and_call = || async {
            let endpoint = client_endpoint(addr).expect("endpoint");
            let t0 = Instant::now();
            let conn = connect(&endpoint, addr, tls.clone(), Duration::from_secs(5)).await.expect("connect");
            let r = call(&conn, Request::GetNodes, Duration::from_secs(5)).await.expect("call");
            assert!(matches!(r, Response::Nodes(_)), "{r:?}");
            let took = t0.elapsed();
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            took
        };
        let mut empty = Vec::new();
        for _ in 0..runs {
            empty.push(connect_and_call().await);
        }
        let lookup_empty = lookups(&leader.api.revoked, &id, &fp);
        for i in 0..REVOKED {
            leader.api.revoked.insert(&format!("{i:064x}"), &format!("user-{i}"));
        }
        let lookup_full = lookups(&leader.api.revoked, &id, &fp);
        let mut full = Vec::new();
        for _ in 0..runs {
            full.push(connect_and_call().await);
        }
        leader.shutdown(Duration::from_secs(2)).await;
        let (e, f) = (summarize(&empty), summarize(&full));
        println!("revocation check per connection, {runs} connections each:");
        println!("  {:<52} {:>12}", "", "per check");
        println!("  {:<52} {:>9.0} ns", "lookup, nothing revoked", lookup_empty);
        println!("  {:<52} {:>9.0} ns", format!("lookup, {REVOKED} revoked"), lookup_full);
        println!("  {:<52} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
        println!(
            "  {:<52} {:>9.2} {:>9.2} {:>9.2}",
            "mTLS connect + get nodes, nothing revoked", e.min, e.median, e.p95
        );
        println!(
            "  {:<52} {:>9.2} {:>9.2} {:>9.2}",
            format!("mTLS connect + get nodes, {REVOKED} revoked"),
            f.min,
            f.median,
            f.p95
        );
        serde_json::json!({
            "lookup_ns_empty": lookup_empty,
            "lookup_ns_10000": lookup_full,
            "connect_call_empty": e.json(),
            "connect_call_10000": f.json(),
        })
    })
}
