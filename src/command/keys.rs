//! Generic key commands: existence, deletion, renaming, copying, expiry, introspection, and
//! the whole-keyspace walks (KEYS, SCAN, RANDOMKEY).

use super::args::{glob_match, int_arg};
use super::table::{CoordFuture, Handler, Split};
use super::KeyCtx;
use crate::error::{CommandError, CommandResult};
use crate::protocol::Args;
use crate::server::session::Session;
use crate::shard::small_bytes::SmallBytes;
use crate::shard::value::Value;

pub static HANDLERS: &[(&str, Handler)] = &[
    ("del", Handler::Keyed(del, Split::SumIntegers)),
    ("unlink", Handler::Keyed(del, Split::SumIntegers)),
    ("exists", Handler::Keyed(exists, Split::SumIntegers)),
    ("touch", Handler::Keyed(exists, Split::SumIntegers)),
    ("type", Handler::Keyed(type_of, Split::Never)),
    (
        "rename",
        Handler::Keyed(rename, Split::Coordinated(super::cross_shard::rename)),
    ),
    (
        "renamenx",
        Handler::Keyed(renamenx, Split::Coordinated(super::cross_shard::renamenx)),
    ),
    (
        "copy",
        Handler::Keyed(copy, Split::Coordinated(super::cross_shard::copy)),
    ),
    ("expire", Handler::Keyed(expire, Split::Never)),
    ("pexpire", Handler::Keyed(pexpire, Split::Never)),
    ("expireat", Handler::Keyed(expireat, Split::Never)),
    ("pexpireat", Handler::Keyed(pexpireat, Split::Never)),
    ("ttl", Handler::Keyed(ttl, Split::Never)),
    ("pttl", Handler::Keyed(pttl, Split::Never)),
    ("expiretime", Handler::Keyed(expiretime, Split::Never)),
    ("pexpiretime", Handler::Keyed(pexpiretime, Split::Never)),
    ("persist", Handler::Keyed(persist, Split::Never)),
    ("keys", Handler::Coord(keys)),
    ("scan", Handler::Coord(scan)),
    ("randomkey", Handler::Coord(randomkey)),
    ("object", Handler::Container),
    (
        "object|encoding",
        Handler::Keyed(object_encoding, Split::Never),
    ),
    (
        "object|refcount",
        Handler::Keyed(object_refcount, Split::Never),
    ),
    ("object|freq", Handler::Keyed(object_freq, Split::Never)),
    ("object|help", Handler::Conn(object_help)),
];

fn del(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let db = &mut ctx.dbs[ctx.db];
    let removed = args
        .iter()
        .skip(1)
        .filter(|k| db.remove(k, ctx.now_ms))
        .count();
    ctx.out.int(removed as i64);
    Ok(())
}

/// EXISTS and TOUCH: how many of the named keys exist (a key named twice counts twice).
fn exists(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let db = &mut ctx.dbs[ctx.db];
    let found = args
        .iter()
        .skip(1)
        .filter(|k| db.read(k, ctx.now_ms).is_some())
        .count();
    ctx.out.int(found as i64);
    Ok(())
}

fn type_of(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let name = ctx.dbs[ctx.db]
        .get(args.get(1), ctx.now_ms)
        .map_or("none", Value::type_name);
    ctx.out.simple(name);
    Ok(())
}

/// RENAME and RENAMENX when both keys live on this shard.
fn rename_generic(ctx: &mut KeyCtx<'_>, args: &Args, nx: bool) -> CommandResult {
    let (from, to) = (args.get(1), args.get(2));
    let db = &mut ctx.dbs[ctx.db];
    if db.get(from, ctx.now_ms).is_none() {
        return Err(CommandError::NoSuchKey);
    }
    if from == to {
        // Nothing moves: RENAME says OK, RENAMENX says it did not rename.
        reply_renamed(ctx, nx, false);
        return Ok(());
    }
    if nx && db.get(to, ctx.now_ms).is_some() {
        ctx.out.int(0);
        return Ok(());
    }
    if let Some((value, expire)) = db.remove_entry(from) {
        db.remove_entry(to);
        db.set(to, value, false);
        if let Some(at) = expire {
            db.set_expire(to, at);
        }
    }
    ctx.log_as(vec![Args::from_vecs([b"RENAME".as_slice(), from, to])]);
    reply_renamed(ctx, nx, true);
    Ok(())
}

/// The reply of RENAME (`OK`) or RENAMENX (`1` or `0`).
pub fn reply_renamed(ctx: &mut KeyCtx<'_>, nx: bool, done: bool) {
    match (nx, done) {
        (false, _) => ctx.out.ok(),
        (true, done) => ctx.out.int(i64::from(done)),
    }
}

fn rename(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    rename_generic(ctx, args, false)
}

fn renamenx(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    rename_generic(ctx, args, true)
}

/// COPY's options: the destination database and whether to replace.
pub struct CopyOptions {
    pub dest_db: usize,
    pub replace: bool,
}

/// Parses `COPY source destination [DB db] [REPLACE]`.
pub fn copy_options(
    args: &Args,
    current_db: usize,
    databases: usize,
) -> CommandResult<CopyOptions> {
    let mut options = CopyOptions {
        dest_db: current_db,
        replace: false,
    };
    let mut i = 3;
    while i < args.len() {
        if args.is(i, "replace") {
            options.replace = true;
        } else if args.is(i, "db") && i + 1 < args.len() {
            let db = int_arg(args.get(i + 1))?;
            options.dest_db = usize::try_from(db)
                .ok()
                .filter(|&d| d < databases)
                .ok_or(CommandError::DbIndexOutOfRange)?;
            i += 1;
        } else {
            return Err(CommandError::Syntax);
        }
        i += 1;
    }
    if options.dest_db == current_db && args.get(1) == args.get(2) {
        return Err(CommandError::err(
            "source and destination objects are the same",
        ));
    }
    Ok(options)
}

fn copy(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let options = copy_options(args, ctx.db, ctx.dbs.len())?;
    let (from, to) = (args.get(1), args.get(2));
    let now = ctx.now_ms;
    let Some(value) = ctx.dbs[ctx.db].read(from, now).cloned() else {
        ctx.out.int(0);
        return Ok(());
    };
    let expire = ctx.dbs[ctx.db].expire_at(from);
    let dest = &mut ctx.dbs[options.dest_db];
    if dest.get(to, now).is_some() {
        if !options.replace {
            ctx.out.int(0);
            return Ok(());
        }
        dest.remove_entry(to);
    }
    dest.set(to, value, false);
    if let Some(at) = expire {
        dest.set_expire(to, at);
    }
    ctx.out.int(1);
    Ok(())
}

/// EXPIRE's NX/XX/GT/LT conditions.
#[derive(Default)]
struct ExpireConditions {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

impl ExpireConditions {
    fn parse(args: &Args) -> CommandResult<ExpireConditions> {
        let mut c = ExpireConditions::default();
        for (i, opt) in args.iter().enumerate().skip(3) {
            match opt.to_ascii_lowercase().as_slice() {
                b"nx" => c.nx = true,
                b"xx" => c.xx = true,
                b"gt" => c.gt = true,
                b"lt" => c.lt = true,
                _ => {
                    return Err(CommandError::err(format!(
                        "Unsupported option {}",
                        args.text(i)
                    )))
                }
            }
        }
        if c.nx && (c.xx || c.gt || c.lt) {
            return Err(CommandError::err(
                "NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if c.gt && c.lt {
            return Err(CommandError::err(
                "GT and LT options at the same time are not compatible",
            ));
        }
        Ok(c)
    }

    /// Whether a key with expiry `current` (None: persistent) may get expiry `when`.
    fn allow(&self, current: Option<i64>, when: i64) -> bool {
        if self.nx && current.is_some() {
            return false;
        }
        if self.xx && current.is_none() {
            return false;
        }
        if self.gt && current.is_none_or(|c| when <= c) {
            return false;
        }
        if self.lt && current.is_some_and(|c| when >= c) {
            return false;
        }
        true
    }
}

/// EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT: `base_ms` is added (now for relative forms).
fn expire_generic(
    ctx: &mut KeyCtx<'_>,
    args: &Args,
    seconds: bool,
    relative: bool,
    command: &'static str,
) -> CommandResult {
    let conditions = ExpireConditions::parse(args)?;
    let mut when = int_arg(args.get(2))?;
    let invalid = CommandError::InvalidExpire(command);
    if seconds {
        when = when.checked_mul(1000).ok_or(invalid.clone())?;
    }
    if relative {
        when = when.checked_add(ctx.now_ms).ok_or(invalid)?;
    }
    let key = args.get(1);
    let db = &mut ctx.dbs[ctx.db];
    if db.get(key, ctx.now_ms).is_none() {
        ctx.out.int(0);
        return Ok(());
    }
    if !conditions.allow(db.expire_at(key), when) {
        ctx.out.int(0);
        return Ok(());
    }
    if ctx.is_past(when) {
        ctx.dbs[ctx.db].remove_entry(key);
        ctx.log_as(vec![Args::from_vecs([b"DEL".as_slice(), key])]);
    } else {
        ctx.dbs[ctx.db].set_expire(key, when);
        let when = when.to_string();
        ctx.log_as(vec![Args::from_vecs([
            b"PEXPIREAT".as_slice(),
            key,
            when.as_bytes(),
        ])]);
    }
    ctx.out.int(1);
    Ok(())
}

fn expire(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    expire_generic(ctx, args, true, true, "expire")
}

fn pexpire(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    expire_generic(ctx, args, false, true, "pexpire")
}

fn expireat(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    expire_generic(ctx, args, true, false, "expireat")
}

fn pexpireat(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    expire_generic(ctx, args, false, false, "pexpireat")
}

/// The expiry of `key`: `Err(-2)` missing, `Err(-1)` persistent, `Ok(at_ms)` otherwise.
fn expiry_of(ctx: &mut KeyCtx<'_>, key: &[u8]) -> Result<i64, i64> {
    let db = &mut ctx.dbs[ctx.db];
    if db.read(key, ctx.now_ms).is_none() {
        return Err(-2);
    }
    db.expire_at(key).ok_or(-1)
}

fn ttl_generic(ctx: &mut KeyCtx<'_>, args: &Args, millis: bool) -> CommandResult {
    let reply = match expiry_of(ctx, args.get(1)) {
        Err(code) => code,
        Ok(at) => {
            let left = (at - ctx.now_ms).max(0);
            if millis {
                left
            } else {
                (left + 500) / 1000
            }
        }
    };
    ctx.out.int(reply);
    Ok(())
}

fn ttl(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    ttl_generic(ctx, args, false)
}

fn pttl(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    ttl_generic(ctx, args, true)
}

fn expiretime(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let reply = expiry_of(ctx, args.get(1)).map_or_else(|code| code, |at| (at + 500) / 1000);
    ctx.out.int(reply);
    Ok(())
}

fn pexpiretime(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let reply = expiry_of(ctx, args.get(1)).unwrap_or_else(|code| code);
    ctx.out.int(reply);
    Ok(())
}

fn persist(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let key = args.get(1);
    let db = &mut ctx.dbs[ctx.db];
    let removed = db.get(key, ctx.now_ms).is_some() && db.persist(key);
    ctx.out.int(i64::from(removed));
    Ok(())
}

fn object_encoding(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    match ctx.dbs[ctx.db].get(args.get(2), ctx.now_ms) {
        Some(v) => ctx.out.bulk(v.encoding().as_bytes()),
        None => ctx.out.null(),
    }
    Ok(())
}

fn object_refcount(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    // Values are never shared between keys here, so each has exactly one reference.
    match ctx.dbs[ctx.db].get(args.get(2), ctx.now_ms) {
        Some(_) => ctx.out.int(1),
        None => ctx.out.null(),
    }
    Ok(())
}

fn object_freq(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    if ctx.dbs[ctx.db].get(args.get(2), ctx.now_ms).is_none() {
        ctx.out.null();
        return Ok(());
    }
    // corekv never evicts, so access frequency is not tracked.
    Err(CommandError::err(
        "An LFU maxmemory policy is not selected, access frequency not tracked. Please note that \
         when switching between policies at runtime LRU and LFU data will take some time to adjust.",
    ))
}

fn object_help(session: &mut Session, _args: &Args) -> CommandResult {
    session.reply_help(
        "OBJECT",
        &[
            "ENCODING <key>",
            "    Return the kind of internal representation used in order to store the value",
            "    associated with a <key>.",
            "FREQ <key>",
            "    Return the access frequency index of the <key>. The returned integer is",
            "    proportional to the logarithm of the recent access frequency of the key.",
            "REFCOUNT <key>",
            "    Return the number of references of the value associated with the specified",
            "    <key>.",
        ],
    );
    Ok(())
}

/// Number of bits of a SCAN cursor that name the shard.
fn shard_bits(shards: usize) -> u32 {
    usize::BITS - (shards.max(1) - 1).leading_zeros()
}

fn keys(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let pattern = args.get(1).to_vec();
        let db = session.db;
        let all_keys = session
            .gather(move |shard| {
                let now = crate::server::state::unix_ms();
                let dbs = shard.dbs();
                let plain_star = pattern == b"*";
                dbs[db]
                    .iter()
                    .filter(|(k, _)| plain_star || glob_match(&pattern, k, false))
                    .filter(|(k, _)| dbs[db].exists_now(k, now))
                    .map(|(k, _)| k.to_vec())
                    .collect::<Vec<Vec<u8>>>()
            })
            .await?;
        let total: usize = all_keys.iter().map(Vec::len).sum();
        session.out.array(total);
        for key in all_keys.iter().flatten() {
            session.out.bulk(key);
        }
        Ok(())
    })
}

/// SCAN's parsed options.
struct ScanOptions {
    cursor: u64,
    pattern: Option<Vec<u8>>,
    count: usize,
    type_name: Option<String>,
}

fn parse_scan(args: &Args) -> CommandResult<ScanOptions> {
    let cursor = std::str::from_utf8(args.get(1))
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| CommandError::err("invalid cursor"))?;
    let mut options = ScanOptions {
        cursor,
        pattern: None,
        count: 10,
        type_name: None,
    };
    let mut i = 2;
    while i < args.len() {
        let has_value = i + 1 < args.len();
        if args.is(i, "count") && has_value {
            let count = int_arg(args.get(i + 1))?;
            if count < 1 {
                return Err(CommandError::Syntax);
            }
            options.count = usize::try_from(count).unwrap_or(usize::MAX);
        } else if args.is(i, "match") && has_value {
            let pattern = args.get(i + 1);
            options.pattern = (pattern != b"*").then(|| pattern.to_vec());
        } else if args.is(i, "novalues") {
            return Err(CommandError::err(
                "NOVALUES option can only be used in HSCAN",
            ));
        } else if args.is(i, "type") && has_value {
            let name = args.text(i + 1).to_ascii_lowercase();
            if !["string", "list", "set", "zset", "hash", "stream"].contains(&name.as_str()) {
                return Err(CommandError::err(format!(
                    "unknown type name '{}'",
                    args.text(i + 1)
                )));
            }
            options.type_name = Some(name);
        } else {
            return Err(CommandError::Syntax);
        }
        i += 2;
    }
    Ok(options)
}

fn scan(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let options = parse_scan(&args)?;
        let shards = session.shard.count();
        let bits = shard_bits(shards);
        let mut shard = usize::try_from(options.cursor & ((1u64 << bits) - 1)).unwrap_or(0);
        let mut dict_cursor = options.cursor >> bits;
        if shard >= shards {
            // A cursor from a server with more shards: start over rather than fail.
            shard = 0;
            dict_cursor = 0;
        }
        let db = session.db;
        let ScanOptions {
            pattern,
            count,
            type_name,
            ..
        } = options;
        let (next, found): (u64, Vec<Vec<u8>>) = session
            .shard
            .call(shard, move |s| {
                scan_shard(s, db, dict_cursor, count, pattern, type_name)
            })
            .await
            .map_err(|e| CommandError::err(e.to_string()))?;
        let next_cursor = if next != 0 {
            (next << bits) | shard as u64
        } else if shard + 1 < shards {
            (shard + 1) as u64
        } else {
            0
        };
        session.out.array(2);
        session.out.bulk(next_cursor.to_string().as_bytes());
        session.out.array(found.len());
        for key in &found {
            session.out.bulk(key);
        }
        Ok(())
    })
}

/// One SCAN call on one shard: as Valkey, visits up to ten times `count` buckets until `count`
/// keys are found, then filters by pattern, type and expiry.
fn scan_shard(
    shard: &crate::shard::Shard,
    db: usize,
    mut cursor: u64,
    count: usize,
    pattern: Option<Vec<u8>>,
    type_name: Option<String>,
) -> (u64, Vec<Vec<u8>>) {
    let now = crate::server::state::unix_ms();
    let dbs = shard.dbs();
    let db = &dbs[db];
    let mut found: Vec<Vec<u8>> = Vec::new();
    let mut visits_left = count.saturating_mul(10);
    loop {
        cursor = db.scan(cursor, |key: &SmallBytes, value: &Value| {
            let pattern_ok = pattern.as_deref().is_none_or(|p| glob_match(p, key, false));
            let type_ok = type_name.as_deref().is_none_or(|t| value.type_name() == t);
            if pattern_ok && type_ok && db.exists_now(key, now) {
                found.push(key.to_vec());
            }
        });
        visits_left = visits_left.saturating_sub(1);
        if cursor == 0 || visits_left == 0 || found.len() >= count {
            break;
        }
    }
    (cursor, found)
}

fn randomkey(session: &mut Session, _args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let db = session.db;
        let sizes: Vec<usize> = session.gather(move |s| s.dbs()[db].len()).await?;
        let total: usize = sizes.iter().sum();
        if total == 0 {
            session.out.null();
            return Ok(());
        }
        let mut pick = fastrand::usize(..total);
        let shard = sizes
            .iter()
            .position(|&n| {
                if pick < n {
                    true
                } else {
                    pick -= n;
                    false
                }
            })
            .unwrap_or(0);
        let key: Option<Vec<u8>> = session
            .shard
            .call(shard, move |s| random_live_key(s, db))
            .await
            .map_err(|e| CommandError::err(e.to_string()))?;
        match key {
            Some(k) => session.out.bulk(&k),
            None => session.out.null(),
        }
        Ok(())
    })
}

/// Tries keys are drawn at random before RANDOMKEY gives up on a shard full of expired keys.
const RANDOMKEY_TRIES_MAX: usize = 100;

fn random_live_key(shard: &crate::shard::Shard, db: usize) -> Option<Vec<u8>> {
    let now = crate::server::state::unix_ms();
    let mut dbs = shard.dbs();
    for _ in 0..RANDOMKEY_TRIES_MAX {
        let key = dbs[db].random_key()?.to_vec();
        if dbs[db].get(&key, now).is_some() {
            return Some(key);
        }
    }
    None
}
