//! Hashing: file hashes, the artifact content hash and the artifact key.

use std::collections::BTreeMap;
use std::path::Path;

use crate::manifest::FileEntry;
use crate::{IoContext, Result, STORE_FORMAT};

/// The block [`hash_file`] reads at a time.
const HASH_BLOCK: usize = 16 << 20;

/// blake3 of a file's bytes, as lower-case hex, and its size. The file is read in 16 MiB
/// blocks, each hashed on all cores, so memory stays at one block whatever the file's size (a
/// memory map would hold every page of the file in the process's resident set while hashing).
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).at(path)?;
    let mut buf = vec![0u8; HASH_BLOCK];
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).at(path),
        };
        hasher.update_rayon(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// The content hash of an artifact: blake3 over its sorted file list (path, size, file hash).
/// The manifest itself is not part of it, so two runs that write the same bytes agree.
pub fn content_hash(files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"ft-artifact-content/v1\n");
    for f in sorted {
        hasher.update(f.path.as_bytes());
        hasher.update(b"\0");
        hasher.update(f.size.to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(f.blake3.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

/// Canonical JSON text of a value: object keys sorted (serde_json's default map is ordered), no
/// whitespace, floats in their shortest round-trip form. Parameters go through their typed struct
/// before this, so `2e-5`, `0.00002` and `2.0e-5` all give the same text.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // `Value`'s maps are BTreeMaps (no `preserve_order` feature anywhere in the workspace), so
    // serializing sorts keys recursively.
    serde_json::to_string(value).unwrap_or_default()
}

/// The key of an artifact: blake3 over the store format, stage name, code version, toolchain
/// (dependency versions and run-time facts such as the libtorch loaded), canonical parameters
/// and the content hashes of the inputs (by input name), as 32 hex digits.
pub fn compute_key(
    stage: &str,
    code_version: &str,
    toolchain: &BTreeMap<String, String>,
    params: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
) -> String {
    let doc = serde_json::json!({
        "format": STORE_FORMAT,
        "stage": stage,
        "code_version": code_version,
        "toolchain": toolchain,
        "params": params,
        "inputs": inputs,
    });
    let text = canonical_json(&doc);
    let hash = blake3::hash(text.as_bytes()).to_hex();
    hash[..32].to_string()
}

/// The first 8 hex digits of a key or hash, for people.
pub fn short(key: &str) -> &str {
    &key[..key.len().min(8)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_ignores_key_order_and_changes_with_every_part() {
        let inputs: BTreeMap<String, String> = [("download".to_string(), "abc".to_string())].into();
        let tc: BTreeMap<String, String> = [("tokenizers".to_string(), "0.22.1".to_string())].into();
        let p = json!({"a": 1, "b": {"y": 2.5, "x": 1e-5}});
        let a = compute_key("tokenize", "1-x", &tc, &p, &inputs);
        let b = compute_key("tokenize", "1-x", &tc, &json!({"b": {"x": 0.00001, "y": 2.5}, "a": 1}), &inputs);
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert_ne!(a, compute_key("train", "1-x", &tc, &p, &inputs));
        assert_ne!(a, compute_key("tokenize", "1-y", &tc, &p, &inputs));
        assert_ne!(a, compute_key("tokenize", "1-x", &tc, &json!({"a": 2, "b": {"y": 2.5, "x": 1e-5}}), &inputs));
        let other: BTreeMap<String, String> = [("download".to_string(), "abd".to_string())].into();
        assert_ne!(a, compute_key("tokenize", "1-x", &tc, &p, &other));
        // A recorded dependency's version, or the libtorch loaded, changes the key.
        let bumped: BTreeMap<String, String> = [("tokenizers".to_string(), "0.22.2".to_string())].into();
        assert_ne!(a, compute_key("tokenize", "1-x", &bumped, &p, &inputs));
        let mut torch = tc.clone();
        torch.insert("libtorch".into(), "2.11.0+cpu".into());
        assert_ne!(a, compute_key("tokenize", "1-x", &torch, &p, &inputs));
    }

    /// Files larger than a block hash as blake3 hashes their bytes in one piece.
    #[test]
    fn files_hash_as_their_bytes_do() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, 1024, HASH_BLOCK, 2 * HASH_BLOCK + 12_345] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &bytes).unwrap();
            assert_eq!(hash_file(&p).unwrap(), (len as u64, blake3::hash(&bytes).to_hex().to_string()), "{len} bytes");
        }
    }

    #[test]
    fn content_hash_is_order_free_and_sensitive() {
        let f = |p: &str, h: &str| FileEntry { path: p.into(), size: 3, blake3: h.into() };
        let a = content_hash(&[f("a", "1"), f("b", "2")]);
        assert_eq!(a, content_hash(&[f("b", "2"), f("a", "1")]));
        assert_ne!(a, content_hash(&[f("a", "1"), f("b", "3")]));
        assert_ne!(a, content_hash(&[f("a", "1"), f("c", "2")]));
    }
}
