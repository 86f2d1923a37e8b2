//! LATENCY HISTOGRAM: the per-command latency distributions kept while `latency-tracking` is on,
//! merged across shards, in Valkey's reply shape.

use hdrhistogram::Histogram;

use super::table::{CoordFuture, Handler};
use crate::error::CommandResult;
use crate::protocol::Args;
use crate::server::session::Session;

pub static HANDLERS: &[(&str, Handler)] = &[
    ("latency", Handler::Container),
    ("latency|histogram", Handler::Coord(histogram)),
    ("latency|help", Handler::Conn(help)),
];

/// The first bucket's upper bound (ns); each next one doubles, as in Valkey's reply.
const FIRST_BUCKET_NS: u64 = 1024;

fn histogram(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let per_shard = session
            .gather(|s| {
                s.stats
                    .borrow()
                    .latency
                    .iter()
                    .map(|(name, h)| (*name, h.clone()))
                    .collect::<Vec<_>>()
            })
            .await?;
        let mut merged: Vec<(&'static str, Histogram<u64>)> = Vec::new();
        for (name, h) in per_shard.into_iter().flatten() {
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, mine)) => {
                    let _ = mine.add(&h);
                }
                None => merged.push((name, h)),
            }
        }
        merged.sort_by_key(|(n, _)| *n);
        let wanted: Vec<String> = (2..args.len())
            .map(|i| args.text(i).to_ascii_lowercase())
            .collect();
        // A container's name asks for each of its subcommands.
        let selected: Vec<&(&str, Histogram<u64>)> = merged
            .iter()
            .filter(|(name, _)| {
                wanted.is_empty()
                    || wanted
                        .iter()
                        .any(|w| name == w || name.split('|').next() == Some(w.as_str()))
            })
            .collect();
        let out = &mut session.out;
        out.map(selected.len());
        for (name, h) in selected {
            out.bulk(name.as_bytes());
            out.map(2);
            out.bulk(b"calls");
            out.int(i64::try_from(h.len()).unwrap_or(i64::MAX));
            out.bulk(b"histogram_usec");
            let buckets = cumulative_buckets(h);
            out.map(buckets.len());
            for (usec, count) in buckets {
                out.int(i64::try_from(usec).unwrap_or(i64::MAX));
                out.int(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
        Ok(())
    })
}

/// (bucket upper bound in µs, calls up to it) for each power-of-two bucket that added calls.
fn cumulative_buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    let mut buckets = Vec::new();
    let mut cumulative = 0u64;
    for step in h.iter_log(FIRST_BUCKET_NS, 2.0) {
        let added = step.count_since_last_iteration();
        cumulative += added;
        if added > 0 {
            buckets.push((
                h.highest_equivalent(step.value_iterated_to()) / 1000,
                cumulative,
            ));
        }
    }
    buckets
}

fn help(session: &mut Session, _args: &Args) -> CommandResult {
    session.reply_help(
        "LATENCY",
        &[
            "HISTOGRAM [COMMAND ...]",
            "    Return a cumulative distribution of latencies in the format of a histogram for the specified command names.",
            "    If no commands are specified then all histograms are replied.",
        ],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_powers_of_two() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 2).expect("bounds");
        for ns in [900, 1500, 1600, 20_000, 30_000_000] {
            h.record(ns).expect("in range");
        }
        let buckets = cumulative_buckets(&h);
        assert_eq!(buckets.first(), Some(&(1, 1)));
        assert_eq!(buckets[1], (2, 3));
        assert_eq!(buckets.last().map(|b| b.1), Some(5));
        assert!(buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
    }
}
