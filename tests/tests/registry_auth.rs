//! Registry authentication and TLS: basic auth and HTTPS against the real registry, the Bearer
//! token dance against a small scripted registry (the real one needs a token server we do not have).

use bramble_images::pull::{PullError, PullPolicy, Puller};
use bramble_images::registry::{RegistryClient, RegistryConfig, RegistryError};
use bramble_images::store::ContentStore;
use bramble_images::unpack::UnpackOptions;
use bramble_images::{ImageRef, Progress};
use bramble_proto::model::Arch;
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layer, busybox_layout, push, Layout};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

fn pull(client: &RegistryClient, store_dir: &Path, reference: &str) -> Result<bramble_images::ImageRecord, PullError> {
    let store = ContentStore::open(store_dir).unwrap();
    let p = Puller { store: &store, client, arch: Arch::Amd64, unpack: UnpackOptions::default(), peers: None };
    p.pull(&reference.parse::<ImageRef>().unwrap(), PullPolicy::Always, &Progress::default())
}

#[test]
fn basic_auth_with_credentials_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "pi", "raspberry"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils; scripts/test does)");
    assert!(out.status.success());
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let reg = Registry::start(Some(&htpasswd), None);
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "1");
    let dest = format!("{}/private/busybox:1", reg.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false", "--dest-creds", "pi:raspberry"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = |user: Option<&str>, pass: Option<&str>| {
        RegistryClient::new(vec![RegistryConfig {
            host: reg.addr.clone(),
            insecure: true,
            username: user.map(str::to_string),
            password: pass.map(str::to_string),
            ..Default::default()
        }])
    };
    let e = pull(&cfg(None, None), &dir.path().join("s1"), &dest).unwrap_err();
    assert!(
        e.to_string().contains(
            "asks for a user name and password; give them in a [[registry]] with a secret (or the agent config)"
        ),
        "{e}"
    );
    let e = pull(&cfg(Some("pi"), Some("wrong")), &dir.path().join("s2"), &dest).unwrap_err();
    assert!(
        matches!(&e, PullError::Registry(RegistryError::Denied { message, .. }) if message.contains("not accepted")),
        "{e}"
    );
    let rec = pull(&cfg(Some("pi"), Some("raspberry")), &dir.path().join("s3"), &dest).unwrap();
    assert_eq!(rec.platform, "linux/amd64");
}

#[test]
fn https_with_a_private_ca_and_a_clear_error_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = bramble_transport::pki::Ca::generate("registry-test").unwrap();
    let server = ca.issue_leader(&["127.0.0.1".to_string()]).unwrap();
    let (cert, key, ca_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"), dir.path().join("ca.crt"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let reg = Registry::start(None, Some((&cert, &key)));
    let layout = dir.path().join("layout");
    busybox_layout(&layout, "1");
    let dest = format!("{}/tls/busybox:1", reg.addr);
    push(&layout, "1", &dest);
    let with_ca = RegistryClient::new(vec![RegistryConfig {
        host: reg.addr.clone(),
        ca_file: Some(ca_file),
        ..Default::default()
    }]);
    let rec = pull(&with_ca, &dir.path().join("s1"), &dest).unwrap();
    assert_eq!(rec.platform, "linux/amd64");
    let public_roots = RegistryClient::new(Vec::new());
    let e = pull(&public_roots, &dir.path().join("s2"), &dest).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("cannot reach registry {}", reg.addr))
            && e.to_string().to_lowercase().contains("certificate"),
        "{e}"
    );
}

/// A registry that insists on a Bearer token, serving an OCI layout; records what it saw.
struct ScriptedRegistry {
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

fn serve(layout: &Path, tag: &str) -> ScriptedRegistry {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (layout, tag, realm, l) = (layout.to_path_buf(), tag.to_string(), format!("http://{addr}/token"), log.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Authorization: ").or_else(|| line.strip_prefix("authorization: ")) {
                    auth = v.trim().to_string();
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            l.lock().unwrap().push(format!("{path} [{auth}]"));
            let (status, headers, body): (&str, String, Vec<u8>) = if path.starts_with("/token") {
                if path.contains("scope=repository%3Abramble%2Fsecret%3Apull") && path.contains("service=scripted") {
                    ("200 OK", "Content-Type: application/json\r\n".into(), br#"{"token":"t0k3n"}"#.to_vec())
                } else {
                    ("400 Bad Request", String::new(), b"bad token request".to_vec())
                }
            } else if auth != "Bearer t0k3n" {
                let challenge = format!("Www-Authenticate: Bearer realm=\"{realm}\",service=\"scripted\",scope=\"repository:bramble/secret:pull\"\r\n");
                (
                    "401 Unauthorized",
                    challenge,
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
                )
            } else if let Some(reference) = path.strip_prefix("/v2/bramble/secret/manifests/") {
                let index: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
                let top = &index["manifests"][0];
                let digest =
                    if reference == tag { top["digest"].as_str().unwrap().to_string() } else { reference.to_string() };
                let bytes = std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:")))
                    .unwrap_or_default();
                let mt = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                    .unwrap_or_default();
                ("200 OK", format!("Content-Type: {mt}\r\n"), bytes)
            } else if let Some(digest) = path.strip_prefix("/v2/bramble/secret/blobs/sha256:") {
                ("200 OK", String::new(), std::fs::read(layout.join("blobs/sha256").join(digest)).unwrap_or_default())
            } else {
                ("404 Not Found", String::new(), Vec::new())
            };
            let head =
                format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    ScriptedRegistry { addr, log }
}

#[test]
fn bearer_tokens_are_fetched_from_the_realm_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let l = Layout::new(&layout);
    let m = l.image("amd64", None, &[busybox_layer("amd64")], &["sh"]);
    l.finish("1", vec![m], false);
    let reg = serve(&layout, "1");
    let client = RegistryClient::new(vec![RegistryConfig {
        host: reg.addr.clone(),
        insecure: true,
        username: Some("pi".into()),
        password: Some("secret".into()),
        ..Default::default()
    }]);
    let rec = pull(&client, &dir.path().join("store"), &format!("{}/bramble/secret:1", reg.addr)).unwrap();
    assert_eq!(rec.layers.len(), 1);
    let log = reg.log.lock().unwrap().clone();
    let tokens: Vec<_> = log.iter().filter(|l| l.starts_with("/token")).collect();
    assert_eq!(tokens.len(), 1, "one token request, then the token is reused: {log:#?}");
    assert!(tokens[0].contains("[Basic cGk6c2VjcmV0]"), "credentials go to the token service: {}", tokens[0]);
    let with_token = log.iter().filter(|l| l.ends_with("[Bearer t0k3n]")).count();
    assert_eq!(with_token, 3, "manifest, config and layer with the token: {log:#?}");
}
