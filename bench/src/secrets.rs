//! Secret update → the new value in the running container's file, on a real board (a leader and
//! an agent in network namespaces, a real container): the time from `bramble secret update`
//! until the file under the replica's tmpfs (what the container sees through its bind mount)
//! holds the new value. Kubernetes documents up to the kubelet sync period (1 min by default)
//! plus its cache's delay for the same; that is published, not measured here.

use crate::apps::{replicas, setup, wait};
use crate::stats::summarize;
use bramble_proto::model::ReplicaPhase;
use std::time::{Duration, Instant};

pub fn run(runs: usize) -> serde_json::Value {
    assert!(nix::unistd::geteuid().is_root(), "the secrets benchmark needs root (namespaces, containers)");
    let (c, _registry, image) = setup(1, "");
    assert!(c.cli(&["secret", "create", "db", "--from-literal", "password=0"]).status.success());
    let path = c.dir.path().join("reader.toml");
    let text = format!(
        "[[app]]\nname = \"reader\"\nimage = \"{image}\"\nsecrets = [\"db\"]\n\
         command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
    );
    std::fs::write(&path, text).expect("manifest");
    assert!(c.cli(&["apply", "-f", path.to_str().expect("utf-8")]).status.success());
    let r = wait("the reader running", Duration::from_secs(60), || {
        replicas(&c, "reader").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    let file = c.agent_dir(1).join("secrets").join(&r.meta.name).join("db/password");
    let mut samples = Vec::new();
    for run in 1..=runs {
        let value = format!("v{run}");
        let t0 = Instant::now();
        let out = c.cli(&["secret", "update", "db", "--from-literal", &format!("password={value}")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait("the new value in the file", Duration::from_secs(30), || {
            (std::fs::read(&file).ok()? == value.as_bytes()).then_some(())
        });
        samples.push(t0.elapsed());
    }
    let s = summarize(&samples);
    println!("secret update -> new file in the running container (CLI call included), {runs} runs:");
    println!("  {:<44} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!("  {:<44} {:>9.0} {:>9.0} {:>9.0}", "bramble", s.min, s.median, s.p95);
    println!("  Kubernetes (documented): up to the kubelet sync period (60 s by default) + cache delay");
    serde_json::json!({ "update_to_file": s.json() })
}
