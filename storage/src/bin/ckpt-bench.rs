//! `fav-ckpt-bench URL [MiB] [runs]`: checkpoint upload throughput through `Store::write` (parts,
//! SHA-256, manifest with a conditional create) against a raw object_store multipart put of the
//! same bytes, same part size and concurrency, to the same store. Prints one JSON line.

use bytes::Bytes;
use fav_storage::{Store, DEFAULT_PART_SIZE};
use object_store::{ObjectStoreExt, WriteMultipart};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: fav-ckpt-bench URL [MiB] [runs]").clone();
    let mib: usize = args.get(2).map_or(64, |s| s.parse().expect("MiB"));
    let runs: usize = args.get(3).map_or(5, |s| s.parse().expect("runs"));
    let data = Bytes::from((0..mib << 20).map(|i| ((i * 2654435761usize) >> 13) as u8).collect::<Vec<u8>>());
    let store = Store::open(&url, DEFAULT_PART_SIZE).expect("open store");
    let raw = store.object_store();
    let (mut ckpt, mut direct) = (Vec::new(), Vec::new());
    for r in 0..runs as u64 {
        // Interleaved, so neither side profits from going second.
        let t = Instant::now();
        store
            .write(1_000_000 + r, "bench", vec![("blob".into(), data.clone())], serde_json::Value::Null)
            .await
            .unwrap();
        ckpt.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let path = store.key(&format!("raw-bench/{r}"));
        let mut w = WriteMultipart::new_with_chunk_size(raw.put_multipart(&path).await.unwrap(), DEFAULT_PART_SIZE);
        for chunk in data.chunks(DEFAULT_PART_SIZE) {
            w.wait_for_capacity(4).await.unwrap();
            w.write(chunk);
        }
        w.finish().await.unwrap();
        direct.push(t.elapsed().as_secs_f64());
        let _ = raw.delete(&path).await;
    }
    store.prune(1).await.unwrap();
    let mb = (mib << 20) as f64 / 1e6;
    let (c, d) = (median(ckpt), median(direct));
    println!(
        "{{\"store\": \"{}\", \"mib\": {mib}, \"runs\": {runs}, \"checkpoint_s\": {c:.3}, \"raw_put_s\": {d:.3}, \
         \"checkpoint_mb_s\": {:.1}, \"raw_mb_s\": {:.1}, \"ratio\": {:.2}}}",
        store.url(),
        mb / c,
        mb / d,
        d / c
    );
}
