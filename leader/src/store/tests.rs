use super::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("store.redb")).unwrap()
}

/// Runs a conformance case against every backend: redb in a temporary directory, and memory.
fn each_store(case: impl Fn(&dyn Store)) {
    let dir = tempfile::tempdir().unwrap();
    case(&open(&dir));
    case(&MemStore::new());
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

#[tokio::test]
async fn conformance_watch_replays_history_then_follows_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    watch_replays_history_then_follows_live_changes(&open(&dir)).await;
    watch_replays_history_then_follows_live_changes(&MemStore::new()).await;
}

#[test]
fn redb_keeps_everything_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    put_get_list_delete_with_revisions(&open(&dir));
    let s = open(&dir);
    assert_eq!(s.revision(), 5, "the revision survives a reopen");
    assert_eq!(s.get("/nodes/a").unwrap().unwrap().value, b"1b");
}

fn put_get_list_delete_with_revisions(s: &dyn Store) {
    assert_eq!(s.revision(), 0);
    let r1 = s.put("/nodes/a", b"1", Expect::Absent).unwrap();
    let r2 = s.put("/nodes/b", b"2", Expect::Any).unwrap();
    s.put("/tokens/x", b"t", Expect::Any).unwrap();
    assert_eq!((r1, r2), (1, 2));
    let a = s.get("/nodes/a").unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision), (&b"1"[..], 1, 1));
    let keys: Vec<_> = s.list("/nodes/").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/nodes/a", "/nodes/b"]);
    let r4 = s.put("/nodes/a", b"1b", Expect::Revision(1)).unwrap();
    let a = s.get("/nodes/a").unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (1, r4));
    s.delete("/nodes/b", Expect::Revision(2)).unwrap();
    assert!(s.get("/nodes/b").unwrap().is_none());
    let keys: Vec<_> = s.list("/").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/nodes/a", "/tokens/x"], "list with a prefix of everything, in key order");
}

fn compare_and_swap_refuses_stale_writes(s: &dyn Store) {
    s.put("/k", b"v1", Expect::Absent).unwrap();
    assert!(matches!(s.put("/k", b"x", Expect::Absent), Err(StoreError::Conflict { found: Some(1), .. })));
    s.put("/k", b"v2", Expect::Revision(1)).unwrap();
    assert!(matches!(s.put("/k", b"x", Expect::Revision(1)), Err(StoreError::Conflict { found: Some(2), .. })));
    assert!(matches!(s.delete("/k", Expect::Revision(1)), Err(StoreError::Conflict { .. })));
    assert!(matches!(s.delete("/missing", Expect::Any), Err(StoreError::Conflict { found: None, .. })));
    assert_eq!(s.get("/k").unwrap().unwrap().value, b"v2", "a refused write changes nothing");
    assert_eq!(s.revision(), 2);
}

fn a_transaction_is_all_or_nothing(s: &dyn Store) {
    s.put("/apps/a", b"1", Expect::Any).unwrap();
    let ops = vec![
        TxnOp::Put { key: "/apps/b".into(), value: b"2".to_vec(), expect: Expect::Absent },
        TxnOp::Put { key: "/apps/a".into(), value: b"x".to_vec(), expect: Expect::Absent },
    ];
    assert!(matches!(s.txn(&ops), Err(StoreError::Conflict { ref key, .. }) if key == "/apps/a"));
    assert!(s.get("/apps/b").unwrap().is_none(), "the first op was not applied either");
    assert_eq!(s.revision(), 1);
    let ops = vec![
        TxnOp::Put { key: "/apps/b".into(), value: b"2".to_vec(), expect: Expect::Absent },
        TxnOp::Put { key: "/apps/a".into(), value: b"1b".to_vec(), expect: Expect::Revision(1) },
        TxnOp::Delete { key: "/apps/a".into(), expect: Expect::Any },
    ];
    assert_eq!(s.txn(&ops).unwrap(), 4);
    assert!(s.get("/apps/a").unwrap().is_none());
    assert_eq!(s.get("/apps/b").unwrap().unwrap().mod_revision, 2);
    // A check writes nothing, and a failing one stops the rest.
    let check = |expect| TxnOp::Check { key: "/apps/b".into(), expect };
    let put = TxnOp::Put { key: "/apps/c".into(), value: b"3".to_vec(), expect: Expect::Absent };
    assert!(matches!(s.txn(&[check(Expect::Revision(1)), put.clone()]), Err(StoreError::Conflict { .. })));
    assert!(s.get("/apps/c").unwrap().is_none());
    assert_eq!(s.txn(&[check(Expect::Revision(2)), put]).unwrap(), 5, "one revision: the put");
}

async fn watch_replays_history_then_follows_live_changes(s: &dyn Store) {
    s.put("/nodes/a", b"1", Expect::Any).unwrap();
    s.put("/other", b"x", Expect::Any).unwrap();
    let mut w = s.watch("/nodes/", 0).unwrap();
    s.put("/nodes/b", b"2", Expect::Any).unwrap();
    s.delete("/nodes/a", Expect::Any).unwrap();
    let got: Vec<_> = [w.next().await.unwrap(), w.next().await.unwrap(), w.next().await.unwrap()]
        .into_iter()
        .map(|e| (e.revision, e.key, e.value))
        .collect();
    assert_eq!(
        got,
        [
            (1, "/nodes/a".to_string(), Some(b"1".to_vec())),
            (3, "/nodes/b".to_string(), Some(b"2".to_vec())),
            (4, "/nodes/a".to_string(), None)
        ]
    );
    // Resuming from a revision only gives what came after it.
    let mut w = s.watch("/nodes/", 3).unwrap();
    assert_eq!(w.next().await.unwrap().revision, 4);
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
