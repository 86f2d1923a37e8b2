//! Micro benchmarks of the code every request goes through; `perf/README.md` says what each
//! protects. Run with `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use corekv::config::Config;
use corekv::protocol::{Args, ParseLimits, Parsed, Protocol, ReplyBuf, RequestParser};
use corekv::server::state::ServerState;
use corekv::shard::db::Db;
use corekv::shard::mesh::{self, Batch, CHANNEL_BATCHES_MAX};
use corekv::shard::routing::{key_slot, SlotMap};
use corekv::shard::value::Value;
use corekv::shard::Shard;
use corekv::storage::record;

const LIMITS: ParseLimits = ParseLimits {
    max_bulk_bytes: 512 * 1024 * 1024,
    unauthenticated: false,
};

/// 16 pipelined `SET key:… value` requests, as a client sends them.
fn pipeline() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..16 {
        let key = format!("key:{i:012}");
        out.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$3\r\nxxx\r\n",
                key.len()
            )
            .as_bytes(),
        );
    }
    out
}

fn parser(c: &mut Criterion) {
    let bytes = pipeline();
    let mut group = c.benchmark_group("resp");
    group.throughput(Throughput::Elements(16));
    group.bench_function("parse 16 pipelined SETs", |b| {
        b.iter_batched(
            || BytesMut::from(bytes.as_slice()),
            |mut input| {
                let mut parser = RequestParser::new();
                let mut n = 0;
                while let Ok(Parsed::Command(args)) = parser.parse(&mut input, LIMITS) {
                    n += black_box(args).len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encode 16 replies (+OK, bulk, integer)", |b| {
        let mut out = ReplyBuf::new(Protocol::Resp2);
        b.iter(|| {
            out.clear();
            for i in 0..16 {
                match i % 3 {
                    0 => out.ok(),
                    1 => out.bulk(b"some value"),
                    _ => out.int(i),
                }
            }
            black_box(out.len())
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let keys: Vec<String> = (0..1024).map(|i| format!("key:{i:012}")).collect();
    let map = SlotMap::new(16);
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("slot of 1024 keys", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| key_slot(k.as_bytes()) as usize)
                .sum::<usize>()
        })
    });
    group.bench_function("shard of 1024 keys (16 shards)", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| map.shard_of_key(k.as_bytes()))
                .sum::<usize>()
        })
    });
    group.finish();
}

fn keyspace(c: &mut Criterion) {
    let keys: Vec<String> = (0..100_000).map(|i| format!("key:{i:012}")).collect();
    let mut db = Db::default();
    for k in &keys {
        db.set(k.as_bytes(), Value::string(b"xxx"), false);
    }
    let mut group = c.benchmark_group("keyspace");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("GET hit in 100k keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(db.get(keys[i].as_bytes(), 0).is_some())
        })
    });
    group.bench_function("SET overwrite in 100k keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            db.set(keys[i].as_bytes(), Value::string(b"yyy"), false);
        })
    });
    group.finish();
}

fn records(c: &mut Criterion) {
    let args = Args::from_vecs(["SET", "key:000000000042", "some value of 24 bytes.."]);
    let mut group = c.benchmark_group("aof record");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("encode + crc32c of one SET", |b| {
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            black_box(record::encode_commands(
                &mut out,
                4096,
                7,
                [(0, &args)].into_iter(),
            ))
        })
    });
    let mut one = Vec::new();
    record::encode_commands(&mut one, 4096, 7, [(0, &args)].into_iter());
    let one = bytes::Bytes::from(one);
    group.bench_function("decode + check of one SET", |b| {
        b.iter(|| black_box(record::decode(&one, 0, 4096)))
    });
    group.finish();
}

/// Two shards, each on its own glommio executor thread, joined by the server's mesh. The one on
/// CPU 0 runs the measured loops on request from the Criterion thread; the other answers.
struct TwoShards {
    /// (calls, calls in flight at once) to make from shard 0 to shard 1; the time they took
    /// comes back on `done`.
    run: mpsc::Sender<(u64, usize)>,
    done: mpsc::Receiver<Duration>,
    stop: Arc<AtomicBool>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl TwoShards {
    fn start() -> TwoShards {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let server = Arc::new(ServerState::new(
            Config::default(),
            vec![0, 1],
            String::new(),
        ));
        let mesh = MeshBuilder::<Batch, _>::full(2, CHANNEL_BATCHES_MAX);
        let stop = Arc::new(AtomicBool::new(false));
        let (run, runs) = mpsc::channel::<(u64, usize)>();
        let (done_tx, done) = mpsc::channel();
        let mut runs = Some(runs);
        let mut threads = Vec::new();
        for cpu in 0..2 {
            let (server, mesh, stop) = (server.clone(), mesh.clone(), stop.clone());
            let runs = runs.take().filter(|_| cpu == 0);
            let done = done_tx.clone();
            let placement = if cpus >= 2 {
                Placement::Fixed(cpu)
            } else {
                Placement::Unbound
            };
            let handle = LocalExecutorBuilder::new(placement)
                .io_memory(1 << 20)
                .spawn(move || async move {
                    let (senders, receivers) = mesh.join().await.expect("mesh join");
                    let shard = Rc::new(Shard::new(senders.peer_id(), cpu, server));
                    mesh::start(&shard, senders, receivers);
                    match runs {
                        // Blocks this executor between measurements: it has nothing else to do.
                        Some(runs) => {
                            while let Ok((calls, in_flight)) = runs.recv() {
                                let _ = done.send(measure(&shard, calls, in_flight).await);
                            }
                        }
                        None => {
                            while !stop.load(Ordering::Relaxed) {
                                glommio::timer::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                    stop.store(true, Ordering::Relaxed);
                })
                .expect("shard executor");
            threads.push(handle);
        }
        TwoShards {
            run,
            done,
            stop,
            threads,
        }
    }

    fn time(&self, calls: u64, in_flight: usize) -> Duration {
        self.run
            .send((calls, in_flight))
            .expect("the measuring shard is running");
        self.done.recv().expect("the measuring shard answers")
    }

    fn stop(self) {
        drop(self.run);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// `calls` calls from `shard` to the other shard, `in_flight` at a time; the time they took.
async fn measure(shard: &Rc<Shard>, calls: u64, in_flight: usize) -> Duration {
    let peer = 1 - shard.index();
    let started = Instant::now();
    let mut left = calls;
    while left > 0 {
        let now = left.min(in_flight as u64);
        let batch: Vec<_> = (0..now)
            .map(|i| shard.call(peer, move |s| s.index() as u64 + i))
            .collect();
        for call in batch {
            black_box(call.await.expect("the other shard answers"));
        }
        left -= now;
    }
    started.elapsed()
}

fn cross_shard(c: &mut Criterion) {
    let shards = TwoShards::start();
    let mut group = c.benchmark_group("cross-shard call");
    group.throughput(Throughput::Elements(1));
    group.bench_function("round trip, one at a time", |b| {
        b.iter_custom(|iters| shards.time(iters, 1))
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("64 calls in flight", |b| {
        b.iter_custom(|iters| shards.time(iters * 64, 64))
    });
    group.finish();
    shards.stop();
}

criterion_group!(benches, parser, routing, keyspace, records, cross_shard);
criterion_main!(benches);
