//! Server commands: INFO, CONFIG, COMMAND, DBSIZE, TIME, FLUSHDB, FLUSHALL, SWAPDB, SHUTDOWN,
//! DEBUG, WAITAOF and BGREWRITEAOF.

use std::rc::Rc;
use std::time::Duration;

use super::args::{glob_match, parse_float};
use super::replication::{demoted, expiry, parse_timeout, replicas_reach};
use super::table::{flags, Command, CoordFuture, Handler, Registry};
use crate::config::{DebugAccess, DIRECTIVES};
use crate::error::{CommandError, CommandResult};
use crate::protocol::{Args, ReplyBuf};
use crate::server::session::Session;
use crate::server::state::unix_us;
use crate::shard::db::Db;
use crate::shard::dict::Dict;
use crate::shard::locks::Mode;
use crate::shard::value::Value;
use crate::shard::Shard;
use crate::storage::record::TxTag;
use crate::storage::rewrite::{self, Purpose, Shards};
use crate::telemetry::info::{self, ShardSnapshot};

pub static HANDLERS: &[(&str, Handler)] = &[
    ("info", Handler::Coord(info)),
    ("config", Handler::Container),
    ("config|get", Handler::Conn(config_get)),
    ("config|set", Handler::Coord(config_set)),
    ("config|resetstat", Handler::Coord(config_resetstat)),
    ("config|help", Handler::Conn(config_help)),
    ("command", Handler::Conn(command_all)),
    ("command|count", Handler::Conn(command_count)),
    ("command|info", Handler::Conn(command_info)),
    ("command|docs", Handler::Conn(command_docs)),
    ("command|getkeys", Handler::Conn(command_getkeys)),
    ("command|getkeysandflags", Handler::Conn(command_getkeys)),
    ("command|list", Handler::Conn(command_list)),
    ("command|help", Handler::Conn(command_help)),
    ("dbsize", Handler::Coord(dbsize)),
    ("time", Handler::Conn(time)),
    ("flushdb", Handler::Coord(flushdb)),
    ("flushall", Handler::Coord(flushall)),
    ("swapdb", Handler::Coord(swapdb)),
    ("shutdown", Handler::Coord(shutdown)),
    ("debug", Handler::Coord(debug)),
    ("waitaof", Handler::Coord(waitaof)),
    ("bgrewriteaof", Handler::Conn(bgrewriteaof)),
];

fn info(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let wanted: Vec<String> = args
            .iter()
            .skip(1)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let sections = info::requested_sections(&wanted);
        let snapshots: Vec<ShardSnapshot> = session.gather(|s| ShardSnapshot::take(s)).await?;
        let config = session.shard.config();
        let text = info::render(&sections, &snapshots, &session.shard.server, &config);
        session.out.verbatim("txt", text.as_bytes());
        Ok(())
    })
}

fn config_get(session: &mut Session, args: &Args) -> CommandResult {
    let config = session.shard.config();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pattern in args.iter().skip(2) {
        let pattern = String::from_utf8_lossy(pattern).into_owned();
        let is_glob = pattern.contains(['*', '?', '[']);
        for d in DIRECTIVES {
            let matched = if is_glob {
                glob_match(pattern.as_bytes(), d.name.as_bytes(), true)
            } else {
                d.name.eq_ignore_ascii_case(&pattern)
            };
            if matched && !pairs.iter().any(|(n, _)| n.eq_ignore_ascii_case(d.name)) {
                // A literal name is echoed as the client wrote it, as Valkey does.
                let shown = if is_glob {
                    d.name.to_string()
                } else {
                    pattern.clone()
                };
                pairs.push((shown, d.value(&config)));
            }
        }
    }
    session.out.map(pairs.len());
    for (name, value) in pairs {
        session.out.bulk(name.as_bytes());
        session.out.bulk(value.as_bytes());
    }
    Ok(())
}

fn config_set(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        if !args.len().is_multiple_of(2) {
            return Err(CommandError::Syntax);
        }
        let pairs: Vec<(String, String)> = (2..args.len())
            .step_by(2)
            .map(|i| (args.text(i), args.text(i + 1)))
            .collect();
        let server = &session.shard.server;
        let was_on = server.config.get().appendonly;
        server.config.set(&pairs).map_err(CommandError::Coded)?;
        let config = server.config.get();
        crate::server::logging::apply_level(config.loglevel);
        match (was_on, config.appendonly) {
            (true, false) => rewrite::stop_logs(&session.shard).await,
            (false, true) => start_log(&session.shard),
            _ => {}
        }
        session.out.ok();
        Ok(())
    })
}

/// Starts turning the log on in the background. If a rewrite still runs (an earlier attempt
/// being cancelled), the cron starts it once that one is gone.
pub fn start_log(shard: &Rc<Shard>) {
    if shard.server.rewrite.try_begin() {
        glommio::spawn_local(rewrite::run(Rc::clone(shard), Purpose::TurnOn, Shards::All)).detach();
    }
}

/// BGREWRITEAOF: every shard's log is rewritten in the background.
fn bgrewriteaof(session: &mut Session, _args: &Args) -> CommandResult {
    let status = &session.shard.server.rewrite;
    if status.in_progress() {
        return Err(CommandError::err(
            "Background append only file rewriting already in progress",
        ));
    }
    if session.shard.aof().is_none() {
        return Err(CommandError::err(
            "Background append only file rewriting needs the append-only log: it is off \
             (CONFIG SET appendonly yes turns it on)",
        ));
    }
    if !status.try_begin() {
        // A replica's full sync holds the keyspace snapshots: the cron starts the rewrite
        // once they are free, as Valkey does while a child process runs.
        status.schedule();
        session
            .out
            .simple("Background append only file rewriting scheduled");
        return Ok(());
    }
    glommio::spawn_local(rewrite::run(
        Rc::clone(&session.shard),
        Purpose::Compact,
        Shards::All,
    ))
    .detach();
    // Inside EXEC the rewrite's cut waits for the transaction's locks, as Valkey defers it.
    session.out.simple(if session.in_exec {
        "Background append only file rewriting scheduled"
    } else {
        "Background append only file rewriting started"
    });
    Ok(())
}

fn config_resetstat(session: &mut Session, _args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        session
            .gather(|s| {
                s.stats.borrow_mut().reset();
                if let Some(aof) = s.aof().as_mut() {
                    aof.stats.reset();
                }
                for db in s.dbs().iter_mut() {
                    db.stats = Default::default();
                }
            })
            .await?;
        session.out.ok();
        Ok(())
    })
}

fn config_help(session: &mut Session, _args: &Args) -> CommandResult {
    session.reply_help(
        "CONFIG",
        &[
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
            "SET <directive> <value>",
            "    Set the configuration <directive> to <value>.",
            "RESETSTAT",
            "    Reset statistics reported by the INFO command.",
        ],
    );
    Ok(())
}

/// Writes a set of simple strings (flags, categories).
fn write_status_set(out: &mut ReplyBuf, items: &[String]) {
    out.set(items.len());
    for item in items {
        out.simple(item);
    }
}

/// The COMMAND INFO entry of one command (10 elements, subcommands nested).
fn write_command_info(out: &mut ReplyBuf, command: &Command) {
    let meta = command.meta;
    out.array(10);
    out.bulk(meta.name.as_bytes());
    out.int(i64::from(meta.arity));
    let names: Vec<String> = flags::NAMES
        .iter()
        .filter(|(bit, _)| meta.flags & bit != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    write_status_set(out, &names);
    let (first, last, step) = command.legacy_key_range();
    out.int(first);
    out.int(last);
    out.int(step);
    let categories: Vec<String> = meta.acl.iter().map(|c| format!("@{c}")).collect();
    write_status_set(out, &categories);
    out.set(meta.tips.len());
    for tip in meta.tips {
        out.bulk(tip.as_bytes());
    }
    out.set(meta.key_specs.len());
    for spec in meta.key_specs {
        out.map(3);
        out.bulk(b"flags");
        let spec_flags: Vec<String> = spec.flags.iter().map(|f| f.to_string()).collect();
        write_status_set(out, &spec_flags);
        out.bulk(b"begin_search");
        out.map(2);
        out.bulk(b"type");
        out.bulk(b"index");
        out.bulk(b"spec");
        out.map(1);
        out.bulk(b"index");
        out.int(i64::from(spec.begin));
        out.bulk(b"find_keys");
        out.map(2);
        out.bulk(b"type");
        out.bulk(b"range");
        out.bulk(b"spec");
        out.map(3);
        out.bulk(b"lastkey");
        out.int(i64::from(spec.last));
        out.bulk(b"keystep");
        out.int(i64::from(spec.step));
        out.bulk(b"limit");
        out.int(i64::from(spec.limit));
    }
    let mut subs: Vec<&Command> = command.subcommands.values().collect();
    subs.sort_by_key(|c| c.name());
    // Valkey answers an empty set when there are none, an array otherwise.
    if subs.is_empty() {
        out.set(0);
    } else {
        out.array(subs.len());
    }
    for sub in subs {
        write_command_info(out, sub);
    }
}

fn write_command_docs(out: &mut ReplyBuf, command: &Command) {
    let doc = &command.meta.doc;
    let has_subs = !command.subcommands.is_empty();
    out.map(4 + usize::from(has_subs));
    out.bulk(b"summary");
    out.bulk(doc.summary.as_bytes());
    out.bulk(b"since");
    out.bulk(doc.since.as_bytes());
    out.bulk(b"group");
    out.bulk(doc.group.as_bytes());
    out.bulk(b"complexity");
    out.bulk(doc.complexity.as_bytes());
    if has_subs {
        let mut subs: Vec<&Command> = command.subcommands.values().collect();
        subs.sort_by_key(|c| c.name());
        out.bulk(b"subcommands");
        out.map(subs.len());
        for sub in subs {
            out.bulk(sub.name().as_bytes());
            write_command_docs(out, sub);
        }
    }
}

fn sorted_commands() -> Vec<&'static Command> {
    let mut all: Vec<&Command> = Registry::get().iter().collect();
    all.sort_by_key(|c| c.name());
    all
}

fn command_all(session: &mut Session, _args: &Args) -> CommandResult {
    let all = sorted_commands();
    session.out.array(all.len());
    for command in all {
        write_command_info(&mut session.out, command);
    }
    Ok(())
}

fn command_count(session: &mut Session, _args: &Args) -> CommandResult {
    session.out.int(Registry::get().len() as i64);
    Ok(())
}

fn command_info(session: &mut Session, args: &Args) -> CommandResult {
    if args.len() == 2 {
        return command_all(session, args);
    }
    session.out.array(args.len() - 2);
    for name in args.iter().skip(2) {
        match Registry::get().by_full_name(&String::from_utf8_lossy(name)) {
            Some(command) => write_command_info(&mut session.out, command),
            None => session.out.null(),
        }
    }
    Ok(())
}

fn command_docs(session: &mut Session, args: &Args) -> CommandResult {
    let found: Vec<&Command> = if args.len() == 2 {
        sorted_commands()
    } else {
        args.iter()
            .skip(2)
            .filter_map(|n| Registry::get().by_full_name(&String::from_utf8_lossy(n)))
            .collect()
    };
    session.out.map(found.len());
    for command in found {
        session.out.bulk(command.name().as_bytes());
        write_command_docs(&mut session.out, command);
    }
    Ok(())
}

fn command_getkeys(session: &mut Session, args: &Args) -> CommandResult {
    let with_flags = args.is(1, "getkeysandflags");
    let target = args.tail(2);
    let command = Registry::get()
        .resolve(&target)
        .map_err(|_| CommandError::err("Invalid command specified"))?;
    if command.meta.key_specs.is_empty() {
        return Err(CommandError::err("The command has no key arguments"));
    }
    if !command.arity_ok(target.len()) {
        return Err(CommandError::err(
            "Invalid number of arguments specified for command",
        ));
    }
    let positions = command.key_positions(&target);
    session.out.array(positions.len());
    for position in positions {
        if with_flags {
            session.out.array(2);
            session.out.bulk(target.get(position));
            let spec_flags = key_flags(command, &target, position);
            write_status_set(&mut session.out, &spec_flags);
        } else {
            session.out.bulk(target.get(position));
        }
    }
    Ok(())
}

/// The flags of the key at `position`. Key specs marked `variable_flags` depend on the
/// arguments: SET writes over its key (`OW update`) unless GET also reads it.
fn key_flags(command: &Command, args: &Args, position: usize) -> Vec<String> {
    let spec = command
        .meta
        .key_specs
        .iter()
        .rev()
        .find(|s| i64::from(s.begin) <= position as i64);
    let Some(spec) = spec else {
        return Vec::new();
    };
    if spec.flags.contains(&"variable_flags") && command.name() == "set" {
        let reads = (3..args.len()).any(|i| args.is(i, "get"));
        let flags: &[&str] = if reads {
            &["RW", "access", "update"]
        } else {
            &["OW", "update"]
        };
        return flags.iter().map(|f| f.to_string()).collect();
    }
    spec.flags.iter().map(|f| f.to_string()).collect()
}

fn command_list(session: &mut Session, args: &Args) -> CommandResult {
    enum Filter {
        All,
        Pattern(Vec<u8>),
        Category(String),
        Module,
    }
    let filter = match args.len() {
        2 => Filter::All,
        5 if args.is(2, "filterby") => {
            if args.is(3, "pattern") {
                Filter::Pattern(args.get(4).to_vec())
            } else if args.is(3, "aclcat") {
                Filter::Category(args.text(4).to_ascii_lowercase())
            } else if args.is(3, "module") {
                Filter::Module
            } else {
                return Err(CommandError::Syntax);
            }
        }
        _ => return Err(CommandError::Syntax),
    };
    let mut names = Vec::new();
    for command in sorted_commands() {
        let mut subs: Vec<&Command> = command.subcommands.values().collect();
        subs.sort_by_key(|c| c.name());
        for c in std::iter::once(command).chain(subs) {
            let keep = match &filter {
                Filter::All => true,
                Filter::Pattern(p) => glob_match(p, c.name().as_bytes(), true),
                Filter::Category(cat) => c.meta.acl.contains(&cat.as_str()),
                Filter::Module => false,
            };
            if keep {
                names.push(c.name());
            }
        }
    }
    session.out.array(names.len());
    for name in names {
        session.out.bulk(name.as_bytes());
    }
    Ok(())
}

fn command_help(session: &mut Session, _args: &Args) -> CommandResult {
    session.reply_help(
        "COMMAND",
        &[
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands in this server.",
            "LIST",
            "    Return a list of all commands in this server.",
            "INFO [<command-name> ...]",
            "    Return details about multiple commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about multiple commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "GETKEYS <full-command>",
            "    Return the keys from a full command.",
            "GETKEYSANDFLAGS <full-command>",
            "    Return the keys and the access flags from a full command.",
        ],
    );
    Ok(())
}

fn dbsize(session: &mut Session, _args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let db = session.db;
        let sizes = session.gather(move |s| s.dbs()[db].len()).await?;
        session.out.int(sizes.iter().sum::<usize>() as i64);
        Ok(())
    })
}

fn time(session: &mut Session, _args: &Args) -> CommandResult {
    let now = unix_us();
    session.out.array(2);
    session.out.bulk_int(now / 1_000_000);
    session.out.bulk_int(now % 1_000_000);
    Ok(())
}

/// Parses FLUSHDB/FLUSHALL's optional `ASYNC`/`SYNC`; true for ASYNC.
fn flush_mode(args: &Args) -> CommandResult<bool> {
    match args.len() {
        1 => Ok(false),
        2 if args.is(1, "async") => Ok(true),
        2 if args.is(1, "sync") => Ok(false),
        _ => Err(CommandError::Syntax),
    }
}

/// What FLUSHDB/FLUSHALL took out of a database.
type Flushed = (Dict<Value>, Dict<i64>);

/// Frees emptied databases: on a helper thread for ASYNC, here otherwise.
fn dispose(old: Vec<Flushed>, asynchronous: bool) {
    if asynchronous {
        let spawned = std::thread::Builder::new()
            .name("corekv-lazyfree".into())
            .spawn(move || drop(old));
        if let Err(e) = spawned {
            log::warn!("could not start a thread to free memory: {e}");
        }
    }
}

fn flush(session: &mut Session, args: Args, all: bool) -> CoordFuture<'_> {
    Box::pin(async move {
        let asynchronous = flush_mode(&args)?;
        let db = session.db;
        let tx = session.lock_all_shards(Mode::Exclusive).await?;
        let tag = session.tx_tag();
        let logged = Args::from_vecs([if all { "FLUSHALL" } else { "FLUSHDB" }]);
        let result = session
            .gather(move |s| {
                let mut dbs = s.dbs();
                let mut old = Vec::new();
                for (i, d) in dbs.iter_mut().enumerate() {
                    if all || i == db {
                        old.push(d.flush());
                    }
                }
                drop(dbs);
                log_in_tx(s, tag, db, &logged);
                dispose(old, asynchronous);
            })
            .await;
        session.commit(tx).await?;
        result?;
        session.out.ok();
        Ok(())
    })
}

/// Keeps a whole-keyspace command in the log part of transaction `tag` on this shard.
fn log_in_tx(shard: &crate::shard::Shard, tag: Option<TxTag>, db: usize, args: &Args) {
    if let Some(tag) = tag {
        shard.journal().buffer_tx(tag, db as u32, args.clone());
    }
}

fn flushdb(session: &mut Session, args: Args) -> CoordFuture<'_> {
    flush(session, args, false)
}

fn flushall(session: &mut Session, args: Args) -> CoordFuture<'_> {
    flush(session, args, true)
}

fn swapdb(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let first = crate::protocol::parser::parse_i64(args.get(1))
            .ok_or_else(|| CommandError::err("invalid first DB index"))?;
        let second = crate::protocol::parser::parse_i64(args.get(2))
            .ok_or_else(|| CommandError::err("invalid second DB index"))?;
        let databases = session.shard.config().databases;
        let index = |n: i64| {
            usize::try_from(n)
                .ok()
                .filter(|&i| i < databases)
                .ok_or(CommandError::DbIndexOutOfRange)
        };
        let (a, b) = (index(first)?, index(second)?);
        let tx = session.lock_all_shards(Mode::Exclusive).await?;
        let tag = session.tx_tag();
        let logged = args.clone();
        let result = if a != b {
            session
                .gather(move |s| {
                    let mut dbs = s.dbs();
                    let (low, high) = (a.min(b), a.max(b));
                    let (left, right) = dbs.split_at_mut(high);
                    Db::swap_contents(&mut left[low], &mut right[0]);
                    drop(dbs);
                    log_in_tx(s, tag, 0, &logged);
                })
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        session.commit(tx).await?;
        result?;
        session.out.ok();
        Ok(())
    })
}

fn shutdown(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let (mut save, mut nosave, mut abort) = (false, false, false);
        for (i, _) in args.iter().enumerate().skip(1) {
            if args.is(i, "nosave") {
                nosave = true;
            } else if args.is(i, "save") {
                save = true;
            } else if args.is(i, "abort") {
                abort = true;
            } else if !args.is(i, "now") && !args.is(i, "force") {
                return Err(CommandError::Syntax);
            }
        }
        if (save && nosave) || (abort && args.len() > 2) {
            return Err(CommandError::Syntax);
        }
        if abort {
            return Err(CommandError::err("No shutdown in progress."));
        }
        log::warn!("User requested shutdown...");
        // This connection waits on the shutdown (won or lost to another one): none waits
        // on it.
        session.shard.connection_shutting_down();
        crate::server::shutdown(&session.shard).await;
        Ok(())
    })
}

fn debug(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        debug_allowed(session)?;
        #[cfg(feature = "fault-injection")]
        if args.is(1, "fault") {
            return debug_fault(session, &args).await;
        }
        debug_now(session, &args)
    })
}

/// `enable-debug-command`: Valkey's refusal unless allowed for this connection.
fn debug_allowed(session: &Session) -> CommandResult {
    let allowed = match session.shard.config().enable_debug_command {
        DebugAccess::Yes => true,
        DebugAccess::No => false,
        DebugAccess::Local => session.client.addr.ip().is_loopback(),
    };
    if !allowed {
        return Err(CommandError::err(
            "DEBUG command not allowed. If the enable-debug-command option is set to \"local\", \
             you can run it from a local connection, otherwise you need to set this option in \
             the configuration file, and then restart the server.",
        ));
    }
    Ok(())
}

/// The DEBUG subcommands that need no other shard.
fn debug_now(session: &mut Session, args: &Args) -> CommandResult {
    if args.is(1, "sleep") && args.len() == 3 {
        // Valkey reads the duration with strtod: anything unparsable sleeps for 0 seconds.
        let seconds = parse_float(args.get(2)).unwrap_or(0.0).max(0.0);
        // Stalls this shard on purpose: DEBUG SLEEP exists to simulate a blocked server.
        std::thread::sleep(Duration::from_secs_f64(seconds.min(1e9)));
        session.out.ok();
        return Ok(());
    }
    if args.is(1, "help") && args.len() == 2 {
        session.reply_help(
            "DEBUG",
            &[
                "SLEEP <seconds>",
                "    Stop the server for <seconds>. Decimals allowed.",
            ],
        );
        return Ok(());
    }
    Err(CommandError::err(format!(
        "unknown subcommand or wrong number of arguments for '{}'. Try DEBUG HELP.",
        args.text(1)
    )))
}

/// Every shard's durable watermark (`None` where the shard has no log).
async fn watermarks(session: &Session) -> CommandResult<Vec<Option<u64>>> {
    session.gather(|s| s.with_aof(|a| a.durable())).await
}

/// Whether every shard's log covers this connection's last write there (1), or not (0).
fn local_ack(session: &Session, durable: &[Option<u64>]) -> i64 {
    if !session.shard.config().appendonly || session.shard.server.rewrite.turning_on() {
        return 0;
    }
    // A shard without a log while appendonly is on has not started it yet: nothing is on disk.
    let covered = session
        .woff
        .iter()
        .zip(durable)
        .all(|(&w, d)| d.is_some_and(|d| w == 0 || d >= w));
    i64::from(covered)
}

/// How often a WAITAOF checks whether a log being turned on has started.
const LOG_START_POLL: Duration = Duration::from_millis(5);

/// Waits until every shard's log is durable up to this connection's last write there, asking
/// each shard to sync now rather than at its next scheduled sync. A log being turned on is
/// waited for first: what was written before it started is durable once its bases are.
async fn wait_local(session: &Session, mut durable: Vec<Option<u64>>) -> CommandResult {
    while session.shard.config().appendonly
        && (session.shard.server.rewrite.turning_on() || durable.iter().any(Option::is_none))
    {
        glommio::timer::sleep(LOG_START_POLL).await;
        durable = watermarks(session).await?;
    }
    let calls: Vec<_> = session
        .woff
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0)
        .map(|(shard, &w)| session.shard.call_async(shard, move |s| s.durable(w, true)))
        .collect();
    for call in calls {
        let durable: Result<(), crate::storage::aof::AofFailure> =
            call.await.map_err(|e| CommandError::err(e.to_string()))?;
        durable.map_err(|f| CommandError::Coded(f.misconf()))?;
    }
    Ok(())
}

fn waitaof(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let numlocal =
            crate::protocol::parser::parse_i64(args.get(1)).ok_or(CommandError::NotInteger)?;
        if !(0..=1).contains(&numlocal) {
            return Err(CommandError::err(
                "value is out of range, value must between 0 and 1",
            ));
        }
        let numreplicas = crate::protocol::parser::parse_i64(args.get(2))
            .filter(|&n| n >= 0)
            .ok_or_else(|| CommandError::err("value is out of range, must be positive"))?;
        let timeout = parse_timeout(args.get(3))?;
        let replication = &session.shard.server.replication;
        if replication.is_replica() {
            return Err(CommandError::err(
                "WAITAOF cannot be used with replica instances. Please also note that writes to \
                 replicas are just local and are not propagated.",
            ));
        }
        if numlocal > 0 && !session.shard.config().appendonly {
            return Err(CommandError::err(
                "WAITAOF cannot be used when numlocal is set but appendonly is disabled.",
            ));
        }
        let woff = session.woff.clone();
        let durable = watermarks(session).await?;
        let mut acked = local_ack(session, &durable);
        let mut replicas_acked = replication.count_acked(&woff, true);
        let satisfied = acked >= numlocal && replicas_acked >= numreplicas;
        if !satisfied && !session.in_exec {
            if replicas_acked < numreplicas {
                replication.request_getack(&woff);
            }
            let wanted = async {
                let local = async {
                    if numlocal > acked {
                        wait_local(session, durable).await?;
                    }
                    Ok(())
                };
                let replicas = replicas_reach(session, || {
                    replication.count_acked(&woff, true) >= numreplicas
                });
                futures_lite::future::try_zip(local, replicas)
                    .await
                    .map(|_| ())
            };
            let expired = async {
                expiry(timeout).await;
                Ok::<(), CommandError>(())
            };
            let waited = futures_lite::future::or(
                futures_lite::future::or(wanted, demoted(session)),
                expired,
            )
            .await;
            // A log turned off while this waited releases it with an error; Valkey answers
            // with the numlocal error then.
            if numlocal > 0 && !session.shard.config().appendonly {
                return Err(CommandError::err(
                    "WAITAOF cannot be used when numlocal is set but appendonly is disabled.",
                ));
            }
            if let Err(e) = waited {
                if replication.is_replica() {
                    session.close_after_reply = true;
                }
                return Err(e);
            }
            acked = local_ack(session, &watermarks(session).await?);
            replicas_acked = replication.count_acked(&woff, true);
        }
        session.out.array(2);
        session.out.int(acked);
        session.out.int(replicas_acked);
        Ok(())
    })
}

/// `DEBUG FAULT <shard> stall|resume|fail-write|fail-sync [count] [EIO|ENOSPC]`, or
/// `DEBUG FAULT <shard> delay <ms>` (tests only).
#[cfg(feature = "fault-injection")]
async fn debug_fault(session: &mut Session, args: &Args) -> CommandResult {
    let shard = args
        .text(2)
        .parse::<usize>()
        .ok()
        .filter(|&s| s < session.shard.count())
        .ok_or(CommandError::Syntax)?;
    let action = args.text(3).to_ascii_lowercase();
    let count: u32 = if args.len() > 4 {
        args.text(4).parse().map_err(|_| CommandError::Syntax)?
    } else {
        1
    };
    let errno = match args.text(5).to_ascii_uppercase().as_str() {
        "" | "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        _ => return Err(CommandError::Syntax),
    };
    if !["stall", "resume", "fail-write", "fail-sync", "delay"].contains(&action.as_str()) {
        return Err(CommandError::Syntax);
    }
    // Armed before the reply: the next command of the test already meets the fault.
    let armed = session.shard.call(shard, move |_| {
        crate::storage::faults::with(|f| match action.as_str() {
            "stall" => f.stall = true,
            "resume" => f.stall = false,
            "delay" => f.delay_group_ms = u64::from(count),
            "fail-write" => {
                f.fail_writes = count;
                f.errno = errno;
            }
            _ => {
                f.fail_syncs = count;
                f.errno = errno;
            }
        })
    });
    armed
        .await
        .map_err(|_| CommandError::err("the shard did not answer"))?;
    session.out.ok();
    Ok(())
}
