//! Pull + unpack of the busybox test image: `bramble-agent image pull` against `skopeo copy` +
//! `umoci unpack`, alternating run by run against the same local registry; then the peak RSS of
//! each while pulling a 100 MiB layer, gzip and zstd.

use crate::stats::summarize;
use bramble_tests::process::bin_dir;
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layer, busybox_layout, push, Layout, TarBuilder};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent_cfg(dir: &Path, reg: &Registry) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "version = 1\nname = \"bench\"\ndata_dir = \"{}\"\n[[images.registry]]\nhost = \"{}\"\ninsecure = true\n",
            dir.join("agent").display(),
            reg.addr
        ),
    )
    .expect("agent.toml");
    p
}

/// Runs a command to completion; returns its wall time and peak RSS (KiB), polled from /proc.
fn measure(cmd: &mut Command) -> (Duration, u64) {
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut peak = 0;
    while child.try_wait().expect("wait").is_none() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(v) =
                s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
            {
                peak = peak.max(v);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = t.elapsed();
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    (took, peak)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bramble_pull(cfg: &Path, dir: &Path, reference: &str) -> (Duration, u64) {
    let _ = std::fs::remove_dir_all(dir.join("agent"));
    measure(
        Command::new(bin_dir().join("bramble-agent")).args(["image", "--config"]).arg(cfg).args(["pull", reference]),
    )
}

fn peer_pull(dir: &Path, reference: &str) -> (Duration, u64, u64) {
    let layout = dir.join("peer-layout");
    let bundle = dir.join("peer-bundle");
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_dir_all(&bundle);
    let (copy, copy_rss) = measure(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:x", layout.display())),
    );
    let (unpack, unpack_rss) =
        measure(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:x", layout.display())).arg(&bundle));
    (copy + unpack, copy_rss, unpack_rss)
}

/// The peer for zstd layers: umoci 0.4.7 cannot read them, so `skopeo copy`, then each layer
/// through the reference decoder (`zstd -dc`, C) into GNU tar.
fn peer_pull_zstd(dir: &Path, reference: &str) -> (Duration, u64, u64) {
    let layout = dir.join("peer-layout");
    let bundle = dir.join("peer-bundle");
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    let (copy, copy_rss) = measure(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:x", layout.display())),
    );
    let json =
        |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json") };
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().expect("digest")));
    let (mut unpack, mut unpack_rss) = (Duration::ZERO, 0);
    for layer in manifest["layers"].as_array().expect("layers") {
        let media = layer["mediaType"].as_str().unwrap_or("");
        let decode = if media.ends_with("+zstd") { "zstd -dc" } else { "gzip -dc" };
        let (t, rss) = measure(Command::new("sh").arg("-c").arg(format!(
            "{decode} {} | tar -x -C {}",
            blob(layer["digest"].as_str().expect("digest")).display(),
            bundle.display()
        )));
        unpack += t;
        unpack_rss = unpack_rss.max(rss);
    }
    (copy + unpack, copy_rss, unpack_rss)
}

pub fn run(runs: usize) -> serde_json::Value {
    for tool in ["skopeo", "umoci", "zstd"] {
        let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(ok, "the peer needs {tool}: apt-get install {tool}");
    }
    let reg = Registry::start(None, None);
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "1.35");
    let small = format!("{}/bramble/busybox:1.35", reg.addr);
    push(&layout, "1.35", &small);
    let cfg = agent_cfg(dir.path(), &reg);

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(bramble_pull(&cfg, dir.path(), &small).0);
        theirs.push(peer_pull(dir.path(), &small).0);
    }
    let (o, t) = (summarize(&ours), summarize(&theirs));
    println!("pull + unpack of busybox (1 layer, ~1 MiB compressed), {runs} runs each, alternating:");
    println!("  {:<36} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!("  {:<36} {:>9.1} {:>9.1} {:>9.1}", "bramble-agent image pull", o.min, o.median, o.p95);
    println!("  {:<36} {:>9.1} {:>9.1} {:>9.1}", "skopeo copy + umoci unpack", t.min, t.median, t.p95);
    println!("  ratio of medians (bramble / peer): {:.2}", o.median / t.median);

    // One 100 MiB layer of incompressible bytes.
    let big_layout = dir.path().join("big");
    let l = Layout::new(&big_layout);
    let noise = bramble_tests::testimages::noise(0x9E3779B97F4A7C15, 100 << 20);
    let big_layer = TarBuilder::default().file("noise", 0o644, &noise).finish();
    drop(noise);
    let m = l.image("amd64", None, &[busybox_layer("amd64"), big_layer], &["sh"]);
    l.finish("big", vec![m], false);
    let big = format!("{}/bramble/big:1", reg.addr);
    push(&big_layout, "big", &big);
    // Alternating, a few times each (one pull moves by a fifth between runs here): medians, and
    // the highest peak.
    let reps = (runs / 2).clamp(1, 5);
    let (mut bts, mut pts, mut brss, mut copy_rss, mut unpack_rss) = (Vec::new(), Vec::new(), 0, 0, 0);
    for _ in 0..reps {
        let (t, r) = bramble_pull(&cfg, dir.path(), &big);
        let (p, c, u) = peer_pull(dir.path(), &big);
        (brss, copy_rss, unpack_rss) = (brss.max(r), copy_rss.max(c), unpack_rss.max(u));
        bts.push(t);
        pts.push(p);
    }
    let (bt, pt) = (median(&mut bts), median(&mut pts));
    println!(
        "pull + unpack of a 100 MiB layer (median of {reps} each, alternating; ratio {:.2}):",
        bt.as_secs_f64() / pt.as_secs_f64()
    );
    println!("  bramble-agent image pull      {:>8.0} ms, peak RSS {:>7} KiB", bt.as_secs_f64() * 1e3, brss);
    println!(
        "  skopeo copy + umoci unpack    {:>8.0} ms, peak RSS {:>7} KiB (skopeo) / {} KiB (umoci)",
        pt.as_secs_f64() * 1e3,
        copy_rss,
        unpack_rss
    );

    // The same with zstd: 100 MiB of 16-letter text (4 bits of entropy a byte: zstd halves it and
    // its literal decoding does real work), recompressed to zstd by skopeo on its way in.
    let text_layout = dir.path().join("text");
    let l = Layout::new(&text_layout);
    // (Each byte of the noise to one of 16 letters.)
    let text: Vec<u8> =
        bramble_tests::testimages::noise(0x2545F4914F6CDD1D, 100 << 20).into_iter().map(|b| b'a' + b % 16).collect();
    let text_layer = TarBuilder::default().file("text", 0o644, &text).finish();
    drop(text);
    let m = l.image("amd64", None, &[busybox_layer("amd64"), text_layer], &["sh"]);
    l.finish("text", vec![m], false);
    let zst = format!("{}/bramble/text-zstd:1", reg.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-compress", "--dest-compress-format", "zstd"])
        .arg(format!("oci:{}:text", text_layout.display()))
        .arg(format!("docker://{zst}"))
        .output()
        .expect("skopeo");
    assert!(out.status.success(), "skopeo copy (zstd): {}", String::from_utf8_lossy(&out.stderr));
    let (zt, zrss) = bramble_pull(&cfg, dir.path(), &zst);
    let (zpt, zcopy_rss, zunpack_rss) = peer_pull_zstd(dir.path(), &zst);
    println!("pull + unpack of a 100 MiB zstd layer (text, ~50 MiB compressed):");
    println!("  bramble-agent image pull      {:>8.0} ms, peak RSS {:>7} KiB", zt.as_secs_f64() * 1e3, zrss);
    println!(
        "  skopeo copy + zstd -dc | tar x {:>7.0} ms, peak RSS {:>7} KiB (skopeo) / {} KiB (zstd)",
        zpt.as_secs_f64() * 1e3,
        zcopy_rss,
        zunpack_rss
    );
    serde_json::json!({
        "busybox": { "bramble": o.json(), "skopeo_umoci": t.json(), "ratio_median": o.median / t.median },
        "zstd_layer_100mib": {
            "bramble": { "ms": zt.as_secs_f64() * 1e3, "peak_rss_kib": zrss },
            "skopeo_zstd_tar": { "ms": zpt.as_secs_f64() * 1e3, "peak_rss_kib_skopeo": zcopy_rss, "peak_rss_kib_zstd": zunpack_rss },
        },
        "layer_100mib": {
            "bramble": { "ms": bt.as_secs_f64() * 1e3, "peak_rss_kib": brss },
            "skopeo_umoci": { "ms": pt.as_secs_f64() * 1e3, "peak_rss_kib_skopeo": copy_rss, "peak_rss_kib_umoci": unpack_rss },
        },
    })
}
