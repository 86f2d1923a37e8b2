//! Running keyed commands on the shard that owns their keys, for a local connection or for
//! another shard's request. Replies are encoded here, once, in the requester's protocol.

use std::rc::Rc;
use std::time::Instant;

use super::mesh::{Outcome, Payload};
use super::Shard;
use crate::command::table::{Command, Handler};
use crate::command::KeyCtx;
use crate::protocol::{Args, Protocol, ReplyBuf};
use crate::server::state::unix_ms;

/// A keyed command bound for the shard that owns its keys.
pub struct KeyedCall {
    pub command: &'static Command,
    pub args: Args,
    pub db: usize,
    /// Counted in commandstats; false for the per-shard parts of a split command, which the
    /// connection counts once.
    pub counted: bool,
}

/// Replies of a batch run for another shard: the encoded bytes and where each reply ends.
#[derive(Debug, Default)]
pub struct Replies {
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Replies {
    /// The encoded reply of call `i`.
    pub fn reply(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// Runs `calls[from..]` in order, writing replies to `out` (and each reply's end offset to
/// `ends`). Stops before a call whose key a transaction holds, unless the caller is that
/// transaction (`in_tx`). Returns the index reached.
pub fn run_keyed(
    shard: &Shard,
    calls: &[KeyedCall],
    from: usize,
    out: &mut ReplyBuf,
    mut ends: Option<&mut Vec<usize>>,
    in_tx: bool,
) -> usize {
    let config = shard.config();
    let now_ms = unix_ms();
    let mut dbs = shard.dbs();
    let mut stats = shard.stats.borrow_mut();
    for (i, call) in calls.iter().enumerate().skip(from) {
        if !in_tx && is_blocked(shard, call) {
            return i;
        }
        let started = Instant::now();
        let result = match call.command.handler {
            Handler::Keyed(run, _) => {
                let mut ctx = KeyCtx {
                    dbs: &mut dbs,
                    db: call.db,
                    now_ms,
                    out,
                    config: &config,
                };
                run(&mut ctx, &call.args)
            }
            _ => Err(crate::error::CommandError::err(
                "command cannot run on a shard",
            )),
        };
        if let Err(e) = &result {
            let message = e.to_string();
            out.error(&message);
            stats.record_error(&message);
        }
        if call.counted {
            let usec = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.record_call(call.command.name(), usec, result.is_err());
        }
        if let Some(ends) = ends.as_deref_mut() {
            ends.push(out.len());
        }
    }
    calls.len()
}

fn is_blocked(shard: &Shard, call: &KeyedCall) -> bool {
    let locks = shard.locks();
    if locks.is_idle() {
        return false;
    }
    let write = call.command.is_write();
    call.command
        .key_positions(&call.args)
        .into_iter()
        .any(|i| locks.blocks(call.db, call.args.get(i), write))
}

/// Runs all of `calls`, waiting whenever a transaction holds one of their keys.
pub async fn run_keyed_to_end(
    shard: &Shard,
    calls: &[KeyedCall],
    out: &mut ReplyBuf,
    mut ends: Option<&mut Vec<usize>>,
    in_tx: bool,
) {
    let mut next = 0;
    loop {
        next = run_keyed(shard, calls, next, out, ends.as_deref_mut(), in_tx);
        if next == calls.len() {
            return;
        }
        shard.lock_released().await;
    }
}

/// The job another shard runs for a batch of keyed calls; its result is [`Replies`].
pub fn keyed_job(
    calls: Vec<KeyedCall>,
    protocol: Protocol,
    in_tx: bool,
) -> impl FnOnce(&Rc<Shard>) -> Outcome + Send + 'static {
    move |shard| {
        shard.stats.borrow_mut().cross_shard_served += 1;
        let mut out = ReplyBuf::new(protocol);
        let mut ends = Vec::with_capacity(calls.len());
        let next = run_keyed(shard, &calls, 0, &mut out, Some(&mut ends), in_tx);
        if next == calls.len() {
            return Outcome::Ready(Box::new(Replies {
                bytes: out.take(),
                ends,
            }));
        }
        let shard = Rc::clone(shard);
        Outcome::Pending(Box::pin(async move {
            let mut next = next;
            loop {
                shard.lock_released().await;
                next = run_keyed(&shard, &calls, next, &mut out, Some(&mut ends), in_tx);
                if next == calls.len() {
                    break;
                }
            }
            Box::new(Replies {
                bytes: out.take(),
                ends,
            }) as Payload
        }))
    }
}
