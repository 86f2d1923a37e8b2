//! Connection commands: PING, ECHO, QUIT, RESET, SELECT, AUTH, HELLO and CLIENT.

use std::time::Instant;

use super::args::int_arg;
use super::table::{CoordFuture, Handler};
use crate::error::{CommandError, CommandResult};
use crate::protocol::{Args, Protocol};
use crate::server::clients::ClientInfo;
use crate::server::session::Session;

pub static HANDLERS: &[(&str, Handler)] = &[
    ("ping", Handler::Conn(ping)),
    ("echo", Handler::Conn(echo)),
    ("quit", Handler::Conn(quit)),
    ("reset", Handler::Conn(reset)),
    ("select", Handler::Conn(select)),
    ("auth", Handler::Conn(auth)),
    ("hello", Handler::Conn(hello)),
    ("client", Handler::Container),
    ("client|id", Handler::Conn(client_id)),
    ("client|setname", Handler::Conn(client_setname)),
    ("client|getname", Handler::Conn(client_getname)),
    ("client|list", Handler::Coord(client_list)),
    ("client|info", Handler::Conn(client_info)),
    ("client|kill", Handler::Coord(client_kill)),
    ("client|setinfo", Handler::Conn(client_setinfo)),
    ("client|no-evict", Handler::Conn(client_no_evict)),
    ("client|help", Handler::Conn(client_help)),
];

fn ping(session: &mut Session, args: &Args) -> CommandResult {
    if args.len() > 2 {
        return Err(CommandError::WrongArity("ping".into()));
    }
    if args.len() == 2 {
        session.out.bulk(args.get(1));
    } else {
        session.out.simple("PONG");
    }
    Ok(())
}

fn echo(session: &mut Session, args: &Args) -> CommandResult {
    session.out.bulk(args.get(1));
    Ok(())
}

fn quit(session: &mut Session, _args: &Args) -> CommandResult {
    session.out.ok();
    session.close_after_reply = true;
    Ok(())
}

fn reset(session: &mut Session, _args: &Args) -> CommandResult {
    session.discard_multi();
    session.db = 0;
    session.client.db.set(0);
    session.out.set_protocol(Protocol::Resp2);
    session.client.resp.set(2);
    session.client.name.borrow_mut().clear();
    session.authenticated = session.shard.config().requirepass.is_empty();
    session.client.authenticated.set(session.authenticated);
    session.out.simple("RESET");
    Ok(())
}

fn select(session: &mut Session, args: &Args) -> CommandResult {
    let index = int_arg(args.get(1))?;
    let databases = session.shard.config().databases;
    let index = usize::try_from(index)
        .ok()
        .filter(|&i| i < databases)
        .ok_or(CommandError::DbIndexOutOfRange)?;
    session.db = index;
    session.client.db.set(index);
    session.out.ok();
    Ok(())
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Checks credentials for the only user, `default`.
fn check_credentials(session: &Session, user: &[u8], password: &[u8]) -> CommandResult {
    let required = session.shard.config().requirepass.clone();
    let ok =
        user == b"default" && (required.is_empty() || same_secret(password, required.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(CommandError::Coded(WRONGPASS.into()))
    }
}

fn auth(session: &mut Session, args: &Args) -> CommandResult {
    let (user, password) = match args.len() {
        2 => {
            if session.shard.config().requirepass.is_empty() {
                return Err(CommandError::err(
                    "AUTH <password> called without any password configured for the default \
                     user. Are you sure your configuration is correct?",
                ));
            }
            (&b"default"[..], args.get(1))
        }
        3 => (args.get(1), args.get(2)),
        _ => return Err(CommandError::Syntax),
    };
    check_credentials(session, user, password)?;
    session.authenticated = true;
    session.client.authenticated.set(true);
    session.out.ok();
    Ok(())
}

/// Client names and library attributes: printable ASCII without spaces.
fn valid_client_text(text: &[u8]) -> bool {
    text.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn hello(session: &mut Session, args: &Args) -> CommandResult {
    let mut protocol = session.out.protocol();
    if args.len() >= 2 {
        let version = crate::protocol::parser::parse_i64(args.get(1)).ok_or_else(|| {
            CommandError::err("Protocol version is not an integer or out of range")
        })?;
        protocol = match version {
            2 => Protocol::Resp2,
            3 => Protocol::Resp3,
            _ => {
                return Err(CommandError::Coded(
                    "NOPROTO unsupported protocol version".into(),
                ))
            }
        };
    }
    let mut credentials = None;
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        let more = args.len() - 1 - i;
        if args.is(i, "auth") && more >= 2 {
            credentials = Some((args.get(i + 1), args.get(i + 2)));
            i += 3;
        } else if args.is(i, "setname") && more >= 1 {
            name = Some(args.get(i + 1));
            i += 2;
        } else {
            return Err(CommandError::err(format!(
                "Syntax error in HELLO option '{}'",
                args.text(i)
            )));
        }
    }
    match credentials {
        None if session.needs_auth() => {
            return Err(CommandError::Coded(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time"
                    .into(),
            ))
        }
        None => {}
        Some((user, password)) => {
            check_credentials(session, user, password)?;
            session.authenticated = true;
            session.client.authenticated.set(true);
        }
    }
    if let Some(name) = name {
        set_client_name(&session.client, name)?;
    }
    session.out.set_protocol(protocol);
    session.client.resp.set(protocol.version());
    let out = &mut session.out;
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"corekv");
    out.bulk(b"version");
    out.bulk(env!("CARGO_PKG_VERSION").as_bytes());
    out.bulk(b"proto");
    out.int(protocol.version());
    out.bulk(b"id");
    out.int(session.client.id as i64);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    if session.shard.server.replication.is_replica() {
        out.bulk(b"replica");
    } else {
        out.bulk(b"master");
    }
    out.bulk(b"modules");
    out.array(0);
    Ok(())
}

fn set_client_name(client: &ClientInfo, name: &[u8]) -> CommandResult {
    if !valid_client_text(name) {
        return Err(CommandError::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    *client.name.borrow_mut() = String::from_utf8_lossy(name).into_owned();
    Ok(())
}

fn client_id(session: &mut Session, _args: &Args) -> CommandResult {
    session.out.int(session.client.id as i64);
    Ok(())
}

fn client_setname(session: &mut Session, args: &Args) -> CommandResult {
    set_client_name(&session.client, args.get(2))?;
    session.out.ok();
    Ok(())
}

fn client_getname(session: &mut Session, _args: &Args) -> CommandResult {
    let name = session.client.name.borrow().clone();
    if name.is_empty() {
        session.out.null();
    } else {
        session.out.bulk(name.as_bytes());
    }
    Ok(())
}

fn client_info(session: &mut Session, _args: &Args) -> CommandResult {
    let line = format!("{}\n", session.client.describe(Instant::now()));
    session.out.verbatim("txt", line.as_bytes());
    Ok(())
}

/// A client type as CLIENT LIST and CLIENT KILL name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientType {
    Normal,
    Replica,
    /// `master`/`primary`/`pubsub`: no connection here is of these types.
    Other,
}

fn client_type(name: &[u8]) -> CommandResult<ClientType> {
    match name.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(ClientType::Normal),
        b"replica" | b"slave" => Ok(ClientType::Replica),
        b"master" | b"primary" | b"pubsub" => Ok(ClientType::Other),
        _ => Err(CommandError::err(format!(
            "Unknown client type '{}'",
            String::from_utf8_lossy(name)
        ))),
    }
}

fn type_of(client: &ClientInfo) -> ClientType {
    if client.replica.get() {
        ClientType::Replica
    } else {
        ClientType::Normal
    }
}

fn client_list(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let mut ids: Option<Vec<u64>> = None;
        let mut wanted: Option<ClientType> = None;
        match args.len() {
            2 => {}
            4 if args.is(2, "type") => wanted = Some(client_type(args.get(3))?),
            n if n >= 4 && args.is(2, "id") => {
                let mut list = Vec::new();
                for i in 3..n {
                    let id = crate::protocol::parser::parse_i64(args.get(i))
                        .ok_or_else(|| CommandError::err("Invalid client ID"))?;
                    list.push(u64::try_from(id).unwrap_or(0));
                }
                ids = Some(list);
            }
            _ => return Err(CommandError::Syntax),
        }
        let lines: Vec<String> = if wanted != Some(ClientType::Other) {
            session
                .gather(move |s| {
                    let now = Instant::now();
                    s.clients
                        .borrow()
                        .iter()
                        .filter(|c| ids.as_ref().is_none_or(|ids| ids.contains(&c.id)))
                        .filter(|c| wanted.is_none_or(|t| t == type_of(c)))
                        .map(|c| (c.id, c.describe(now)))
                        .collect::<Vec<_>>()
                })
                .await?
                .into_iter()
                .flatten()
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_values()
                .collect()
        } else {
            Vec::new()
        };
        let mut text = String::new();
        for line in lines {
            text.push_str(&line);
            text.push('\n');
        }
        session.out.verbatim("txt", text.as_bytes());
        Ok(())
    })
}

/// CLIENT KILL's filters.
#[derive(Clone, Default)]
struct KillFilter {
    id: Option<u64>,
    addr: Option<String>,
    laddr: Option<String>,
    kind: Option<ClientType>,
    max_age_s: Option<u64>,
    skip_me: bool,
}

impl KillFilter {
    fn matches(&self, client: &ClientInfo, now: Instant) -> bool {
        self.id.is_none_or(|id| id == client.id)
            && self
                .addr
                .as_ref()
                .is_none_or(|a| *a == client.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == client.laddr.to_string())
            && self.kind.is_none_or(|kind| kind == type_of(client))
            && self
                .max_age_s
                .is_none_or(|max| now.duration_since(client.created).as_secs() >= max)
    }

    fn parse(args: &Args) -> CommandResult<KillFilter> {
        let mut f = KillFilter {
            skip_me: true,
            ..KillFilter::default()
        };
        let mut i = 2;
        while i < args.len() {
            if i + 1 >= args.len() {
                return Err(CommandError::Syntax);
            }
            let value = args.get(i + 1);
            let text = args.text(i + 1);
            match args.get(i).to_ascii_lowercase().as_slice() {
                b"id" => {
                    let id = crate::protocol::parser::parse_i64(value)
                        .filter(|&n| n > 0)
                        .ok_or_else(|| CommandError::err("client-id should be greater than 0"))?;
                    f.id = Some(id.unsigned_abs());
                }
                b"type" => f.kind = Some(client_type(value)?),
                b"addr" => f.addr = Some(text),
                b"laddr" => f.laddr = Some(text),
                b"user" => {
                    if value != b"default" {
                        return Err(CommandError::err(format!("No such user '{text}'")));
                    }
                }
                b"skipme" => {
                    f.skip_me = match value.to_ascii_lowercase().as_slice() {
                        b"yes" => true,
                        b"no" => false,
                        _ => return Err(CommandError::Syntax),
                    }
                }
                b"maxage" => {
                    let age = crate::protocol::parser::parse_i64(value).ok_or_else(|| {
                        CommandError::err("maxage is not an integer or out of range")
                    })?;
                    if age <= 0 {
                        return Err(CommandError::err("maxage should be greater than 0"));
                    }
                    f.max_age_s = Some(age.unsigned_abs());
                }
                _ => return Err(CommandError::Syntax),
            }
            i += 2;
        }
        Ok(f)
    }
}

fn client_kill(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let old_style = args.len() == 3;
        let filter = if old_style {
            KillFilter {
                addr: Some(args.text(2)),
                skip_me: false,
                ..KillFilter::default()
            }
        } else {
            KillFilter::parse(&args)?
        };
        let me = session.client.id;
        let kill_me = !filter.skip_me && filter.matches(&session.client, Instant::now());
        let remote_filter = filter.clone();
        let killed: usize = session
            .gather(move |s| {
                let now = Instant::now();
                let clients = s.clients.borrow();
                let victims: Vec<_> = clients
                    .iter()
                    .filter(|c| c.id != me && remote_filter.matches(c, now))
                    .collect();
                victims.iter().for_each(|c| c.kill());
                victims.len()
            })
            .await?
            .into_iter()
            .sum();
        let total = killed + usize::from(kill_me);
        if kill_me {
            session.close_after_reply = true;
        }
        if old_style {
            if total == 0 {
                return Err(CommandError::err("No such client"));
            }
            session.out.ok();
        } else {
            session.out.int(total as i64);
        }
        Ok(())
    })
}

fn client_setinfo(session: &mut Session, args: &Args) -> CommandResult {
    let value = args.get(3);
    let slot = if args.is(2, "lib-name") {
        &session.client.lib_name
    } else if args.is(2, "lib-ver") {
        &session.client.lib_ver
    } else {
        return Err(CommandError::err(format!(
            "Unrecognized option '{}'",
            args.text(2)
        )));
    };
    if !valid_client_text(value) {
        return Err(CommandError::err(format!(
            "{} cannot contain spaces, newlines or special characters.",
            args.text(2).to_ascii_lowercase()
        )));
    }
    *slot.borrow_mut() = String::from_utf8_lossy(value).into_owned();
    session.out.ok();
    Ok(())
}

fn client_no_evict(session: &mut Session, args: &Args) -> CommandResult {
    let on = if args.is(2, "on") {
        true
    } else if args.is(2, "off") {
        false
    } else {
        return Err(CommandError::Syntax);
    };
    session.client.no_evict.set(on);
    session.out.ok();
    Ok(())
}

fn client_help(session: &mut Session, _args: &Args) -> CommandResult {
    session.reply_help(
        "CLIENT",
        &[
            "GETNAME",
            "    Return the name of the current connection.",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "KILL <ip:port>",
            "    Kill connection made from <ip:port>.",
            "KILL <option> <value> [<option> <value> [...]]",
            "    Kill connections. Options are:",
            "    * ADDR (<ip:port>|<unixsocket>:0)",
            "      Kill connections made from the specified address",
            "    * LADDR (<ip:port>|<unixsocket>:0)",
            "      Kill connections made to specified local address",
            "    * TYPE (NORMAL|PRIMARY|REPLICA|PUBSUB)",
            "      Kill connections by type.",
            "    * USER <username>",
            "      Kill connections authenticated by <username>.",
            "    * SKIPME (YES|NO)",
            "      Skip killing current connection (default: yes).",
            "    * ID <client-id>",
            "      Kill connections by client id.",
            "    * MAXAGE <maxage>",
            "      Kill connections older than the specified age.",
            "LIST [options ...]",
            "    Return information about client connections. Options:",
            "    * TYPE (NORMAL|PRIMARY|REPLICA|PUBSUB)",
            "      Return clients of specified type.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
            "SETINFO <option> <value>",
            "    Set client meta attr. Options are:",
            "    * LIB-NAME: the client lib name.",
            "    * LIB-VER: the client lib version.",
            "NO-EVICT (ON|OFF)",
            "    Protect current client connection from eviction.",
        ],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn client_text_rules() {
        assert!(valid_client_text(b"my-conn_1"));
        assert!(valid_client_text(b""));
        assert!(!valid_client_text(b"a b"));
        assert!(!valid_client_text("é".as_bytes()));
    }
}
