//! How fast a hive keeps a replica's output: 64 MiB of 100-byte lines through `capture`
//! (line splitting, a timestamp per line, size rotation) into files, next to the baseline
//! of the same reads and buffered writes of the bytes as they are into one file, measured
//! in one run.
//!
//! `cargo bench -p hive --bench logs`

use contract::LogPolicy;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hive::logs::{LogStore, capture};

const MIB: usize = 1024 * 1024;
const TOTAL: usize = 64 * MIB;

fn lines() -> Vec<u8> {
    let line = format!("{}\n", "x".repeat(99));
    line.repeat(TOTAL / line.len()).into_bytes()
}

/// Writes `data` into a pipe in 64 KiB pieces, as a busy program would, while `sink` reads it.
async fn through<F: std::future::Future<Output = std::io::Result<()>>>(
    data: &[u8],
    sink: impl FnOnce(tokio::io::DuplexStream) -> F,
) {
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let reading = sink(rx);
    let writing = async move {
        for piece in data.chunks(64 * 1024) {
            tokio::io::AsyncWriteExt::write_all(&mut tx, piece).await.expect("write");
        }
        drop(tx);
    };
    let (read, ()) = tokio::join!(reading, writing);
    read.expect("read");
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let data = lines();
    let dir = std::env::temp_dir().join(format!("hive-logs-bench-{}", std::process::id()));
    let store = LogStore { dir: dir.clone(), policy: LogPolicy { max_bytes: 16 * MIB as u64, files: 3 } };
    let replica = contract::NodeId::sanitized("bench-0");
    let mut group = c.benchmark_group("log_capture_64mib");
    group.throughput(Throughput::Bytes(TOTAL as u64)).sample_size(10);
    group.bench_function("baseline_copy_to_file", |b| {
        b.iter(|| {
            runtime.block_on(through(&data, |mut rx| {
                let path = dir.join("baseline");
                // The same reads and buffered writes as `capture`, without the lines.
                async move {
                    use std::io::Write;
                    std::fs::create_dir_all(path.parent().expect("dir"))?;
                    let mut file = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(&path)?);
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = tokio::io::AsyncReadExt::read(&mut rx, &mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        file.write_all(&buf[..n])?;
                        file.flush()?;
                    }
                    Ok(())
                }
            }))
        })
    });
    group.bench_function("capture", |b| {
        b.iter(|| {
            store.begin(&replica).expect("begin");
            let files = store.files(&replica, contract::LogStream::Stdout, false);
            runtime.block_on(through(&data, |rx| capture(rx, files, store.policy)))
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
