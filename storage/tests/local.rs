//! The checkpoint store on a local directory: complete checkpoints round-trip; damaged ones are
//! detected by their manifest and skipped for the previous one; pruning keeps the newest.

use bytes::Bytes;
use fav_storage::{step_dir, StorageError, Store, DEFAULT_PART_SIZE, MANIFEST};
use std::path::Path;

fn parts(step: u64, big: usize) -> Vec<(String, Bytes)> {
    let model: Vec<u8> = (0..big).map(|i| (i as u64 * 31 + step) as u8).collect();
    vec![
        ("model.safetensors".into(), Bytes::from(model)),
        ("state.json".into(), Bytes::from(format!("{{\"step\":{step}}}"))),
    ]
}

fn store(dir: &Path) -> Store {
    Store::open(dir.to_str().unwrap(), DEFAULT_PART_SIZE).unwrap()
}

#[tokio::test]
async fn checkpoints_round_trip_and_the_latest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.check().await.unwrap();
    assert!(s.latest().await.unwrap().is_none());
    // A part larger than the multipart part size goes up in several parts.
    for step in [10u64, 20, 30] {
        let m = s.write(step, "cfg", parts(step, 20 << 20), serde_json::json!({"world_size": 1})).await.unwrap();
        assert_eq!(m.parts.len(), 2);
    }
    let (m, got) = s.latest().await.unwrap().unwrap();
    assert_eq!(m.step, 30);
    assert_eq!(got["model.safetensors"], parts(30, 20 << 20)[0].1);
    assert_eq!(&got["state.json"][..], b"{\"step\":30}");
    assert_eq!(s.steps().await.unwrap(), vec![30, 20, 10]);
}

#[tokio::test]
async fn damaged_checkpoints_fall_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(1, "cfg", parts(1, 1000), serde_json::Value::Null).await.unwrap();
    s.write(2, "cfg", parts(2, 1000), serde_json::Value::Null).await.unwrap();
    // Corrupt a byte of step 2's model: detected by the checksum.
    let key = |step: u64| s.read_manifest(step);
    let model = dir.path().join(step_dir(2)).join(&key(2).await.unwrap().parts[0].key);
    let mut b = std::fs::read(&model).unwrap();
    b[10] ^= 0xff;
    std::fs::write(&model, &b).unwrap();
    assert!(matches!(s.read(2).await, Err(StorageError::Corrupt { .. })));
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 1);
    // Truncated part: detected by the size.
    s.write(3, "cfg", parts(3, 1000), serde_json::Value::Null).await.unwrap();
    let model = dir.path().join(step_dir(3)).join(&key(3).await.unwrap().parts[0].key);
    std::fs::write(&model, &std::fs::read(&model).unwrap()[..500]).unwrap();
    let e = s.read(3).await.unwrap_err().to_string();
    assert!(e.contains("500 bytes"), "{e}");
    // Garbled manifest; and a folder without one (an interrupted save).
    s.write(4, "cfg", parts(4, 1000), serde_json::Value::Null).await.unwrap();
    std::fs::write(dir.path().join(step_dir(4)).join(MANIFEST), b"{ not json").unwrap();
    std::fs::create_dir_all(dir.path().join(step_dir(5))).unwrap();
    std::fs::write(dir.path().join(step_dir(5)).join("model.safetensors"), b"partial").unwrap();
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 1);
}

#[tokio::test]
async fn a_saved_manifest_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let first = s.write(7, "cfg-a", parts(7, 100), serde_json::Value::Null).await.unwrap();
    let again = s.write(7, "cfg-b", parts(8, 10), serde_json::Value::Null).await.unwrap();
    assert_eq!(again, first, "the first manifest is kept");
    // …and its parts are untouched.
    assert_eq!(s.read(7).await.unwrap().1["model.safetensors"], parts(7, 100)[0].1);
}

#[tokio::test]
async fn pruning_keeps_the_newest_complete_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    for step in 1..=5u64 {
        s.write(step, "cfg", parts(step, 100), serde_json::Value::Null).await.unwrap();
    }
    // An incomplete newer folder (an upload in progress) is left alone.
    std::fs::create_dir_all(dir.path().join(step_dir(6))).unwrap();
    std::fs::write(dir.path().join(step_dir(6)).join("model.safetensors"), b"partial").unwrap();
    let deleted = s.prune(2).await.unwrap();
    assert_eq!(deleted, vec![3, 2, 1]);
    assert_eq!(s.steps().await.unwrap(), vec![6, 5, 4]);
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 5);
    // keep = 0 still keeps the newest complete one.
    s.prune(0).await.unwrap();
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 5);
}

#[test]
fn bad_urls_are_refused_naming_them() {
    let e = Store::open("ftp://x/y", DEFAULT_PART_SIZE).err().unwrap().to_string();
    assert!(e.contains("ftp://x/y") && e.contains("unsupported scheme"), "{e}");
    let e = Store::open("s3:///prefix", DEFAULT_PART_SIZE).err().unwrap().to_string();
    assert!(e.contains("no bucket"), "{e}");
    let e = Store::open("/tmp/x", 1 << 20).err().unwrap().to_string();
    assert!(e.contains("5 MiB"), "{e}");
}

/// Flip one byte of the first part of `step` (its size stays right: only the hash sees it).
async fn flip(s: &Store, dir: &Path, step: u64) {
    let key = s.read_manifest(step).await.unwrap().parts[0].key.clone();
    let path = dir.join(step_dir(step)).join(key);
    let mut b = std::fs::read(&path).unwrap();
    b[3] ^= 0x40;
    std::fs::write(&path, &b).unwrap();
}

/// A damaged checkpoint never counts as kept: pruning deletes it and keeps `keep` intact ones.
#[tokio::test]
async fn a_damaged_checkpoint_is_never_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    for step in 1..=4u64 {
        s.write(step, "cfg", parts(step, 300), serde_json::Value::Null).await.unwrap();
    }
    // A fresh store object (another process) has verified nothing yet.
    let s = store(dir.path());
    flip(&s, dir.path(), 4).await;
    let deleted = s.prune(2).await.unwrap();
    assert_eq!(deleted, vec![4, 1], "the damaged newest and the oldest beyond keep = 2");
    assert_eq!(s.steps().await.unwrap(), vec![3, 2]);
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 3);
}

/// Damages the checkpoint in a step folder, given its manifest.
type Harm = fn(&Path, &fav_storage::Manifest);

/// Re-saving a step whose checkpoint is damaged replaces it at once: a changed part, a manifest
/// that claims a wrong size, a truncated manifest, a deleted part.
#[tokio::test]
async fn a_damaged_checkpoint_never_blocks_its_own_re_save() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let damage: [(&str, Harm); 4] = [
        ("flipped part", |d, m| {
            let p = d.join(&m.parts[0].key);
            let mut b = std::fs::read(&p).unwrap();
            b[0] ^= 1;
            std::fs::write(&p, b).unwrap();
        }),
        ("wrong size in the manifest", |d, m| {
            let mut m = m.clone();
            m.parts[0].size += 1;
            std::fs::write(d.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        }),
        ("truncated manifest", |d, _| {
            let b = std::fs::read(d.join(MANIFEST)).unwrap();
            std::fs::write(d.join(MANIFEST), &b[..b.len() / 2]).unwrap();
        }),
        ("deleted part", |d, m| std::fs::remove_file(d.join(&m.parts[1].key)).unwrap()),
    ];
    for (i, (what, harm)) in damage.iter().enumerate() {
        let step = 10 + i as u64;
        let m = s.write(step, "cfg", parts(step, 300), serde_json::Value::Null).await.unwrap();
        harm(&dir.path().join(step_dir(step)), &m);
        assert!(s.read(step).await.is_err(), "{what}: damaged");
        let t = std::time::Instant::now();
        s.write(step, "cfg", parts(step + 100, 300), serde_json::Value::Null).await.unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{what}: re-saved without retries");
        let (_, got) = s.read(step).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got["model.safetensors"], parts(step + 100, 300)[0].1, "{what}: the new save is the checkpoint");
    }
}

/// A deleted part makes the checkpoint damaged, not the store unusable: the latest intact one
/// is found behind it.
#[tokio::test]
async fn a_deleted_part_falls_back_to_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(1, "cfg", parts(1, 100), serde_json::Value::Null).await.unwrap();
    let m = s.write(2, "cfg", parts(2, 100), serde_json::Value::Null).await.unwrap();
    std::fs::remove_file(dir.path().join(step_dir(2)).join(&m.parts[0].key)).unwrap();
    assert!(matches!(s.read(2).await, Err(StorageError::Corrupt { .. })));
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 1);
    assert_eq!(s.any_checkpoint().await.unwrap(), Some(2), "damaged, but a checkpoint is there");
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(store(empty.path()).any_checkpoint().await.unwrap(), None);
}

/// On a full disk a save fails at once, names the cause and leaves no partial attempt behind.
/// Needs root to mount a small tmpfs (CI runs as root); elsewhere it says why it did not run.
#[tokio::test]
async fn a_full_disk_fails_the_save_at_once_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let s = store(&mnt);
    let e = s.write(1, "cfg", parts(1, 200_000), serde_json::Value::Null).await.unwrap_err();
    let left: Vec<_> = walk(&mnt);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert!(e.is_out_of_space(), "{e}");
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// Everything under `dir`, folders included.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
        out.push(e.path());
    }
    out
}
