//! Running keyed commands on the shard that owns their keys, for a local connection or for
//! another shard's request. Replies are encoded here, once, in the requester's protocol; every
//! command that changed data is appended to the shard's log in execution order.

use std::rc::Rc;
use std::time::Instant;

use super::journal::Journal;
use super::mesh::{Outcome, Payload};
use super::Shard;
use crate::command::table::{Command, Handler};
use crate::command::{KeyCtx, LogAs};
use crate::error::CommandError;
use crate::protocol::{Args, Protocol, ReplyBuf};
use crate::storage::aof::{Aof, AofFailure};
use crate::storage::record::TxTag;
use crate::storage::FsyncMode;

/// A keyed command bound for the shard that owns its keys.
pub struct KeyedCall {
    pub command: &'static Command,
    pub args: Args,
    pub db: usize,
    /// Counted in commandstats; false for the per-shard parts of a split command, which the
    /// connection counts once.
    pub counted: bool,
}

/// What running commands means for durability.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// End position of the last record these commands appended (0: none).
    pub wrote_to: u64,
    /// Position the replies must wait for before they may leave in `always` mode: their own
    /// records, and the not yet durable writes they read (0: none).
    pub durable_at: u64,
}

impl Effects {
    pub fn merge(&mut self, other: Effects) {
        self.wrote_to = self.wrote_to.max(other.wrote_to);
        self.durable_at = self.durable_at.max(other.durable_at);
    }
}

/// How the calls run: on their own (checking transaction locks, logging each write), or as
/// part of a transaction that holds the locks (its writes are logged when it commits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Transaction(TxTag),
}

/// Replies of a batch run for another shard.
#[derive(Default)]
pub struct Replies {
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
    pub effects: Effects,
    /// In `always` mode the shard waits for its log before replying; this says it failed.
    pub failure: Option<AofFailure>,
    /// Calls not run because the replies reached their budget (sent again later).
    pub rest: Vec<KeyedCall>,
}

impl Replies {
    /// The same replies with `rest` as the calls left over.
    pub fn with_rest(mut self, rest: Vec<KeyedCall>) -> Replies {
        self.rest = rest;
        self
    }

    /// The encoded reply of call `i`.
    pub fn reply(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

fn total_changes(dbs: &[crate::shard::db::Db]) -> u64 {
    dbs.iter().map(|d| d.changes()).sum()
}

/// Like [`run_keyed`], waiting out the transaction locks in the way: runs until every call ran
/// or the replies reach `budget_bytes`. Returns the index reached.
#[allow(clippy::too_many_arguments)]
pub async fn run_keyed_waiting(
    shard: &Shard,
    calls: &[KeyedCall],
    mut next: usize,
    out: &mut ReplyBuf,
    mut ends: Option<&mut Vec<usize>>,
    mode: Mode,
    effects: &mut Effects,
    budget_bytes: usize,
) -> usize {
    loop {
        next = run_keyed(
            shard,
            calls,
            next,
            out,
            ends.as_deref_mut(),
            mode,
            effects,
            budget_bytes,
        );
        if next == calls.len() || out.len() >= budget_bytes {
            return next;
        }
        shard.lock_released().await;
    }
}

/// Runs `calls[from..]` in order, writing replies to `out` (and each reply's end offset to
/// `ends`). Stops before a call whose key a transaction holds, unless running inside that
/// transaction, and after the call that brings `out` to `budget_bytes`. Returns the index
/// reached.
#[allow(clippy::too_many_arguments)]
pub fn run_keyed(
    shard: &Shard,
    calls: &[KeyedCall],
    from: usize,
    out: &mut ReplyBuf,
    mut ends: Option<&mut Vec<usize>>,
    mode: Mode,
    effects: &mut Effects,
    budget_bytes: usize,
) -> usize {
    let config = shard.config();
    let (mut last, now_ms) = shard.now();
    let mut dbs = shard.dbs();
    let mut journal = shard.journal();
    let mut stats = shard.stats.borrow_mut();
    for (i, call) in calls.iter().enumerate().skip(from) {
        if mode == Mode::Plain && is_blocked(shard, call) {
            return i;
        }
        let refused = if call.command.is_write() {
            journal
                .aof
                .as_ref()
                .and_then(|a| a.failure())
                .map(|f| CommandError::Coded(f.misconf()))
        } else {
            None
        };
        let before = if journal.is_on() {
            total_changes(&dbs)
        } else {
            0
        };
        let mut log = LogAs::Original;
        let result = match (refused, call.command.handler) {
            (Some(e), _) => Err(e),
            (None, Handler::Keyed(run, _)) => {
                let mut ctx = KeyCtx {
                    dbs: &mut dbs,
                    db: call.db,
                    now_ms,
                    out,
                    config: &config,
                    loading: false,
                    log: LogAs::Original,
                };
                let result = run(&mut ctx, &call.args);
                log = std::mem::take(&mut ctx.log);
                result
            }
            (None, _) => Err(CommandError::err("command cannot run on a shard")),
        };
        if journal.is_on() {
            let changed = result.is_ok() && total_changes(&dbs) != before;
            log_call(&mut journal, &mut dbs, call, changed, log, mode, effects);
        }
        if let Err(e) = &result {
            let message = e.to_string();
            out.error(&message);
            stats.record_error(&message);
        }
        if call.counted {
            // One clock read per command: its end is the next one's start.
            let end = Instant::now();
            let nanos = u64::try_from(end.duration_since(last).as_nanos()).unwrap_or(u64::MAX);
            last = end;
            stats.record_call(
                call.command.name(),
                nanos,
                result.is_err(),
                config.latency_tracking,
            );
        }
        if let Some(ends) = ends.as_deref_mut() {
            ends.push(out.len());
        }
        if out.len() >= budget_bytes {
            return i + 1;
        }
    }
    calls.len()
}

/// Records what a call did: first the keys it found expired (as deletions), then the call
/// itself if it changed data; or notes the unsynced writes it read.
fn log_call(
    journal: &mut Journal<'_>,
    dbs: &mut [crate::shard::db::Db],
    call: &KeyedCall,
    changed: bool,
    log: LogAs,
    mode: Mode,
    effects: &mut Effects,
) {
    journal.log_expired(dbs);
    if changed {
        let commands = match log {
            LogAs::Original => vec![call.args.clone()],
            LogAs::Commands(commands) => commands,
        };
        append(journal, call.db, commands, mode, effects);
    } else if let Some(aof) = journal.aof.as_ref().filter(|a| a.mode == FsyncMode::Always) {
        for position in call.command.key_positions(&call.args) {
            if let Some(end) = aof.dirty_until(call.db, call.args.get(position)) {
                effects.durable_at = effects.durable_at.max(end);
            }
        }
    }
}

fn append(
    journal: &mut Journal<'_>,
    db: usize,
    commands: Vec<Args>,
    mode: Mode,
    effects: &mut Effects,
) {
    match mode {
        Mode::Transaction(tag) => {
            for args in commands {
                journal.buffer_tx(tag, db as u32, args);
            }
        }
        Mode::Plain => {
            let end = journal.append_commands(commands.iter().map(|a| (db as u32, a)));
            effects.wrote_to = effects.wrote_to.max(end);
            if let Some(aof) = journal.aof.as_mut() {
                for args in &commands {
                    mark_dirty(aof, db, args, end);
                }
                if aof.mode == FsyncMode::Always {
                    effects.durable_at = effects.durable_at.max(end);
                }
            }
        }
    }
}

/// Marks the keys a logged command writes as not durable until `end`.
pub fn mark_dirty(aof: &mut Aof, db: usize, args: &Args, end: u64) {
    if aof.mode != FsyncMode::Always {
        return;
    }
    if let Some(command) = crate::command::table::Registry::get().lookup(args.get(0)) {
        for position in command.key_positions(args) {
            aof.mark_dirty(db, args.get(position), end);
        }
    }
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

/// The job another shard runs for a batch of keyed calls; its result is [`Replies`]. It stops
/// once its replies reach the reply budget (the calls left travel back in `rest`). In `always`
/// mode the replies are held until what they depend on is durable.
pub fn keyed_job(
    calls: Vec<KeyedCall>,
    protocol: Protocol,
    mode: Mode,
) -> impl FnOnce(&Rc<Shard>) -> Outcome + Send + 'static {
    move |shard| {
        shard.stats.borrow_mut().cross_shard_served += 1;
        let budget = crate::server::session::OUTPUT_FLUSH_BYTES;
        let mut out = ReplyBuf::new(protocol);
        let mut ends = Vec::with_capacity(calls.len());
        let mut effects = Effects::default();
        let next = run_keyed(
            shard,
            &calls,
            0,
            &mut out,
            Some(&mut ends),
            mode,
            &mut effects,
            budget,
        );
        let finished =
            |out: &mut ReplyBuf, ends: Vec<usize>, effects, calls: Vec<KeyedCall>, failure| {
                let executed = ends.len();
                Replies {
                    bytes: out.take(),
                    ends,
                    effects,
                    failure,
                    rest: calls.into_iter().skip(executed).collect(),
                }
            };
        let stopped_at_budget = next < calls.len() && out.len() >= budget;
        let needs_wait = effects.durable_at > 0 && shard.aof_mode() == Some(FsyncMode::Always);
        if (next == calls.len() || stopped_at_budget) && !needs_wait {
            return Outcome::Ready(Box::new(finished(&mut out, ends, effects, calls, None)));
        }
        let shard = Rc::clone(shard);
        Outcome::Pending(Box::pin(async move {
            if next < calls.len() && out.len() < budget {
                shard.lock_released().await;
                run_keyed_waiting(
                    &shard,
                    &calls,
                    next,
                    &mut out,
                    Some(&mut ends),
                    mode,
                    &mut effects,
                    budget,
                )
                .await;
            }
            let failure = shard.durable(effects.durable_at, false).await.err();
            Box::new(finished(&mut out, ends, effects, calls, failure)) as Payload
        }))
    }
}
