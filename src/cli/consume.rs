//! `runnel consume`: print records, one per line.
//!
//! Partitions are fetched in turn, each from its own position; a partition whose position has
//! reached its high watermark counts as caught up (for `--exit-at-end`). Output goes through one
//! buffered stdout lock, flushed after each fetch; a closed stdout (`| head`) ends quietly.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};

use super::args::{parse, switch, value, Flag, BOOTSTRAP};
use super::CLIENT_ID;
use crate::client::{codes, Client, ConsumedRecord, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

/// Long-poll wait when reading a single partition.
const FETCH_WAIT_SINGLE_MS: i32 = 500;
/// Long-poll wait per partition when reading several in turn (keeps a round short).
const FETCH_WAIT_MULTI_MS: i32 = 100;
/// Bytes asked for per fetch.
const FETCH_MAX_BYTES: i32 = 1024 * 1024;

const USAGE: &str = "\
usage: runnel consume --topic T [options]

Prints record values, one per line.

options:
  -b, --bootstrap-server HOST:PORT   broker to contact (default 127.0.0.1:9092)
  -t, --topic T                      topic to read (required)
  -p, --partition P                  read only partition P (default: all partitions)
  --from-beginning                   start at the earliest offset
  --offset N                         start at offset N (needs --partition)
  --from-end                         start at the end (the default)
  --max-messages N                   stop after N records
  --exit-at-end                      stop once every partition is caught up
  --print-key                        print key SEP value
  --print-headers                    print headers (k:v,k:v) before the key/value
  --print-offset                     print Offset:N before the record
  --key-separator SEP                separator after key and headers (default tab)
  -h, --help                         this text";

const FLAGS: &[Flag] = &[
    BOOTSTRAP,
    value(&["--topic", "-t"]),
    value(&["--partition", "-p"]),
    switch(&["--from-beginning"]),
    value(&["--offset"]),
    switch(&["--from-end"]),
    value(&["--max-messages"]),
    switch(&["--exit-at-end"]),
    switch(&["--print-key"]),
    switch(&["--print-headers"]),
    switch(&["--print-offset"]),
    value(&["--key-separator"]),
];

/// What to print for each record.
struct Format {
    key: bool,
    headers: bool,
    offset: bool,
    separator: Vec<u8>,
}

/// `runnel consume ...`: print records.
pub async fn consume(argv: &[String]) -> Result<()> {
    let p = parse(argv, FLAGS)?;
    if p.help {
        println!("{USAGE}");
        return Ok(());
    }
    if let Some(extra) = p.positional.first() {
        bail!("unexpected argument {extra:?} (try --help)");
    }
    let starts = [p.has("--from-beginning"), p.has("--offset"), p.has("--from-end")];
    if starts.iter().filter(|s| **s).count() > 1 {
        bail!("give at most one of --from-beginning, --offset and --from-end");
    }
    let topic = p.required("--topic")?.to_string();
    let only_partition: Option<i32> = p.get("--partition").map(str::parse).transpose()?;
    let start_offset: Option<i64> = p.get("--offset").map(str::parse).transpose()?;
    if start_offset.is_some() && only_partition.is_none() {
        bail!("--offset needs --partition");
    }
    let max_messages: Option<u64> = p.get("--max-messages").map(str::parse).transpose()?;
    let exit_at_end = p.has("--exit-at-end");
    let format = Format {
        key: p.has("--print-key"),
        headers: p.has("--print-headers"),
        offset: p.has("--print-offset"),
        separator: p.get("--key-separator").unwrap_or("\t").as_bytes().to_vec(),
    };

    let mut client =
        Client::connect(p.bootstrap(), CLIENT_ID).await.with_context(|| format!("connecting to {}", p.bootstrap()))?;
    let all: Vec<i32> = client
        .partitions(&topic)
        .await
        .with_context(|| format!("looking up topic {topic}"))?
        .iter()
        .map(|p| p.partition)
        .collect();
    let partitions = match only_partition {
        Some(op) if !all.contains(&op) => bail!("topic {topic} has no partition {op}"),
        Some(op) => vec![op],
        None => all,
    };
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    for &partition in &partitions {
        let offset = match start_offset {
            Some(o) => o,
            None => {
                let ts = if p.has("--from-beginning") { EARLIEST_TIMESTAMP } else { LATEST_TIMESTAMP };
                client.list_offsets(&topic, partition, ts).await?.0
            }
        };
        positions.insert(partition, offset);
    }

    let wait_ms = if partitions.len() > 1 { FETCH_WAIT_MULTI_MS } else { FETCH_WAIT_SINGLE_MS };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed: u64 = 0;
    let mut caught_up: BTreeMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
    loop {
        for (&partition, position) in positions.iter_mut() {
            if exit_at_end && caught_up[&partition] {
                continue;
            }
            let fetched = client.fetch(&topic, partition, *position, wait_ms, 1, FETCH_MAX_BYTES).await;
            let result = match fetched {
                Ok(r) => r,
                Err(e) if e.kafka_code() == Some(codes::OFFSET_OUT_OF_RANGE) => {
                    let earliest = client.list_offsets(&topic, partition, EARLIEST_TIMESTAMP).await?.0;
                    let latest = client.list_offsets(&topic, partition, LATEST_TIMESTAMP).await?.0;
                    let reset = if *position < earliest { earliest } else { latest };
                    eprintln!("offset {} out of range for {topic}-{partition}; resetting to {reset}", *position);
                    *position = reset;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("fetching {topic}-{partition}")),
            };
            for record in &result.records {
                if max_messages.is_some_and(|m| printed >= m) {
                    break;
                }
                if !write_record(&mut out, record, &format)? {
                    return Ok(()); // stdout closed
                }
                printed += 1;
            }
            if !flush(&mut out)? {
                return Ok(());
            }
            if max_messages.is_some_and(|m| printed >= m) {
                return Ok(());
            }
            *position = result.next_offset.max(*position);
            if *position >= result.high_watermark {
                caught_up.insert(partition, true);
            }
        }
        if exit_at_end && caught_up.values().all(|c| *c) {
            return Ok(());
        }
    }
}

/// Writes one record line; false if stdout is closed.
fn write_record(out: &mut impl Write, r: &ConsumedRecord, f: &Format) -> Result<bool> {
    let mut line = Vec::new();
    if f.offset {
        line.extend_from_slice(format!("Offset:{}", r.offset).as_bytes());
        line.extend_from_slice(&f.separator);
    }
    if f.headers {
        if r.headers.is_empty() {
            line.extend_from_slice(b"NO_HEADERS");
        }
        for (i, (k, v)) in r.headers.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(k.as_bytes());
            line.push(b':');
            line.extend_from_slice(v.as_deref().unwrap_or(b"null"));
        }
        line.extend_from_slice(&f.separator);
    }
    if f.key {
        line.extend_from_slice(r.key.as_deref().unwrap_or(b"null"));
        line.extend_from_slice(&f.separator);
    }
    line.extend_from_slice(r.value.as_deref().unwrap_or(b"null"));
    line.push(b'\n');
    ok_unless_closed(out.write_all(&line))
}

fn flush(out: &mut impl Write) -> Result<bool> {
    ok_unless_closed(out.flush())
}

fn ok_unless_closed(r: std::io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn record_line_format() {
        // Proves the order offset, headers, key, value and the null spellings.
        let r = ConsumedRecord {
            offset: 7,
            timestamp_ms: 0,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("a".into(), Some(Bytes::from_static(b"1"))), ("b".into(), None)],
        };
        let f = Format { key: true, headers: true, offset: true, separator: b"\t".to_vec() };
        let mut out = Vec::new();
        assert!(write_record(&mut out, &r, &f).unwrap());
        assert_eq!(out, b"Offset:7\ta:1,b:null\tk\tv\n");
        let plain = Format { key: false, headers: false, offset: false, separator: b"\t".to_vec() };
        let mut out = Vec::new();
        let tombstone = ConsumedRecord { value: None, ..r };
        write_record(&mut out, &tombstone, &plain).unwrap();
        assert_eq!(out, b"null\n");
    }
}
