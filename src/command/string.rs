//! String commands: GET, SET and its variants, counters, ranges, MGET/MSET.

use super::args::{expire_at_ms, int_arg, ExpireUnit};
use super::decimal;
use super::table::{Handler, Split};
use super::KeyCtx;
use crate::error::{CommandError, CommandResult};
use crate::protocol::Args;
use crate::shard::small_bytes::SmallBytes;
use crate::shard::value::Value;

pub static HANDLERS: &[(&str, Handler)] = &[
    ("get", Handler::Keyed(get, Split::Never)),
    ("set", Handler::Keyed(set, Split::Never)),
    ("setnx", Handler::Keyed(setnx, Split::Never)),
    ("setex", Handler::Keyed(setex, Split::Never)),
    ("psetex", Handler::Keyed(psetex, Split::Never)),
    ("getset", Handler::Keyed(getset, Split::Never)),
    ("getdel", Handler::Keyed(getdel, Split::Never)),
    ("getex", Handler::Keyed(getex, Split::Never)),
    ("mget", Handler::Keyed(mget, Split::Interleave)),
    ("mset", Handler::Keyed(mset, Split::AllOk)),
    (
        "msetnx",
        Handler::Keyed(msetnx, Split::Coordinated(super::cross_shard::msetnx)),
    ),
    ("incr", Handler::Keyed(incr, Split::Never)),
    ("decr", Handler::Keyed(decr, Split::Never)),
    ("incrby", Handler::Keyed(incrby, Split::Never)),
    ("decrby", Handler::Keyed(decrby, Split::Never)),
    ("incrbyfloat", Handler::Keyed(incrbyfloat, Split::Never)),
    ("append", Handler::Keyed(append, Split::Never)),
    ("strlen", Handler::Keyed(strlen, Split::Never)),
    ("getrange", Handler::Keyed(getrange, Split::Never)),
    ("substr", Handler::Keyed(getrange, Split::Never)),
    ("setrange", Handler::Keyed(setrange, Split::Never)),
];

/// Writes the string at `key` as a bulk reply (null when missing); WRONGTYPE for other types.
fn reply_string(ctx: &mut KeyCtx<'_>, key: &[u8]) -> CommandResult {
    match ctx.dbs[ctx.db].read(key, ctx.now_ms) {
        None => ctx.out.null(),
        Some(value) => value
            .with_str(|s| ctx.out.bulk(s))
            .ok_or(CommandError::WrongType)?,
    }
    Ok(())
}

fn get(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    reply_string(ctx, args.get(1))
}

/// The options shared by SET and GETEX.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct StringOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    persist: bool,
    /// The argument index holding the expiry, and its unit.
    expire: Option<(usize, ExpireUnit)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OptionsFor {
    Set,
    GetEx,
}

impl StringOptions {
    /// Parses options from `args[from..]` with Valkey's rules (repeating EX is allowed, mixing
    /// units or NX with XX is a syntax error).
    fn parse(args: &Args, from: usize, kind: OptionsFor) -> CommandResult<StringOptions> {
        let mut o = StringOptions::default();
        let set = kind == OptionsFor::Set;
        let mut i = from;
        while i < args.len() {
            let opt = args.get(i);
            let has_next = i + 1 < args.len();
            let unit = o.expire.map(|(_, u)| u);
            let other_unit = |u: ExpireUnit| unit.is_some_and(|x| x != u);
            let expire_option =
                |u: ExpireUnit| !o.keep_ttl && !o.persist && !other_unit(u) && has_next;
            if opt.eq_ignore_ascii_case(b"NX") && set && !o.xx {
                o.nx = true;
            } else if opt.eq_ignore_ascii_case(b"XX") && set && !o.nx {
                o.xx = true;
            } else if opt.eq_ignore_ascii_case(b"GET") && set {
                o.get = true;
            } else if opt.eq_ignore_ascii_case(b"KEEPTTL") && set && !o.persist && unit.is_none() {
                o.keep_ttl = true;
            } else if opt.eq_ignore_ascii_case(b"PERSIST") && !set && unit.is_none() && !o.keep_ttl
            {
                o.persist = true;
            } else if let Some(u) = unit_of(opt).filter(|&u| expire_option(u)) {
                o.expire = Some((i + 1, u));
                i += 1;
            } else {
                return Err(CommandError::Syntax);
            }
            i += 1;
        }
        Ok(o)
    }
}

fn unit_of(opt: &[u8]) -> Option<ExpireUnit> {
    if opt.eq_ignore_ascii_case(b"EX") {
        Some(ExpireUnit::Seconds)
    } else if opt.eq_ignore_ascii_case(b"PX") {
        Some(ExpireUnit::Millis)
    } else if opt.eq_ignore_ascii_case(b"EXAT") {
        Some(ExpireUnit::UnixSeconds)
    } else if opt.eq_ignore_ascii_case(b"PXAT") {
        Some(ExpireUnit::UnixMillis)
    } else {
        None
    }
}

/// What a SET-like command does when the NX/XX condition fails.
enum Aborted {
    Null,
    Zero,
}

/// The shared core of SET, SETNX, SETEX and PSETEX.
fn set_generic(
    ctx: &mut KeyCtx<'_>,
    key: &[u8],
    value: &[u8],
    options: StringOptions,
    expire_arg: Option<&[u8]>,
    command: &'static str,
    on_abort: Aborted,
) -> CommandResult {
    let expire_ms = match (options.expire, expire_arg) {
        (Some((_, unit)), Some(arg)) => Some(expire_at_ms(arg, unit, ctx.now_ms, command)?),
        _ => None,
    };
    if options.get {
        reply_string(ctx, key)?;
    }
    // A plain SET replaces whatever is there (an expired key included), so only the
    // conditional forms and KEEPTTL need to look first.
    let found = (options.nx || options.xx || options.keep_ttl)
        && ctx.dbs[ctx.db].get(key, ctx.now_ms).is_some();
    if (options.nx && found) || (options.xx && !found) {
        if !options.get {
            match on_abort {
                Aborted::Null => ctx.out.null(),
                Aborted::Zero => ctx.out.int(0),
            }
        }
        return Ok(());
    }
    let past = expire_ms.is_some_and(|at| ctx.is_past(at));
    match expire_ms {
        Some(_) if past => {
            // Already in the past: nothing to store, and an existing key goes away.
            ctx.dbs[ctx.db].remove(key, ctx.now_ms);
            ctx.log_as(vec![Args::from_vecs([b"DEL".as_slice(), key])]);
        }
        Some(at) => {
            ctx.dbs[ctx.db].set(key, Value::string(value), true);
            ctx.dbs[ctx.db].set_expire(key, at);
            let at = at.to_string();
            ctx.log_as(vec![Args::from_vecs([
                b"SET".as_slice(),
                key,
                value,
                b"PXAT",
                at.as_bytes(),
            ])]);
        }
        // Without an expiry the command replays as sent: NX/XX/GET decide the same way on the
        // same state, so nothing needs rewriting (and nothing is copied).
        None => ctx.dbs[ctx.db].set(key, Value::string(value), options.keep_ttl),
    }
    if !options.get {
        match on_abort {
            Aborted::Null => ctx.out.ok(),
            Aborted::Zero => ctx.out.int(1),
        }
    }
    Ok(())
}

fn set(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let options = StringOptions::parse(args, 3, OptionsFor::Set)?;
    let expire_arg = options.expire.map(|(i, _)| args.get(i));
    set_generic(
        ctx,
        args.get(1),
        args.get(2),
        options,
        expire_arg,
        "set",
        Aborted::Null,
    )
}

fn setnx(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let options = StringOptions {
        nx: true,
        ..StringOptions::default()
    };
    set_generic(
        ctx,
        args.get(1),
        args.get(2),
        options,
        None,
        "setnx",
        Aborted::Zero,
    )
}

fn setex(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let options = StringOptions {
        expire: Some((2, ExpireUnit::Seconds)),
        ..StringOptions::default()
    };
    set_generic(
        ctx,
        args.get(1),
        args.get(3),
        options,
        Some(args.get(2)),
        "setex",
        Aborted::Null,
    )
}

fn psetex(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let options = StringOptions {
        expire: Some((2, ExpireUnit::Millis)),
        ..StringOptions::default()
    };
    set_generic(
        ctx,
        args.get(1),
        args.get(3),
        options,
        Some(args.get(2)),
        "psetex",
        Aborted::Null,
    )
}

fn getset(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    reply_string(ctx, args.get(1))?;
    ctx.dbs[ctx.db].set(args.get(1), Value::string(args.get(2)), false);
    ctx.log_as(vec![Args::from_vecs([
        b"SET".as_slice(),
        args.get(1),
        args.get(2),
    ])]);
    Ok(())
}

fn getdel(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    reply_string(ctx, args.get(1))?;
    ctx.dbs[ctx.db].remove(args.get(1), ctx.now_ms);
    ctx.log_as(vec![Args::from_vecs([b"DEL".as_slice(), args.get(1)])]);
    Ok(())
}

fn getex(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let options = StringOptions::parse(args, 2, OptionsFor::GetEx)?;
    let key = args.get(1);
    let db = &mut ctx.dbs[ctx.db];
    let Some(value) = db.read(key, ctx.now_ms) else {
        ctx.out.null();
        return Ok(());
    };
    if value.with_str(|_| ()).is_none() {
        return Err(CommandError::WrongType);
    }
    let expire_ms = match options.expire {
        Some((i, unit)) => Some(expire_at_ms(args.get(i), unit, ctx.now_ms, "getex")?),
        None => None,
    };
    if let Some(value) = db.get(key, ctx.now_ms) {
        value.with_str(|s| ctx.out.bulk(s));
    }
    let absolute = matches!(
        options.expire,
        Some((_, ExpireUnit::UnixSeconds | ExpireUnit::UnixMillis))
    );
    let past = expire_ms.is_some_and(|at| ctx.is_past(at));
    match expire_ms {
        Some(_) if absolute && past => {
            ctx.dbs[ctx.db].remove_entry(key);
            ctx.log_as(vec![Args::from_vecs([b"DEL".as_slice(), key])]);
        }
        Some(at) => {
            ctx.dbs[ctx.db].set_expire(key, at);
            let at = at.to_string();
            ctx.log_as(vec![Args::from_vecs([
                b"PEXPIREAT".as_slice(),
                key,
                at.as_bytes(),
            ])]);
        }
        None if options.persist => {
            ctx.dbs[ctx.db].persist(key);
            ctx.log_as(vec![Args::from_vecs([b"PERSIST".as_slice(), key])]);
        }
        None => {}
    }
    Ok(())
}

fn mget(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    ctx.out.array(args.len() - 1);
    let db = &mut ctx.dbs[ctx.db];
    for key in args.iter().skip(1) {
        match db
            .read(key, ctx.now_ms)
            .and_then(|v| v.with_str(|s| ctx.out.bulk(s)))
        {
            Some(()) => {}
            None => ctx.out.null(),
        }
    }
    Ok(())
}

fn mset(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    if args.len().is_multiple_of(2) {
        return Err(CommandError::WrongArity("mset".into()));
    }
    let db = &mut ctx.dbs[ctx.db];
    for pair in 0..args.len() / 2 {
        db.set(
            args.get(1 + 2 * pair),
            Value::string(args.get(2 + 2 * pair)),
            false,
        );
    }
    ctx.out.ok();
    Ok(())
}

fn msetnx(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    if args.len().is_multiple_of(2) {
        return Err(CommandError::WrongArity("msetnx".into()));
    }
    let db = &mut ctx.dbs[ctx.db];
    let pairs = args.len() / 2;
    if (0..pairs).any(|p| db.get(args.get(1 + 2 * p), ctx.now_ms).is_some()) {
        ctx.out.int(0);
        return Ok(());
    }
    for pair in 0..pairs {
        db.set(
            args.get(1 + 2 * pair),
            Value::string(args.get(2 + 2 * pair)),
            false,
        );
    }
    ctx.out.int(1);
    Ok(())
}

/// Adds `delta` to the integer at `key` (0 when missing), keeping its TTL.
fn incr_by(ctx: &mut KeyCtx<'_>, key: &[u8], delta: i64) -> CommandResult {
    let db = &mut ctx.dbs[ctx.db];
    let next = match db.get_mut(key, ctx.now_ms) {
        Some(value) => {
            let current = match &*value {
                Value::Int(n) => *n,
                other => other.with_str(int_arg).ok_or(CommandError::WrongType)??,
            };
            let next = current.checked_add(delta).ok_or(CommandError::Overflow)?;
            *value = Value::Int(next);
            next
        }
        None => {
            db.set(key, Value::Int(delta), false);
            delta
        }
    };
    ctx.out.int(next);
    Ok(())
}

fn incr(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    incr_by(ctx, args.get(1), 1)
}

fn decr(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    incr_by(ctx, args.get(1), -1)
}

fn incrby(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let delta = int_arg(args.get(2))?;
    incr_by(ctx, args.get(1), delta)
}

fn decrby(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let delta = int_arg(args.get(2))?;
    if delta == i64::MIN {
        return Err(CommandError::err("decrement would overflow"));
    }
    incr_by(ctx, args.get(1), -delta)
}

fn incrbyfloat(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let key = args.get(1);
    let db = &mut ctx.dbs[ctx.db];
    let current: Vec<u8> = match db.get(key, ctx.now_ms) {
        Some(v) => v.with_str(<[u8]>::to_vec).ok_or(CommandError::WrongType)?,
        None => b"0".to_vec(),
    };
    let current_f = decimal::parse_number(&current).ok_or(CommandError::NotFloat)?;
    let increment = args.get(2);
    let increment_f = decimal::parse_number(increment).ok_or(CommandError::NotFloat)?;
    let text = decimal::add(&current, increment, current_f, increment_f)
        .ok_or(CommandError::NanOrInfinity)?;
    let value = Value::Str(SmallBytes::new(text.as_bytes()));
    match db.get_mut(key, ctx.now_ms) {
        Some(slot) => *slot = value,
        None => db.set(key, value, false),
    }
    ctx.log_as(vec![Args::from_vecs([
        b"SET".as_slice(),
        key,
        text.as_bytes(),
        b"KEEPTTL",
    ])]);
    ctx.out.bulk(text.as_bytes());
    Ok(())
}

/// Refuses strings longer than `proto-max-bulk-len`.
fn check_length(ctx: &KeyCtx<'_>, size: usize, append: usize) -> CommandResult {
    let total = size
        .checked_add(append)
        .ok_or(CommandError::StringTooLong)?;
    if i64::try_from(total).map_or(true, |t| t > ctx.config.proto_max_bulk_len) {
        return Err(CommandError::StringTooLong);
    }
    Ok(())
}

fn append(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let (key, tail) = (args.get(1), args.get(2));
    let existing = ctx.dbs[ctx.db]
        .get(key, ctx.now_ms)
        .map(|v| v.str_len().ok_or(CommandError::WrongType))
        .transpose()?;
    let length = match existing {
        None => {
            ctx.dbs[ctx.db].set(key, Value::string(tail), false);
            tail.len()
        }
        Some(len) => {
            check_length(ctx, len, tail.len())?;
            let db = &mut ctx.dbs[ctx.db];
            let bytes = db
                .get_mut(key, ctx.now_ms)
                .and_then(Value::make_raw)
                .ok_or(CommandError::WrongType)?;
            bytes.extend_from_slice(tail);
            bytes.len()
        }
    };
    ctx.out.int(length as i64);
    Ok(())
}

fn strlen(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let len = match ctx.dbs[ctx.db].read(args.get(1), ctx.now_ms) {
        Some(v) => v.str_len().ok_or(CommandError::WrongType)?,
        None => 0,
    };
    ctx.out.int(len as i64);
    Ok(())
}

fn getrange(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let start = int_arg(args.get(2))?;
    let end = int_arg(args.get(3))?;
    let Some(value) = ctx.dbs[ctx.db].read(args.get(1), ctx.now_ms) else {
        ctx.out.bulk(b"");
        return Ok(());
    };
    let out = &mut *ctx.out;
    value
        .with_str(|s| {
            let len = s.len() as i64;
            if start < 0 && end < 0 && start > end {
                out.bulk(b"");
                return;
            }
            let mut start = if start < 0 { len + start } else { start };
            let mut end = if end < 0 { len + end } else { end };
            start = start.max(0);
            end = end.max(0);
            if end >= len {
                end = len - 1;
            }
            if start > end || len == 0 {
                out.bulk(b"");
            } else {
                // In range: 0 <= start <= end < len.
                out.bulk(&s[start as usize..=end as usize]);
            }
        })
        .ok_or(CommandError::WrongType)
}

fn setrange(ctx: &mut KeyCtx<'_>, args: &Args) -> CommandResult {
    let key = args.get(1);
    let offset = int_arg(args.get(2))?;
    let patch = args.get(3);
    if offset < 0 {
        return Err(CommandError::err("offset is out of range"));
    }
    let offset =
        usize::try_from(offset).map_err(|_| CommandError::err("offset is out of range"))?;
    let existing = ctx.dbs[ctx.db]
        .get(key, ctx.now_ms)
        .map(|v| v.str_len().ok_or(CommandError::WrongType))
        .transpose()?;
    if patch.is_empty() {
        ctx.out.int(existing.unwrap_or(0) as i64);
        return Ok(());
    }
    check_length(ctx, offset, patch.len())?;
    let db = &mut ctx.dbs[ctx.db];
    if existing.is_none() {
        db.set(key, Value::Raw(Box::default()), false);
    }
    let bytes = db
        .get_mut(key, ctx.now_ms)
        .and_then(Value::make_raw)
        .ok_or(CommandError::WrongType)?;
    if bytes.len() < offset + patch.len() {
        bytes.resize(offset + patch.len(), 0);
    }
    bytes[offset..offset + patch.len()].copy_from_slice(patch);
    let len = bytes.len();
    ctx.out.int(len as i64);
    Ok(())
}
