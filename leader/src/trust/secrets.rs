//! Secrets at rest. A secret's values are sealed together with ChaCha20-Poly1305 (ring's AEAD)
//! under the cluster's secrets key, with the secret's name as associated data (a sealed value
//! copied to another name does not open). The key lives in the leader's data dir
//! (`secrets.key`, 0600), never in the store; each sealed value names the key it was sealed with,
//! so `bramble-leader secrets rotate-key` can re-seal everything under a new key.
//!
//! `secrets.key` holds one key a line, `<id> <64 hex digits>`; the first is the current one.

use bramble_proto::model::ObjectMeta;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most a secret may hold, all values together.
pub const MAX_SECRET_BYTES: usize = 512 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read or write the secrets key {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the secrets key {path} is malformed at line {line}: expected `<id> <64 hex digits>`")]
    Malformed { path: PathBuf, line: usize },
    #[error("secret {name} was sealed with key {key_id}, which {path} does not hold")]
    UnknownKey { name: String, key_id: u32, path: PathBuf },
    #[error("secret {name} does not open with key {key_id}: it was altered, or moved from another name")]
    Tampered { name: String, key_id: u32 },
    #[error("no randomness from the system")]
    Random,
}

/// A secret's values as stored: sealed, with what may be shown (key names and sizes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub meta: ObjectMeta,
    /// 1 when created, +1 with every update.
    pub version: u64,
    pub updated_ms: u64,
    /// Each key's value size in bytes (never the value).
    pub sizes: BTreeMap<String, u64>,
    pub sealed: Sealed,
    /// The apps that may use it (none: any app). Set by admins only (`bramble secret allow`);
    /// apply refuses an app that names a secret it is not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_apps: Option<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret").field("meta", &self.meta).field("sizes", &self.sizes).finish_non_exhaustive()
    }
}

/// Sealed bytes: the key that sealed them, the nonce, the ciphertext with its tag (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub key_id: u32,
    pub nonce: String,
    pub ciphertext: String,
}

/// The secrets keys, the current one first.
pub struct Keyring {
    path: PathBuf,
    keys: Vec<(u32, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("Keyring").field("path", &self.path).field("key_ids", &ids).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn random<const N: usize>() -> Result<[u8; N], SecretsError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| SecretsError::Random)?;
    Ok(b)
}

impl Keyring {
    /// A keyring with one fresh key that lives only in memory (tests, and an API without a data dir).
    pub fn ephemeral() -> Result<Keyring, SecretsError> {
        Ok(Keyring { path: PathBuf::from("<memory>"), keys: vec![(1, random()?)] })
    }

    /// Reads `path`, or creates it with one new key (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Keyring, SecretsError> {
        let io = |source| SecretsError::Io { path: path.to_path_buf(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Keyring { path: path.to_path_buf(), keys: vec![(1, random()?)] };
                ring.save()?;
                Ok(ring)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<Keyring, SecretsError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = || SecretsError::Malformed { path: path.to_path_buf(), line: i + 1 };
            let (id, key) = line.trim().split_once(' ').ok_or_else(bad)?;
            let id: u32 = id.parse().map_err(|_| bad())?;
            let key: [u8; 32] = unhex(key.trim()).and_then(|k| k.try_into().ok()).ok_or_else(bad)?;
            keys.push((id, key));
        }
        if keys.is_empty() {
            return Err(SecretsError::Malformed { path: path.to_path_buf(), line: 1 });
        }
        Ok(Keyring { path: path.to_path_buf(), keys })
    }

    fn save(&self) -> Result<(), SecretsError> {
        let text: String = self.keys.iter().map(|(id, k)| format!("{id} {}\n", hex(k))).collect();
        bramble_proto::fsutil::write_file_atomic(&self.path, text.as_bytes(), 0o600)
            .map_err(|source| SecretsError::Io { path: self.path.clone(), source })
    }

    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    fn key(bytes: &[u8; 32]) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key"))
    }

    /// Seals `values` (as JSON) for secret `name` with the current key.
    pub fn seal(&self, name: &str, values: &BTreeMap<String, Vec<u8>>) -> Result<Sealed, SecretsError> {
        let (id, bytes) = &self.keys[0];
        let nonce: [u8; NONCE_LEN] = random()?;
        let mut data = serde_json::to_vec(values).expect("values serialise");
        Self::key(bytes)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| SecretsError::Tampered { name: name.to_string(), key_id: *id })?;
        Ok(Sealed { key_id: *id, nonce: hex(&nonce), ciphertext: hex(&data) })
    }

    /// Opens what was sealed for secret `name`.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<BTreeMap<String, Vec<u8>>, SecretsError> {
        let tampered = || SecretsError::Tampered { name: name.to_string(), key_id: sealed.key_id };
        let Some((_, bytes)) = self.keys.iter().find(|(id, _)| *id == sealed.key_id) else {
            return Err(SecretsError::UnknownKey {
                name: name.to_string(),
                key_id: sealed.key_id,
                path: self.path.clone(),
            });
        };
        let nonce: [u8; NONCE_LEN] = unhex(&sealed.nonce).and_then(|n| n.try_into().ok()).ok_or_else(tampered)?;
        let mut data = unhex(&sealed.ciphertext).ok_or_else(tampered)?;
        let plain = Self::key(bytes)
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| tampered())?;
        serde_json::from_slice(plain).map_err(|_| tampered())
    }

    /// Adds a new current key and saves the keyring (the old keys stay until [`Keyring::retire`]).
    pub fn add_key(&mut self) -> Result<u32, SecretsError> {
        let id = self.keys.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        self.keys.insert(0, (id, random()?));
        self.save()?;
        Ok(id)
    }

    /// Drops every key but the current one, and saves.
    pub fn retire(&mut self) -> Result<(), SecretsError> {
        self.keys.truncate(1);
        self.save()
    }
}

/// Checks a secret's keys and size: `KEY` are file names (`[A-Za-z0-9._-]`, not `.` or `..`).
pub fn check(name: &str, values: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    if values.is_empty() {
        return Err(format!("secret {name}: no keys (give --from-literal KEY=VALUE or --from-file KEY=PATH)"));
    }
    for k in values.keys() {
        if !bramble_proto::manifest::is_file_key(k) {
            return Err(format!(
                "secret {name}: key {k:?} is not a file name (letters, digits, '.', '_', '-'; not '.' or '..')"
            ));
        }
    }
    let total: usize = values.values().map(Vec::len).sum();
    if total > MAX_SECRET_BYTES {
        return Err(format!(
            "secret {name}: {total} bytes of values; a secret holds at most {MAX_SECRET_BYTES} bytes (512 KiB)"
        ));
    }
    Ok(())
}

// Stored beside the other objects (secrets depend on objects, never the other way).
impl crate::objects::Object for StoredSecret {
    const KIND: &'static str = "secret";
    const PREFIX: &'static str = crate::objects::keys::SECRETS;
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// Re-seals every secret in `objects` under a new key, then forgets the old keys. Crash-safe:
/// the new key is saved (beside the old ones) before anything is re-sealed, and the old ones are
/// dropped only after every secret is. Returns the new key's id and how many secrets were re-sealed.
pub fn rotate(objects: &crate::objects::Objects, keyring: &mut Keyring) -> Result<(u32, usize), String> {
    use crate::objects::Objects;
    use crate::store::Expect;
    let id = keyring.add_key().map_err(|e| e.to_string())?;
    let all = objects.list::<StoredSecret>().map_err(|e| e.to_string())?;
    for v in &all {
        let name = v.value.meta.name.as_str();
        let values = keyring.open(name, &v.value.sealed).map_err(|e| e.to_string())?;
        let mut s = v.value.clone();
        s.sealed = keyring.seal(name, &values).map_err(|e| e.to_string())?;
        objects
            .txn(&[Objects::put_op(&s, Expect::Revision(v.rev))])
            .map_err(|e| format!("secret {name}: {e} (nothing lost: every key is kept; run rotate-key again)"))?;
    }
    keyring.retire().map_err(|e| e.to_string())?;
    Ok((id, all.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([("password".to_string(), b"hunter2".to_vec()), ("user".to_string(), b"app".to_vec())])
    }

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let ring = Keyring::ephemeral().unwrap();
        let sealed = ring.seal("db", &values()).unwrap();
        assert!(!sealed.ciphertext.contains(&hex(b"hunter2")), "the value is not in the clear");
        assert_eq!(ring.open("db", &sealed).unwrap(), values());
        assert!(matches!(ring.open("other", &sealed), Err(SecretsError::Tampered { .. })), "bound to its name");
        let mut bent = sealed.clone();
        bent.ciphertext.replace_range(0..2, if &bent.ciphertext[0..2] == "00" { "01" } else { "00" });
        assert!(matches!(ring.open("db", &bent), Err(SecretsError::Tampered { .. })), "altered bytes refused");
        let other = Keyring::ephemeral().unwrap();
        assert!(matches!(other.open("db", &sealed), Err(SecretsError::Tampered { .. })), "another key's seal");
        assert_ne!(ring.seal("db", &values()).unwrap().nonce, sealed.nonce, "a fresh nonce each time");
    }

    #[test]
    fn the_key_file_is_created_0600_read_back_and_rotated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let mut ring = Keyring::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = ring.seal("db", &values()).unwrap();
        assert_eq!(Keyring::load_or_create(&path).unwrap().open("db", &sealed).unwrap(), values(), "read back");
        assert_eq!(ring.add_key().unwrap(), 2);
        let reread = Keyring::load_or_create(&path).unwrap();
        assert_eq!(reread.ids(), [2, 1]);
        assert_eq!(reread.open("db", &sealed).unwrap(), values(), "old seals open while the old key is kept");
        assert_eq!(reread.seal("db", &values()).unwrap().key_id, 2, "new seals use the new key");
        ring.retire().unwrap();
        let after = Keyring::load_or_create(&path).unwrap();
        assert!(matches!(after.open("db", &sealed), Err(SecretsError::UnknownKey { key_id: 1, .. })));
        std::fs::write(&path, "1 nothex\n").unwrap();
        let e = Keyring::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("malformed at line 1"), "{e}");
    }

    #[test]
    fn rotation_reseals_every_secret_and_drops_the_old_key() {
        use crate::objects::Objects;
        use crate::store::{Expect, MemStore};
        let dir = tempfile::tempdir().unwrap();
        let mut ring = Keyring::load_or_create(&dir.path().join("secrets.key")).unwrap();
        let objects = Objects::new(std::sync::Arc::new(MemStore::new()));
        for name in ["db", "api"] {
            let meta = ObjectMeta { name: name.into(), generation: 1, revision: 0, created_ms: 1, changed_by: None };
            let sealed = ring.seal(name, &values()).unwrap();
            let s =
                StoredSecret { meta, version: 1, updated_ms: 1, sizes: BTreeMap::new(), sealed, allowed_apps: None };
            objects.txn(&[Objects::put_op(&s, Expect::Absent)]).unwrap();
        }
        assert_eq!(rotate(&objects, &mut ring).unwrap(), (2, 2));
        let ring = Keyring::load_or_create(&dir.path().join("secrets.key")).unwrap();
        assert_eq!(ring.ids(), [2], "only the new key is left");
        for v in objects.list::<StoredSecret>().unwrap() {
            assert_eq!(v.value.sealed.key_id, 2);
            assert_eq!(ring.open(&v.value.meta.name, &v.value.sealed).unwrap(), values(), "still readable");
        }
    }

    #[test]
    fn keys_and_sizes_are_checked() {
        assert!(check("db", &values()).is_ok());
        assert!(check("db", &BTreeMap::new()).unwrap_err().contains("no keys"));
        let bad = BTreeMap::from([("../x".to_string(), vec![1])]);
        assert!(check("db", &bad).unwrap_err().contains("not a file name"));
        let big = BTreeMap::from([("k".to_string(), vec![0u8; MAX_SECRET_BYTES + 1])]);
        assert!(check("db", &big).unwrap_err().contains("at most 524288 bytes"));
    }
}
