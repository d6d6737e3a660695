use super::local_etcd::LocalEtcd;
use super::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("store.redb")).unwrap()
}

/// A store on a fresh one-member etcd (Debian's `etcd-server`), under a prefix of its own.
fn etcd() -> (LocalEtcd, EtcdStore) {
    let e = LocalEtcd::start(1, "127.0.0.1", None, None);
    let opts = EtcdOptions {
        endpoints: e.endpoints(),
        prefix: "/conformance".into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let s = EtcdStore::open(&opts).expect("open the etcd store");
    (e, s)
}

/// Runs a conformance case against every backend: redb in a temporary directory, memory, and a
/// real etcd.
fn each_store(case: impl Fn(&dyn Store)) {
    let dir = tempfile::tempdir().unwrap();
    case(&open(&dir));
    case(&MemStore::new());
    let (_etcd, s) = etcd();
    case(&s);
}

#[test]
fn conformance_put_get_list_delete_with_revisions() {
    each_store(put_get_list_delete_with_revisions);
}

#[test]
fn conformance_compare_and_swap_refuses_stale_writes() {
    each_store(compare_and_swap_refuses_stale_writes);
}

#[test]
fn conformance_a_transaction_is_all_or_nothing() {
    each_store(a_transaction_is_all_or_nothing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_watch_replays_history_then_follows_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    watch_replays_history_then_follows_live_changes(&open(&dir)).await;
    watch_replays_history_then_follows_live_changes(&MemStore::new()).await;
    let (_etcd, s) = etcd();
    watch_replays_history_then_follows_live_changes(&s).await;
}

#[test]
fn redb_keeps_everything_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    put_get_list_delete_with_revisions(&open(&dir));
    let s = open(&dir);
    assert_eq!(s.revision(), 5, "the revision survives a reopen");
    assert_eq!(s.get("/nodes/a").unwrap().unwrap().value, b"1b");
}

#[test]
fn etcd_store_shares_writes_between_leaders_and_fences_a_stale_one() {
    let e = LocalEtcd::start(1, "127.0.0.1", None, None);
    let opts =
        EtcdOptions { endpoints: e.endpoints(), prefix: "/c".into(), ca_file: None, cert_file: None, key_file: None };
    let a = EtcdStore::open(&opts).unwrap();
    let b = EtcdStore::open(&opts).unwrap();
    let r = a.put("/apps/x", b"1", Expect::Absent).unwrap();
    // The other leader's copy follows by its watch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.get("/apps/x").unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "b never saw a's write");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(b.get("/apps/x").unwrap().unwrap().mod_revision, r);
    // Stale compare from b is refused like any conflict.
    a.put("/apps/x", b"2", Expect::Revision(r)).unwrap();
    assert!(matches!(b.put("/apps/x", b"3", Expect::Revision(r)), Err(StoreError::Conflict { .. })));
    // A fence on a key that is not there (a lease gone): every write refused, nothing written.
    b.set_fence(Some(Fence { key: "/c/leaders/active".into(), create_revision: 7 }));
    assert!(matches!(b.put("/apps/y", b"1", Expect::Any), Err(StoreError::Fenced)));
    assert!(a.get("/apps/y").unwrap().is_none());
    // Reopened, a store reads the whole cluster back.
    drop(a);
    let c = EtcdStore::open(&opts).unwrap();
    assert_eq!(c.get("/apps/x").unwrap().unwrap().value, b"2");
}

#[test]
fn an_etcd_store_reads_its_own_first_write_back_at_once() {
    // The write races the watch's creation; the copy must not claim the write's revision before
    // the write itself arrived (CI caught this once).
    let e = LocalEtcd::start(1, "127.0.0.1", None, None);
    for i in 0..100 {
        let opts = EtcdOptions {
            endpoints: e.endpoints(),
            prefix: format!("/fresh{i}"),
            ca_file: None,
            cert_file: None,
            key_file: None,
        };
        let s = EtcdStore::open(&opts).unwrap();
        s.put("/apps/x", b"1", Expect::Absent).unwrap();
        assert!(s.get("/apps/x").unwrap().is_some(), "round {i}: a write not read back");
    }
}

#[test]
fn etcd_store_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = bramble_transport::pki::Ca::generate("etcd").unwrap();
    let server = ca.issue_leader(&["127.0.0.1".into()]).unwrap();
    let other = bramble_transport::pki::Ca::generate("someone else").unwrap().issue_admin("x").unwrap();
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let tls = super::local_etcd::Tls {
        ca: w("ca.pem", ca.cert_pem()),
        cert: w("server.pem", &server.cert_pem),
        key: w("server.key", &server.key_pem),
    };
    let e = LocalEtcd::start_with(1, "127.0.0.1", None, None, Some(tls.clone()));
    assert!(e.endpoints()[0].starts_with("https://"));
    let mut opts = EtcdOptions {
        endpoints: e.endpoints(),
        prefix: "/tls".into(),
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.cert.clone()),
        key_file: Some(tls.key.clone()),
    };
    let s = EtcdStore::open(&opts).expect("open over TLS");
    s.put("/apps/x", b"1", Expect::Absent).unwrap();
    assert_eq!(s.get("/apps/x").unwrap().unwrap().value, b"1");
    // A client certificate of another CA is refused: the store does not open.
    opts.cert_file = Some(w("other.pem", &other.cert_pem));
    opts.key_file = Some(w("other.key", &other.key_pem));
    let err = EtcdStore::open(&opts).unwrap_err().to_string();
    assert!(err.contains("etcd"), "{err}");
}

/// The shipped dist/etcd/make-certs.sh: its member certificate serves etcd with client
/// certificates required, its leader certificate opens the store, and no certificate is refused.
#[test]
fn the_shipped_etcd_certificates_work_and_etcd_refuses_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/etcd/make-certs.sh");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .arg(dir.path())
        .arg("pi-1=127.0.0.1")
        .output()
        .expect("run make-certs.sh (needs openssl)");
    assert!(out.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&out.stderr));
    let p = |n: &str| dir.path().join(n);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(p("leader.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let tls = super::local_etcd::Tls { ca: p("ca.crt"), cert: p("pi-1.crt"), key: p("pi-1.key") };
    let e = LocalEtcd::start_with(1, "127.0.0.1", None, None, Some(tls));
    let mut opts = EtcdOptions {
        endpoints: e.endpoints(),
        prefix: "/shipped".into(),
        ca_file: Some(p("ca.crt")),
        cert_file: Some(p("leader.crt")),
        key_file: Some(p("leader.key")),
    };
    let s = EtcdStore::open(&opts).expect("the leader's certificate opens the store");
    s.put("/apps/x", b"1", Expect::Absent).unwrap();
    (opts.cert_file, opts.key_file) = (None, None);
    assert!(EtcdStore::open(&opts).is_err(), "without a client certificate etcd refuses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_revisions_taken_by_other_keys_neither_compact_a_watch_nor_stall_a_check() {
    let e = LocalEtcd::start(1, "127.0.0.1", None, None);
    let opts = |prefix: &str| EtcdOptions {
        endpoints: e.endpoints(),
        prefix: prefix.into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let a = EtcdStore::open(&opts("/a")).unwrap();
    let other = EtcdStore::open(&opts("/b")).unwrap();
    let opened = a.revision();
    // Revisions go to keys `a` does not follow (another cluster, the leaders' keys).
    for i in 0..3 {
        other.put(&format!("/x{i}"), b"1", Expect::Any).unwrap();
    }
    let r = a.put("/apps/w", b"1", Expect::Absent).unwrap();
    assert!(r > opened + 1, "etcd revisions are not contiguous for one prefix");
    let mut w = a.watch("/apps/", opened).expect("a watch from the revision the store opened at");
    assert_eq!(w.next().await.unwrap().revision, r);
    // A transaction of checks only returns at once, whatever etcd's revision is.
    other.put("/y", b"1", Expect::Any).unwrap();
    let t = std::time::Instant::now();
    a.txn(&[TxnOp::Check { key: "/apps/w".into(), expect: Expect::Revision(r) }]).unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "a check does not wait for a revision it will never see");
}

fn put_get_list_delete_with_revisions(s: &dyn Store) {
    let b = s.revision();
    let r1 = s.put("/nodes/a", b"1", Expect::Absent).unwrap();
    let r2 = s.put("/nodes/b", b"2", Expect::Any).unwrap();
    s.put("/tokens/x", b"t", Expect::Any).unwrap();
    assert_eq!((r1, r2), (b + 1, b + 2));
    let a = s.get("/nodes/a").unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision), (&b"1"[..], b + 1, b + 1));
    let keys: Vec<_> = s.list("/nodes/").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/nodes/a", "/nodes/b"]);
    let r4 = s.put("/nodes/a", b"1b", Expect::Revision(b + 1)).unwrap();
    let a = s.get("/nodes/a").unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (b + 1, r4));
    s.delete("/nodes/b", Expect::Revision(b + 2)).unwrap();
    assert!(s.get("/nodes/b").unwrap().is_none());
    let keys: Vec<_> = s.list("/").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/nodes/a", "/tokens/x"], "list with a prefix of everything, in key order");
    assert_eq!(s.revision(), b + 5);
}

fn compare_and_swap_refuses_stale_writes(s: &dyn Store) {
    let b = s.revision();
    s.put("/k", b"v1", Expect::Absent).unwrap();
    assert!(
        matches!(s.put("/k", b"x", Expect::Absent), Err(StoreError::Conflict { found: Some(f), .. }) if f == b + 1)
    );
    s.put("/k", b"v2", Expect::Revision(b + 1)).unwrap();
    assert!(
        matches!(s.put("/k", b"x", Expect::Revision(b + 1)), Err(StoreError::Conflict { found: Some(f), .. }) if f == b + 2)
    );
    assert!(matches!(s.delete("/k", Expect::Revision(b + 1)), Err(StoreError::Conflict { .. })));
    assert!(matches!(s.delete("/missing", Expect::Any), Err(StoreError::Conflict { found: None, .. })));
    assert_eq!(s.get("/k").unwrap().unwrap().value, b"v2", "a refused write changes nothing");
    assert_eq!(s.revision(), b + 2);
}

fn a_transaction_is_all_or_nothing(s: &dyn Store) {
    let b = s.revision();
    s.put("/apps/a", b"1", Expect::Any).unwrap();
    let ops = vec![
        TxnOp::Put { key: "/apps/b".into(), value: b"2".to_vec(), expect: Expect::Absent },
        TxnOp::Put { key: "/apps/a".into(), value: b"x".to_vec(), expect: Expect::Absent },
    ];
    assert!(matches!(s.txn(&ops), Err(StoreError::Conflict { ref key, .. }) if key == "/apps/a"));
    assert!(s.get("/apps/b").unwrap().is_none(), "the first op was not applied either");
    assert_eq!(s.revision(), b + 1);
    let ops = vec![
        TxnOp::Put { key: "/apps/b".into(), value: b"2".to_vec(), expect: Expect::Absent },
        TxnOp::Put { key: "/apps/a".into(), value: b"1b".to_vec(), expect: Expect::Revision(b + 1) },
        TxnOp::Delete { key: "/apps/a".into(), expect: Expect::Any },
    ];
    let r = s.txn(&ops).unwrap();
    // Three writes: three revisions on redb, one shared on etcd.
    assert!(r == b + 4 || r == b + 2, "revision after a three-write transaction: {r} (was {b})");
    assert_eq!(s.revision(), r);
    assert!(s.get("/apps/a").unwrap().is_none());
    assert_eq!(s.get("/apps/b").unwrap().unwrap().mod_revision, b + 2);
    // A check writes nothing, and a failing one stops the rest.
    let check = |expect| TxnOp::Check { key: "/apps/b".into(), expect };
    let put = TxnOp::Put { key: "/apps/c".into(), value: b"3".to_vec(), expect: Expect::Absent };
    assert!(matches!(s.txn(&[check(Expect::Revision(b + 1)), put.clone()]), Err(StoreError::Conflict { .. })));
    assert!(s.get("/apps/c").unwrap().is_none());
    assert_eq!(s.txn(&[check(Expect::Revision(b + 2)), put]).unwrap(), r + 1, "one revision: the put");
}

async fn watch_replays_history_then_follows_live_changes(s: &dyn Store) {
    let b = s.revision();
    s.put("/nodes/a", b"1", Expect::Any).unwrap();
    s.put("/other", b"x", Expect::Any).unwrap();
    let mut w = s.watch("/nodes/", b).unwrap();
    s.put("/nodes/b", b"2", Expect::Any).unwrap();
    s.delete("/nodes/a", Expect::Any).unwrap();
    let got: Vec<_> = [w.next().await.unwrap(), w.next().await.unwrap(), w.next().await.unwrap()]
        .into_iter()
        .map(|e| (e.revision, e.key, e.value))
        .collect();
    assert_eq!(
        got,
        [
            (b + 1, "/nodes/a".to_string(), Some(b"1".to_vec())),
            (b + 3, "/nodes/b".to_string(), Some(b"2".to_vec())),
            (b + 4, "/nodes/a".to_string(), None)
        ]
    );
    // Resuming from a revision only gives what came after it.
    let mut w = s.watch("/nodes/", b + 3).unwrap();
    assert_eq!(w.next().await.unwrap().revision, b + 4);
    // The writes of one transaction all reach a watcher, even when they share a revision.
    let ops = [
        TxnOp::Put { key: "/nodes/c".into(), value: b"3".to_vec(), expect: Expect::Absent },
        TxnOp::Put { key: "/nodes/d".into(), value: b"4".to_vec(), expect: Expect::Absent },
    ];
    s.txn(&ops).unwrap();
    let keys = [w.next().await.unwrap().key, w.next().await.unwrap().key];
    assert_eq!(keys, ["/nodes/c", "/nodes/d"]);
}

#[test]
fn watch_from_forgotten_history_says_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.put("/a", b"1", Expect::Any).unwrap();
    drop(s);
    let s = open(&dir); // history is in memory only
    s.put("/a", b"2", Expect::Any).unwrap();
    assert!(matches!(s.watch("/", 0), Err(StoreError::Compacted { requested: 1, oldest: 2 })));
    assert!(s.watch("/", 1).is_ok());
}

const CRASH_DIR: &str = "BRAMBLE_STORE_CRASH_DIR";

/// Not a test on its own: the writer process that `kill_9_loses_no_acknowledged_write` starts
/// and kills. It writes keys as fast as it can and prints each one after `put` returned.
#[test]
fn crash_writer_process() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let s = RedbStore::open(&std::path::Path::new(&dir).join("store.redb")).unwrap();
    let start = s.revision();
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let value = format!("value-{i}-{}", "x".repeat((i % 200) as usize));
        s.put(&format!("/crash/{i:08}"), value.as_bytes(), Expect::Absent).unwrap();
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::crash_writer_process", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill at a different moment each round, while writes are in flight.
        let kill_after = 20 + round * 37 + fastrand::u64(0..40);
        let mut last_acked = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                last_acked = Some(n.parse::<u64>().unwrap());
                if last_acked.unwrap() >= kill_after + round * 100 {
                    break;
                }
            }
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        child.wait().unwrap();
        let last_acked = last_acked.expect("the writer acknowledged writes");
        let s = open(&dir);
        let keys = s.list("/crash/").unwrap();
        assert!(
            keys.len() as u64 > last_acked,
            "round {round}: acked {last_acked} but only {} keys survived",
            keys.len()
        );
        for (i, kv) in keys.iter().enumerate() {
            assert_eq!(kv.key, format!("/crash/{i:08}"), "keys are contiguous");
            assert!(kv.value.starts_with(format!("value-{i}-").as_bytes()), "value of {} is intact", kv.key);
        }
        assert_eq!(s.revision(), keys.len() as u64, "the revision matches the committed writes");
    }
}
