use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use super::*;

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("icn-synthetic-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn spec() -> SyntheticSpec {
    SyntheticSpec {
        seed: 11,
        large_files: 6,
        large_file_bytes: (1 << 20) + 3,
        small_files: 80,
        small_file_bytes_max: 3000,
        changed_per_checkpoint_permille: 150,
    }
}

/// Every file under `dir` by relative path, with its bytes.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                let relative = entry.path().strip_prefix(dir).unwrap().to_owned();
                let relative = relative.to_str().unwrap().to_string();
                files.insert(relative, fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

#[test]
fn two_writers_build_the_same_state_for_a_height() {
    let dir = TempDir::new("same");
    let (a, b) = (dir.0.join("a"), dir.0.join("b"));
    write_state(&a, &spec(), 5, None).unwrap();
    write_state(&b, &spec(), 5, None).unwrap();
    let (tree_a, tree_b) = (read_tree(&a), read_tree(&b));
    assert_eq!(tree_a.len(), spec().file_count() as usize);
    assert_eq!(tree_a, tree_b);
    let bytes: u64 = tree_a.values().map(|file| file.len() as u64).sum();
    assert_eq!(bytes, spec().state_bytes());
    // Spread over several directories, with some empty small files and distinct contents.
    let dirs: std::collections::BTreeSet<&str> = tree_a
        .keys()
        .map(|path| path.rsplit_once('/').unwrap().0)
        .collect();
    assert!(dirs.len() > 4, "{dirs:?}");
    assert!(tree_a.values().any(Vec::is_empty));
    let first = &tree_a[&spec().file_path(0)];
    assert_ne!(first, &tree_a[&spec().file_path(1)]);
    assert_eq!(first.len() as u64, spec().large_file_bytes);

    let other_seed = SyntheticSpec { seed: 12, ..spec() };
    let c = dir.0.join("c");
    write_state(&c, &other_seed, 5, None).unwrap();
    assert_ne!(read_tree(&c)[&spec().file_path(0)], *first);
}

#[test]
fn heights_differ_only_in_the_files_that_changed_and_the_rest_is_hardlinked() {
    let dir = TempDir::new("heights");
    let (old, new, fresh) = (dir.0.join("3"), dir.0.join("4"), dir.0.join("4-fresh"));
    write_state(&old, &spec(), 3, None).unwrap();
    write_state(&new, &spec(), 4, Some((&old, 3))).unwrap();
    write_state(&fresh, &spec(), 4, None).unwrap();
    let (tree_old, tree_new) = (read_tree(&old), read_tree(&new));
    assert_eq!(
        tree_new,
        read_tree(&fresh),
        "hardlinking changes no content"
    );

    let changed = spec().changed_between(3, 4);
    assert!(!changed.is_empty() && changed.len() < spec().file_count() as usize);
    for index in 0..spec().file_count() {
        let path = spec().file_path(index);
        let linked = fs::metadata(old.join(&path)).unwrap().ino()
            == fs::metadata(new.join(&path)).unwrap().ino();
        if changed.contains(&index) {
            assert!(!linked, "{path} changed and was written anew");
            // An empty file stays empty whatever its version.
            if spec().file_bytes(index) > 0 {
                assert_ne!(tree_old[&path], tree_new[&path], "{path}");
            }
        } else {
            assert!(linked, "{path} is unchanged and hardlinked");
            assert_eq!(tree_old[&path], tree_new[&path]);
        }
    }
}

#[test]
fn versions_are_the_last_height_of_change() {
    let spec = spec();
    for index in 0..spec.file_count() {
        let version = spec.file_version(index, 40);
        assert!(spec.changes_at(index, version));
        assert!((version + 1..=40).all(|height| !spec.changes_at(index, height)));
    }
    let frozen = SyntheticSpec {
        changed_per_checkpoint_permille: 0,
        ..spec
    };
    assert!(frozen.changed_between(0, 1000).is_empty());
    let churning = SyntheticSpec {
        changed_per_checkpoint_permille: 1000,
        ..spec
    };
    assert_eq!(
        churning.changed_between(7, 8).len(),
        spec.file_count() as usize
    );
}

#[test]
fn the_prng_fills_any_length_from_one_stream() {
    let mut whole = vec![0u8; 100];
    WyRand(5).fill(&mut whole);
    let mut parts = vec![0u8; 100];
    let mut rng = WyRand(5);
    rng.fill(&mut parts[..64]);
    rng.fill(&mut parts[64..]);
    assert_eq!(whole, parts);
    assert!(whole.iter().filter(|&&byte| byte == 0).count() < 10);
}
