//! Micro benchmarks of the code every request goes through; `perf/README.md` says what each
//! protects. Run with `cargo bench --bench hot_paths`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use corekv::protocol::{Args, ParseLimits, Parsed, Protocol, ReplyBuf, RequestParser};
use corekv::shard::db::Db;
use corekv::shard::routing::{key_slot, SlotMap};
use corekv::shard::value::Value;
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

criterion_group!(benches, parser, routing, keyspace, records);
criterion_main!(benches);
