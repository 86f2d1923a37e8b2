//! One client's session: its state (database, protocol, auth, MULTI, WATCH) and the dispatcher
//! that runs its commands in order.
//!
//! Keyed commands for the connection's own shard run in place, writing straight into the
//! output. Pipelined keyed commands for other shards are collected into a *group*: each shard
//! receives, in one message, the group's commands for its keys, all shards work at the same
//! time, and the replies are put back in the client's order (commands for the own shard that
//! come after a remote one wait in the group too). Every other command (connection, server,
//! cross-shard) first waits for the group, so it sees the effects of everything the client sent
//! before it.
//!
//! With the log on, the session also remembers, per shard, where its last write ended (for
//! WAITAOF), and in `appendfsync always` holds its replies until what they depend on is durable.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::command::table::{flags, Command, Handler, LookupError, Registry, Split};
use crate::error::{CommandError, CommandResult};
use crate::protocol::{Args, ReplyBuf};
use crate::server::clients::ClientInfo;
use crate::shard::exec::{keyed_job, run_keyed_waiting, Effects, KeyedCall, Mode, Replies};
use crate::shard::locks::{self, LockSet};
use crate::shard::mesh::MeshError;
use crate::shard::tx::{ShardPlan, Transaction};
use crate::shard::Shard;
use crate::storage::aof::AofFailure;
use crate::storage::record::TxTag;
use crate::storage::FsyncMode;

/// Keyed commands collected before the group is sent to the shards.
const GROUP_CALLS_MAX: usize = 1024;
/// Replies are written out once this much is pending; a shard running a group's commands
/// stops after producing this much, so a connection never holds much more than this (plus one
/// reply) per shard, whatever the client pipelines without reading.
pub const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;

/// A command queued inside MULTI.
pub struct Queued {
    pub command: &'static Command,
    pub args: Args,
}

/// MULTI state.
#[derive(Default)]
pub struct Multi {
    pub queued: Vec<Queued>,
    /// A command was refused while queueing: EXEC will answer EXECABORT.
    pub failed: bool,
}

/// A key this client WATCHes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub shard: usize,
    pub db: usize,
    pub key: Vec<u8>,
}

#[derive(Default)]
struct Group {
    per_shard: Vec<Vec<KeyedCall>>,
    /// The shard of each call, in the client's order.
    order: Vec<usize>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A connection's session.
pub struct Session {
    pub shard: Rc<Shard>,
    pub client: Rc<ClientInfo>,
    pub out: ReplyBuf,
    /// The connection's socket, for writing replies (none for the link from a primary, whose
    /// commands get no replies).
    writer: Option<TcpStream>,
    /// Runs the stream from this server's primary: writes are allowed on a read-only replica.
    pub from_primary: bool,
    /// The port a replica said it listens on (REPLCONF listening-port).
    pub replica_listening_port: u16,
    /// The replica said it speaks corekv's stream (REPLCONF capa corekv).
    pub replica_capa_corekv: bool,
    /// PSYNC/SYNC: the connection becomes a replica's link once the reply loop ends.
    pub handoff: Option<Args>,
    pub db: usize,
    pub authenticated: bool,
    pub multi: Option<Multi>,
    pub watched: Vec<Watched>,
    /// Close the connection once the replies so far are written (QUIT, CLIENT KILL of self).
    pub close_after_reply: bool,
    /// Running the body of EXEC: its transaction holds every lock the commands need.
    pub in_exec: bool,
    /// The transaction the session's commands run under right now, if any.
    tx_tag: Option<TxTag>,
    /// Per shard: where this connection's last write ended in that shard's log (WAITAOF).
    pub woff: Vec<u64>,
    /// `always` mode: the own shard's log position the pending replies wait for, and the
    /// byte ranges of the replies that depend on it (replaced by errors if the write fails).
    gate: u64,
    gated: Vec<(usize, usize)>,
    group: Group,
}

fn shard_count(group: &Group) -> usize {
    group.per_shard.len()
}

/// Where a keyed command runs.
enum Route {
    One(usize),
    Many,
}

impl Session {
    pub fn new(shard: Rc<Shard>, client: Rc<ClientInfo>, writer: TcpStream) -> Self {
        let authenticated = shard.config().requirepass.is_empty();
        client.authenticated.set(authenticated);
        Self::build(shard, client, Some(writer), authenticated)
    }

    /// The session that applies the stream from this server's primary: no socket, no replies.
    pub fn for_primary_link(shard: Rc<Shard>, client: Rc<ClientInfo>) -> Self {
        client.authenticated.set(true);
        let mut session = Self::build(shard, client, None, true);
        session.from_primary = true;
        session
    }

    fn build(
        shard: Rc<Shard>,
        client: Rc<ClientInfo>,
        writer: Option<TcpStream>,
        authenticated: bool,
    ) -> Self {
        let group = Group {
            per_shard: (0..shard.count()).map(|_| Vec::new()).collect(),
            order: Vec::new(),
        };
        Session {
            shard,
            client,
            out: ReplyBuf::default(),
            writer,
            from_primary: false,
            replica_listening_port: 0,
            replica_capa_corekv: false,
            handoff: None,
            db: 0,
            authenticated,
            multi: None,
            watched: Vec::new(),
            close_after_reply: false,
            in_exec: false,
            tx_tag: None,
            woff: vec![0; shard_count(&group)],
            gate: 0,
            gated: Vec::new(),
            group,
        }
    }

    /// Drops the replies produced so far (the link from a primary answers nothing).
    pub fn discard_replies(&mut self) {
        self.out.clear();
        self.gate = 0;
        self.gated.clear();
    }

    /// The socket's writing half, handed over with the connection (PSYNC).
    pub fn take_writer(&mut self) -> Option<TcpStream> {
        self.writer.take()
    }

    /// True while the client must still authenticate.
    pub fn needs_auth(&self) -> bool {
        !self.authenticated && !self.shard.config().requirepass.is_empty()
    }

    /// Handles one command from the client: checks, MULTI queueing, then execution.
    pub async fn handle(&mut self, args: Args) {
        self.dispatch(args).await;
        // Counted after the command, as Valkey does (CLIENT INFO shows the ones before it).
        self.client
            .total_commands
            .set(self.client.total_commands.get() + 1);
    }

    async fn dispatch(&mut self, args: Args) {
        let registry = Registry::get();
        let command = match registry.resolve(&args) {
            Ok(c) => c,
            Err(e) => {
                self.flush_group().await;
                let counted = match e {
                    LookupError::Arity(container) => Some(container),
                    _ => None,
                };
                let message = lookup_error_text(e, &args);
                self.reject(counted, CommandError::Generic(message));
                return;
            }
        };
        self.client.last_command.set(command.name());
        if !command.arity_ok(args.len()) {
            self.flush_group().await;
            self.reject(
                Some(command),
                CommandError::WrongArity(command.name().to_string()),
            );
            return;
        }
        if self.needs_auth() && !command.has_flag(flags::NO_AUTH) {
            self.flush_group().await;
            self.reject(Some(command), CommandError::NoAuth);
            return;
        }
        if command.is_write() && !self.from_primary && self.is_read_only_replica() {
            self.flush_group().await;
            self.reject(Some(command), CommandError::ReadOnlyReplica);
            return;
        }
        if self.multi.is_some() {
            if command.has_flag(flags::NO_MULTI) {
                self.reject(
                    Some(command),
                    CommandError::err("Command not allowed inside a transaction"),
                );
                return;
            }
            if !is_transaction_control(command) {
                if let Some(multi) = self.multi.as_mut() {
                    multi.queued.push(Queued { command, args });
                    self.client.multi.set(multi.queued.len() as i64);
                }
                self.out.queued();
                return;
            }
        }
        self.execute(command, args).await;
    }

    fn is_read_only_replica(&self) -> bool {
        self.shard.server.replication.is_replica() && self.shard.config().replica_read_only
    }

    /// Refuses a command before it runs; inside MULTI this dooms the transaction.
    fn reject(&mut self, command: Option<&'static Command>, error: CommandError) {
        if let Some(multi) = self.multi.as_mut() {
            multi.failed = true;
        }
        let mut message = error.to_string();
        if let Some(cmd) = command {
            self.shard.stats.borrow_mut().record_rejected(cmd.name());
            if cmd.name() == "exec" {
                // Valkey folds any refusal of EXEC into an EXECABORT and drops the transaction.
                self.discard_multi();
                let reason = message.strip_prefix("ERR ").unwrap_or(&message).to_string();
                message = format!("EXECABORT Transaction discarded because of: {reason}");
            }
        }
        self.out.error(&message);
        self.shard.stats.borrow_mut().record_error(&message);
    }

    /// Runs a command that passed the checks (also used for the commands of EXEC).
    pub async fn execute(&mut self, command: &'static Command, args: Args) {
        match command.handler {
            Handler::Keyed(_, split) => match self.route(command, &args) {
                Route::One(shard) => self.push_keyed(shard, command, args).await,
                Route::Many => {
                    self.flush_group().await;
                    let started = Instant::now();
                    let result = self.run_cross_shard(command, args, split).await;
                    self.finish(command, result, started);
                }
            },
            Handler::Conn(run) => {
                self.flush_group().await;
                let started = Instant::now();
                let result = run(self, &args);
                self.finish(command, result, started);
            }
            Handler::Coord(run) => {
                self.flush_group().await;
                let started = Instant::now();
                let result = run(self, args).await;
                self.finish(command, result, started);
            }
            Handler::Container => {
                self.flush_group().await;
                self.reject(
                    Some(command),
                    CommandError::WrongArity(command.name().to_string()),
                );
            }
        }
    }

    /// Writes a command's error (if any) and counts the call.
    fn finish(&mut self, command: &'static Command, result: CommandResult, started: Instant) {
        let failed = result.is_err();
        let mut stats = self.shard.stats.borrow_mut();
        if let Err(e) = result {
            let message = e.to_string();
            self.out.error(&message);
            stats.record_error(&message);
        }
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let track = self.shard.config().latency_tracking;
        stats.record_call(command.name(), nanos, failed, track);
    }

    fn route(&self, command: &Command, args: &Args) -> Route {
        if self.shard.count() == 1 {
            return Route::One(0);
        }
        let mut target = None;
        for position in command.key_positions(args) {
            let shard = self.shard.shard_of(args.get(position));
            match target {
                None => target = Some(shard),
                Some(t) if t != shard => return Route::Many,
                Some(_) => {}
            }
        }
        Route::One(target.unwrap_or(self.shard.index()))
    }

    /// The transaction the session's commands run under right now.
    pub fn tx_tag(&self) -> Option<TxTag> {
        self.tx_tag
    }

    /// How calls run now: under the session's transaction, or on their own.
    pub fn mode(&self) -> Mode {
        match self.tx_tag {
            Some(tag) => Mode::Transaction(tag),
            None => Mode::Plain,
        }
    }

    async fn push_keyed(&mut self, shard: usize, command: &'static Command, args: Args) {
        let call = KeyedCall {
            command,
            args,
            db: self.db,
            counted: true,
        };
        if shard == self.shard.index() && self.group.is_empty() {
            // Nothing earlier is outstanding: run it now, straight into the output.
            self.run_local(vec![call]).await;
            return;
        }
        self.group.per_shard[shard].push(call);
        self.group.order.push(shard);
        if self.group.order.len() >= GROUP_CALLS_MAX {
            self.flush_group().await;
        }
    }

    /// Runs calls on the own shard, writing into the output, waiting out transaction locks.
    async fn run_local(&mut self, calls: Vec<KeyedCall>) {
        let mode = self.mode();
        let mut effects = Effects::default();
        let start = self.out.len();
        run_keyed_waiting(
            &self.shard,
            &calls,
            0,
            &mut self.out,
            None,
            mode,
            &mut effects,
            usize::MAX,
        )
        .await;
        let end = self.out.len();
        self.note_effects(self.shard.index(), effects, Some((start, end)));
    }

    /// Records what commands run on `shard` mean for WAITAOF and for `always` replies.
    fn note_effects(&mut self, shard: usize, effects: Effects, replies: Option<(usize, usize)>) {
        if effects.wrote_to > 0 {
            self.woff[shard] = self.woff[shard].max(effects.wrote_to);
        }
        if effects.durable_at > 0 && shard == self.shard.index() {
            self.gate = self.gate.max(effects.durable_at);
            if let Some(range) = replies {
                self.gated.push(range);
            }
        }
    }

    /// Waits until the replies written so far may leave: in `always` mode, until the own
    /// shard's log covers what they depend on. If that write failed, the replies that depended
    /// on it become errors.
    pub async fn settle(&mut self) {
        let gate = std::mem::take(&mut self.gate);
        let gated = std::mem::take(&mut self.gated);
        if gate == 0 {
            return;
        }
        if let Err(failure) = self.shard.durable(gate, false).await {
            self.replace_replies(&gated, &failure);
        }
    }

    /// Writes the pending replies (once they may leave) and clears them. False when the client
    /// was killed meanwhile: the connection is to close.
    pub async fn write_out(&mut self) -> std::io::Result<bool> {
        self.settle().await;
        if self.out.is_empty() {
            return Ok(!self.client.is_killed());
        }
        let len = self.out.len();
        self.client.output_bytes.set(len);
        let Some(writer) = self.writer.as_mut() else {
            self.discard_replies();
            return Ok(true);
        };
        let client = Rc::clone(&self.client);
        let bytes = self.out.as_bytes();
        let write = async {
            writer.write_all(bytes).await?;
            Ok::<bool, std::io::Error>(true)
        };
        let killed = async {
            client.killed().await;
            Ok(false)
        };
        let written = futures_lite::future::or(write, killed).await?;
        self.out.clear();
        self.client.output_bytes.set(0);
        if written {
            self.client
                .total_net_out
                .set(self.client.total_net_out.get() + len as u64);
            self.shard.stats.borrow_mut().net_output_bytes += len as u64;
        }
        Ok(written)
    }

    fn replace_replies(&mut self, ranges: &[(usize, usize)], failure: &AofFailure) {
        let old = self.out.take();
        let mut at = 0;
        for &(start, end) in ranges {
            if start < at || end > old.len() {
                continue;
            }
            self.out.raw(&old[at..start]);
            // One error per reply in the range.
            let count = crate::protocol::reply::count_elements(&old[start..end]);
            for _ in 0..count {
                self.out.error(&failure.misconf());
            }
            at = end;
        }
        self.out.raw(&old[at..]);
    }

    /// Runs the collected keyed commands and writes their replies in the client's order.
    ///
    /// In rounds: each shard with commands left runs them until it has produced
    /// [`OUTPUT_FLUSH_BYTES`] of replies; the replies that can go out in order do, and are
    /// written to the socket before the next round, so memory stays bounded.
    pub async fn flush_group(&mut self) {
        if self.group.is_empty() {
            return;
        }
        #[cfg(feature = "fault-injection")]
        {
            let delay = crate::storage::faults::with(|f| std::mem::take(&mut f.delay_group_ms));
            if delay > 0 {
                glommio::timer::sleep(std::time::Duration::from_millis(delay)).await;
            }
        }
        let mode = self.mode();
        let local = self.shard.index();
        let protocol = self.out.protocol();
        let mut order: VecDeque<usize> = std::mem::take(&mut self.group.order).into();
        let mut left: Vec<Vec<KeyedCall>> = self
            .group
            .per_shard
            .iter_mut()
            .map(std::mem::take)
            .collect();
        let mut ready: Vec<VecDeque<Vec<u8>>> = (0..left.len()).map(|_| VecDeque::new()).collect();
        loop {
            let mut remote = Vec::new();
            for s in 0..left.len() {
                if s == local || left[s].is_empty() || !ready[s].is_empty() {
                    continue;
                }
                let calls = std::mem::take(&mut left[s]);
                let count = calls.len();
                let call = self
                    .shard
                    .call_outcome::<Replies, _>(s, keyed_job(calls, protocol, mode));
                remote.push((s, count, call));
            }
            self.shard.stats.borrow_mut().cross_shard_sent += remote.len() as u64;
            if !left[local].is_empty() && ready[local].is_empty() {
                let calls = std::mem::take(&mut left[local]);
                let mut out = ReplyBuf::new(protocol);
                let mut ends = Vec::with_capacity(calls.len());
                let mut effects = Effects::default();
                let next = run_keyed_waiting(
                    &self.shard,
                    &calls,
                    0,
                    &mut out,
                    Some(&mut ends),
                    mode,
                    &mut effects,
                    OUTPUT_FLUSH_BYTES,
                )
                .await;
                let done = Replies {
                    bytes: out.take(),
                    ends,
                    effects,
                    ..Replies::default()
                };
                queue_replies(&mut ready[local], &done);
                left[local] = calls.into_iter().skip(next).collect();
                self.note_effects(local, effects, None);
            }
            for (s, count, call) in remote {
                let mut r = call.await.unwrap_or_else(|e| failed_replies(e, count));
                self.note_effects(s, r.effects, None);
                if let Some(failure) = &r.failure {
                    let executed = r.ends.len();
                    r = error_replies(&failure.misconf(), executed).with_rest(r.rest);
                }
                queue_replies(&mut ready[s], &r);
                left[s] = std::mem::take(&mut r.rest);
            }
            let start = self.out.len();
            while let Some(&s) = order.front() {
                let Some(reply) = ready[s].pop_front() else {
                    break;
                };
                self.out.raw(&reply);
                order.pop_front();
            }
            let end = self.out.len();
            self.gated.push((start, end));
            if order.is_empty() {
                return;
            }
            // A shard stopped at its reply budget: let the client take what is ready first.
            if !matches!(self.write_out().await, Ok(true)) {
                self.close_after_reply = true;
                return;
            }
        }
    }

    /// Runs keyed commands (given as arguments) on `shard` under the session's transaction and
    /// returns their replies (for cross-shard commands made of per-shard steps).
    pub async fn run_calls(
        &mut self,
        shard: usize,
        db: usize,
        commands: Vec<Args>,
    ) -> CommandResult<Replies> {
        let mut calls = Vec::with_capacity(commands.len());
        for args in commands {
            let command = Registry::get()
                .lookup(args.get(0))
                .ok_or_else(|| CommandError::err("internal command missing"))?;
            calls.push(KeyedCall {
                command,
                args,
                db,
                counted: false,
            });
        }
        let protocol = self.out.protocol();
        let replies: Replies = self
            .shard
            .call_outcome(shard, keyed_job(calls, protocol, self.mode()))
            .await
            .map_err(mesh_error)?;
        self.note_effects(shard, replies.effects, None);
        if let Some(failure) = &replies.failure {
            return Err(CommandError::Coded(failure.misconf()));
        }
        Ok(replies)
    }

    /// A keyed command whose keys live on several shards.
    async fn run_cross_shard(
        &mut self,
        command: &'static Command,
        args: Args,
        split: Split,
    ) -> CommandResult {
        match split {
            Split::Coordinated(run) => run(self, args).await,
            Split::Never => Err(CommandError::err(
                "keys in request don't hash to the same shard",
            )),
            Split::SumIntegers | Split::Interleave | Split::AllOk => {
                self.run_split(command, &args, split).await
            }
        }
    }

    /// Runs a command once per shard with that shard's keys, under one transaction, and
    /// combines the replies.
    async fn run_split(
        &mut self,
        command: &'static Command,
        args: &Args,
        split: Split,
    ) -> CommandResult {
        let with_values = matches!(split, Split::AllOk);
        let mode = if command.is_write() {
            locks::Mode::Exclusive
        } else {
            locks::Mode::Shared
        };
        let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut key_shards = Vec::new();
        let mut keys = Vec::new();
        for position in command.key_positions(args) {
            let shard = self.shard.shard_of(args.get(position));
            let part = parts.entry(shard).or_default();
            part.push(position);
            if with_values {
                part.push(position + 1);
            }
            key_shards.push(shard);
            keys.push((shard, position));
        }
        let tx = self
            .lock(keys.iter().map(|&(s, p)| (s, args.get(p), mode)))
            .await?;
        let mut replies: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        for (&shard, positions) in &parts {
            let part = args.select(std::iter::once(0).chain(positions.iter().copied()));
            let r = self.run_calls(shard, self.db, vec![part]).await;
            match r {
                Ok(r) => {
                    replies.insert(shard, r.reply(0).to_vec());
                }
                Err(e) => {
                    self.commit(tx).await?;
                    return Err(e);
                }
            }
        }
        self.commit(tx).await?;
        if let Some(error) = replies.values().find_map(|r| reply_error(r)) {
            return Err(CommandError::Coded(error));
        }
        match split {
            Split::SumIntegers => {
                let total: i64 = replies.values().filter_map(|r| reply_integer(r)).sum();
                self.out.int(total);
            }
            Split::AllOk => self.out.ok(),
            _ => {
                let mut elements: BTreeMap<usize, Vec<&[u8]>> = BTreeMap::new();
                for (&shard, reply) in &replies {
                    elements.insert(shard, crate::protocol::reply::array_elements(reply));
                }
                let mut taken: BTreeMap<usize, usize> = BTreeMap::new();
                self.out.array(key_shards.len());
                for shard in key_shards {
                    let i = taken.entry(shard).or_default();
                    if let Some(element) = elements.get(&shard).and_then(|e| e.get(*i)) {
                        self.out.raw(element);
                    }
                    *i += 1;
                }
            }
        }
        Ok(())
    }

    /// Commits a transaction this session began (no-op inside EXEC, whose transaction commits
    /// at its end): logs what it wrote, releases its locks, and in `always` mode waits until
    /// every part is durable. A failed write is this command's error.
    pub async fn commit(&mut self, tx: Option<Transaction>) -> CommandResult {
        let Some(tx) = tx else {
            return Ok(());
        };
        self.tx_tag = None;
        let ends = tx.commit().await.map_err(mesh_error)?;
        let mut failure = None;
        for (shard, end) in ends {
            self.woff[shard] = self.woff[shard].max(end);
            if end > 0 && self.shard.aof_mode() == Some(FsyncMode::Always) {
                let waited: Result<(), AofFailure> = self
                    .shard
                    .call_async(shard, move |s| s.durable(end, false))
                    .await
                    .map_err(mesh_error)?;
                if let Err(f) = waited {
                    failure = Some(f);
                }
            }
        }
        match failure {
            Some(f) => Err(CommandError::Coded(f.misconf())),
            None => Ok(()),
        }
    }

    /// Takes transaction locks on `keys` (`(shard, key, mode)`), unless this session already
    /// runs inside EXEC, whose transaction holds them.
    pub async fn lock<'k>(
        &mut self,
        keys: impl IntoIterator<Item = (usize, &'k [u8], locks::Mode)>,
    ) -> CommandResult<Option<Transaction>> {
        if self.in_exec {
            return Ok(None);
        }
        let mut plan: BTreeMap<usize, ShardPlan> = BTreeMap::new();
        for (shard, key, mode) in keys {
            plan.entry(shard)
                .or_default()
                .locks
                .add_key(self.db, key, mode);
        }
        let (tx, _) = Transaction::begin(&self.shard, plan)
            .await
            .map_err(mesh_error)?;
        self.tx_tag = Some(tx.tag());
        Ok(Some(tx))
    }

    /// Runs inside EXEC under `tag` (or leaves it with `None`).
    pub fn set_exec(&mut self, tag: Option<TxTag>) {
        self.in_exec = tag.is_some();
        self.tx_tag = tag;
    }

    /// Takes a whole-shard lock on every shard (FLUSHALL, SWAPDB), unless inside EXEC.
    pub async fn lock_all_shards(
        &mut self,
        mode: locks::Mode,
    ) -> CommandResult<Option<Transaction>> {
        if self.in_exec {
            return Ok(None);
        }
        let mut plan: BTreeMap<usize, ShardPlan> = BTreeMap::new();
        for shard in 0..self.shard.count() {
            let mut locks = LockSet::default();
            locks.add_whole_shard(mode);
            plan.insert(shard, ShardPlan { locks, watch: None });
        }
        let (tx, _) = Transaction::begin(&self.shard, plan)
            .await
            .map_err(mesh_error)?;
        self.tx_tag = Some(tx.tag());
        Ok(Some(tx))
    }

    /// Runs `job` on every shard and collects the results in shard order.
    pub async fn gather<R, F>(&self, job: F) -> CommandResult<Vec<R>>
    where
        R: Send + 'static,
        F: Fn(&Rc<Shard>) -> R + Send + Clone + 'static,
    {
        let calls: Vec<_> = (0..self.shard.count())
            .map(|s| self.shard.call(s, job.clone()))
            .collect();
        let mut results = Vec::with_capacity(calls.len());
        for call in calls {
            results.push(call.await.map_err(mesh_error)?);
        }
        Ok(results)
    }

    /// Leaves MULTI without running anything.
    pub fn discard_multi(&mut self) {
        self.multi = None;
        self.client.multi.set(-1);
        self.unwatch_all();
    }

    /// Forgets every WATCHed key (on their shards too).
    pub fn unwatch_all(&mut self) {
        if self.watched.is_empty() {
            return;
        }
        let client = self.client.id;
        let mut per_shard: BTreeMap<usize, BTreeMap<usize, Vec<Vec<u8>>>> = BTreeMap::new();
        for w in self.watched.drain(..) {
            per_shard
                .entry(w.shard)
                .or_default()
                .entry(w.db)
                .or_default()
                .push(w.key);
        }
        for (shard, per_db) in per_shard {
            self.shard.post(shard, move |s| {
                let mut dbs = s.dbs();
                for (db, keys) in per_db {
                    if let Some(d) = dbs.get_mut(db) {
                        d.unwatch(client, &keys);
                    }
                }
            });
        }
        self.client.watched_keys.set(0);
    }

    /// Writes Valkey's HELP reply for a container command.
    pub fn reply_help(&mut self, command: &str, lines: &[&str]) {
        self.out.array(lines.len() + 3);
        self.out.simple(&format!(
            "{command} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
        ));
        for line in lines {
            self.out.simple(line);
        }
        self.out.simple("HELP");
        self.out.simple("    Print this help.");
    }

    /// Cleans up after the connection closed.
    pub fn close(&mut self) {
        self.multi = None;
        self.unwatch_all();
    }
}

/// EXEC, DISCARD, MULTI, WATCH, QUIT and RESET run even inside MULTI.
fn is_transaction_control(command: &Command) -> bool {
    matches!(
        command.name(),
        "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
    )
}

/// The text of an unknown-command or unknown-subcommand error, as Valkey builds it.
fn lookup_error_text(error: LookupError<'_>, args: &Args) -> String {
    match error {
        LookupError::Unknown => {
            let mut listed = String::new();
            for arg in args.iter().skip(1) {
                if listed.len() >= 128 {
                    break;
                }
                let room = 128 - listed.len();
                let text = String::from_utf8_lossy(arg);
                let shown: String = truncate_bytes(&text, room);
                listed.push('\'');
                listed.push_str(&shown);
                listed.push_str("' ");
            }
            let name = truncate_bytes(&String::from_utf8_lossy(args.get(0)), 128);
            format!("unknown command '{name}', with args beginning with: {listed}")
        }
        LookupError::UnknownSubcommand(container) => format!(
            "unknown subcommand '{}'. Try {} HELP.",
            truncate_bytes(&String::from_utf8_lossy(args.get(1)), 128),
            container.name().to_ascii_uppercase()
        ),
        LookupError::Arity(container) => {
            format!(
                "wrong number of arguments for '{}' command",
                container.name()
            )
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn mesh_error(e: MeshError) -> CommandError {
    CommandError::err(e.to_string())
}

/// Error replies for `count` calls whose shard did not answer.
fn failed_replies(error: MeshError, count: usize) -> Replies {
    error_replies(&format!("ERR {error}"), count)
}

/// `count` identical error replies.
fn error_replies(message: &str, count: usize) -> Replies {
    let mut out = ReplyBuf::default();
    let mut ends = Vec::with_capacity(count);
    for _ in 0..count {
        out.error(message);
        ends.push(out.len());
    }
    Replies {
        bytes: out.take(),
        ends,
        ..Replies::default()
    }
}

/// Queues each reply of `replies` as its own buffer.
fn queue_replies(queue: &mut VecDeque<Vec<u8>>, replies: &Replies) {
    for i in 0..replies.ends.len() {
        queue.push_back(replies.reply(i).to_vec());
    }
}

/// The message of an encoded error reply.
fn reply_error(reply: &[u8]) -> Option<String> {
    let body = reply.strip_prefix(b"-")?;
    let body = body.strip_suffix(b"\r\n").unwrap_or(body);
    Some(String::from_utf8_lossy(body).into_owned())
}

/// The value of an encoded integer reply.
fn reply_integer(reply: &[u8]) -> Option<i64> {
    let body = reply.strip_prefix(b":")?;
    let body = body.strip_suffix(b"\r\n")?;
    crate::protocol::parser::parse_i64(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_command_text_matches_valkey() {
        let e = |words: &[&str]| lookup_error_text(LookupError::Unknown, &Args::from_vecs(words));
        assert_eq!(
            e(&["nosuchcmd"]),
            "unknown command 'nosuchcmd', with args beginning with: "
        );
        assert_eq!(
            e(&["nosuchcmd", "a", "b"]),
            "unknown command 'nosuchcmd', with args beginning with: 'a' 'b' "
        );
        let a60 = "a".repeat(60);
        let b60 = "b".repeat(60);
        let c60 = "c".repeat(60);
        assert_eq!(
            e(&["x", &a60, &b60, &c60, "dddd"]),
            format!("unknown command 'x', with args beginning with: '{a60}' '{b60}' 'cc' ")
        );
        let a126 = "a".repeat(126);
        assert_eq!(
            e(&["x", &a126, "bbbb"]),
            format!("unknown command 'x', with args beginning with: '{a126}' ")
        );
    }
}
