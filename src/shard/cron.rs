//! The shard's background tick (`hz` times a second): active expiry, incremental rehashing,
//! ops/sec sampling, idle-client timeouts and automatic log rewrites. Every step has a time budget so that a tick never
//! stalls the shard's clients for long.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::Shard;
use crate::server::state::unix_ms;
use crate::storage::rewrite::{self, Purpose, Shards};

/// Keys with a TTL looked at per expiry step (Valkey samples 20).
const EXPIRE_SAMPLE_KEYS: usize = 20;
/// Keep expiring in this tick while more than 1/this of the sampled keys were expired.
const EXPIRE_REPEAT_RATIO: usize = 10;
/// Share of a tick that active expiry may use, in percent (Valkey's slow cycle uses 25).
const EXPIRE_TIME_PERCENT: u32 = 25;
/// Bucket moves per rehash step, and the time rehashing may take per tick.
const REHASH_STEPS: usize = 100;
const REHASH_BUDGET: Duration = Duration::from_millis(1);

/// Runs the tick forever on the current executor.
pub async fn run(shard: Rc<Shard>) {
    loop {
        let hz = shard.config().hz.max(1);
        let period = Duration::from_millis(1000 / hz);
        glommio::timer::sleep(period).await;
        tick(&shard, period);
    }
}

fn tick(shard: &Rc<Shard>, period: Duration) {
    shard.refresh_clock();
    let started = Instant::now();
    active_expire(shard, period * EXPIRE_TIME_PERCENT / 100);
    rehash(shard);
    shard.stats.borrow_mut().sample_ops(started);
    close_idle_clients(shard);
    start_rewrites(shard);
}

/// Starts the log if it should run and does not (an earlier start failed), or a rewrite of
/// this shard's log once it grew past auto-aof-rewrite-percentage.
fn start_rewrites(shard: &Rc<Shard>) {
    let config = shard.config();
    let status = &shard.server.rewrite;
    if !config.appendonly || status.in_progress() {
        return;
    }
    if shard.index() == 0 && status.try_begin_scheduled() {
        log::info!("Starting the scheduled rewrite of the AOF");
        glommio::spawn_local(rewrite::run(
            Rc::clone(shard),
            Purpose::Compact,
            Shards::All,
        ))
        .detach();
        return;
    }
    if !status.auto_allowed(unix_ms()) {
        return;
    }
    let purpose = match shard.with_aof(|a| {
        rewrite::wants_auto_rewrite(
            a,
            config.auto_aof_rewrite_percentage,
            config.auto_aof_rewrite_min_size,
        )
    }) {
        None if shard.index() == 0 => Purpose::TurnOn,
        Some(true) => Purpose::Compact,
        _ => return,
    };
    if !status.try_begin() {
        return;
    }
    let shards = match purpose {
        Purpose::TurnOn => Shards::All,
        Purpose::Compact => {
            log::info!(
                "Starting automatic rewriting of the AOF on {}% growth",
                config.auto_aof_rewrite_percentage
            );
            Shards::Due
        }
    };
    glommio::spawn_local(rewrite::run(Rc::clone(shard), purpose, shards)).detach();
}

fn active_expire(shard: &Shard, budget: Duration) {
    let started = Instant::now();
    let now_ms = unix_ms();
    let locks = shard.locks();
    let mut dbs = shard.dbs();
    for (index, db) in dbs.iter_mut().enumerate() {
        while db.expires_len() > 0 && started.elapsed() < budget {
            let (looked, expired) = db.active_expire(now_ms, EXPIRE_SAMPLE_KEYS, |key| {
                !locks.is_idle() && locks.blocks(index, key, true)
            });
            if looked == 0 || expired * EXPIRE_REPEAT_RATIO <= looked {
                break;
            }
        }
    }
    shard.journal().log_expired(&mut dbs);
}

fn rehash(shard: &Shard) {
    let started = Instant::now();
    let mut dbs = shard.dbs();
    for db in dbs.iter_mut() {
        while db.rehash(REHASH_STEPS) {
            if started.elapsed() >= REHASH_BUDGET {
                return;
            }
        }
    }
}

fn close_idle_clients(shard: &Shard) {
    let timeout_s = shard.config().timeout_s;
    if timeout_s == 0 {
        return;
    }
    let now = Instant::now();
    for client in shard.clients.borrow().iter() {
        let idle = now.duration_since(client.last_interaction.get()).as_secs();
        if idle > timeout_s && client.multi.get() < 0 {
            client.kill();
        }
    }
}
