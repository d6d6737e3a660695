//! Sealing a cluster backup with a passphrase, so a stolen backup reveals nothing. File format:
//! `BRAMBLE-BACKUP 1\n`, a 16-byte salt, the PBKDF2-HMAC-SHA256 iteration count (u32,
//! big-endian), a 12-byte nonce, then the ChaCha20-Poly1305 ciphertext of the snapshot's JSON with
//! the header as associated data: no byte of the file can change unnoticed. The CLI seals and
//! opens; the passphrase never leaves the admin's machine.

use bramble_proto::backup::Snapshot;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;

const MAGIC: &[u8] = b"BRAMBLE-BACKUP 1\n";
const ITERATIONS: u32 = 200_000;
const HEADER: usize = MAGIC.len() + 16 + 4 + 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("not a Bramble backup (it does not start with `BRAMBLE-BACKUP 1`)")]
    NotABackup,
    #[error("the backup is truncated or corrupted, or the passphrase is wrong (the seal does not open)")]
    Sealed,
    #[error("the backup opened but its contents do not decode: {0}")]
    Contents(String),
    #[error("{0}")]
    Other(String),
}

fn key_for(passphrase: &[u8], salt: &[u8], iterations: u32) -> Result<LessSafeKey, SealError> {
    let mut key = [0u8; 32];
    let n = NonZeroU32::new(iterations).ok_or(SealError::Sealed)?;
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, n, salt, passphrase, &mut key);
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| SealError::Other("key".into()))?;
    Ok(LessSafeKey::new(unbound))
}

/// The sealed file for `snapshot`.
pub fn seal(snapshot: &Snapshot, passphrase: &[u8]) -> Result<Vec<u8>, SealError> {
    if passphrase.len() < 8 {
        return Err(SealError::Other("the passphrase is too short: at least 8 bytes".into()));
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt).map_err(|_| SealError::Other("no randomness".into()))?;
    rng.fill(&mut nonce).map_err(|_| SealError::Other("no randomness".into()))?;
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&ITERATIONS.to_be_bytes());
    out.extend_from_slice(&nonce);
    let mut body = serde_json::to_vec(snapshot).map_err(|e| SealError::Contents(e.to_string()))?;
    let key = key_for(passphrase, &salt, ITERATIONS)?;
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(out.clone()), &mut body)
        .map_err(|_| SealError::Other("sealing failed".into()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a sealed backup.
pub fn open(file: &[u8], passphrase: &[u8]) -> Result<Snapshot, SealError> {
    if !file.starts_with(MAGIC) {
        return Err(SealError::NotABackup);
    }
    if file.len() < HEADER + 16 {
        return Err(SealError::Sealed);
    }
    let (header, sealed) = file.split_at(HEADER);
    let salt = &header[MAGIC.len()..MAGIC.len() + 16];
    let iterations = u32::from_be_bytes(header[MAGIC.len() + 16..MAGIC.len() + 20].try_into().expect("4 bytes"));
    if !(1_000..=10_000_000).contains(&iterations) {
        return Err(SealError::Sealed);
    }
    let nonce: [u8; 12] = header[MAGIC.len() + 20..].try_into().expect("12 bytes");
    let key = key_for(passphrase, salt, iterations)?;
    let mut body = sealed.to_vec();
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(header.to_vec()), &mut body)
        .map_err(|_| SealError::Sealed)?;
    serde_json::from_slice(plain).map_err(|e| SealError::Contents(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            created_ms: 1,
            cluster_name: "t".into(),
            ca_fingerprint: "ab".repeat(32),
            revision: 7,
            ca_cert: "CERT".into(),
            ca_key: "-----BEGIN PRIVATE KEY----- the-secret-key-material -----END PRIVATE KEY-----".into(),
            secrets_key: "1 00\n".into(),
            leader_toml: "version = 1\n".into(),
            admin_toml: None,
            objects: [("/apps/web".to_string(), "{}".to_string()), ("/nodes/pi-1".into(), "{}".into())].into(),
        }
    }

    #[test]
    fn a_sealed_backup_opens_only_whole_and_with_its_passphrase() {
        let s = snapshot();
        let file = seal(&s, b"correct horse").unwrap();
        let back = open(&file, b"correct horse").unwrap();
        assert_eq!(
            (back.objects.clone(), back.counts()),
            (s.objects.clone(), [("apps".into(), 1), ("nodes".into(), 1)].into())
        );
        assert!(!file.windows(18).any(|w| w == b"the-secret-key-mat"), "the CA key is not in the clear");
        assert!(matches!(open(&file, b"wrong horse"), Err(SealError::Sealed)));
        assert!(matches!(open(&file[..file.len() - 5], b"correct horse"), Err(SealError::Sealed)));
        let mut flipped = file.clone();
        let i = flipped.len() / 2;
        flipped[i] ^= 1;
        assert!(matches!(open(&flipped, b"correct horse"), Err(SealError::Sealed)));
        let mut header = file.clone();
        header[MAGIC.len() + 3] ^= 1; // the salt: part of the seal's associated data
        assert!(matches!(open(&header, b"correct horse"), Err(SealError::Sealed)));
        assert!(matches!(open(b"hello", b"correct horse"), Err(SealError::NotABackup)));
        assert!(seal(&s, b"short").is_err());
    }
}
