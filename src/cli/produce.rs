//! `runnel produce`: one record per stdin line.
//!
//! A reader thread turns stdin into lines on a bounded channel (the client stays free of
//! threads; only this CLI front end blocks on stdin). The async side takes whatever lines are
//! ready, up to [`BATCH_LINES_MAX`] or [`BATCH_BYTES_MAX`], so piped input goes in large
//! requests while a typed line is sent at once.

use std::collections::BTreeMap;
use std::io::BufRead;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::args::{self, parse, value, Flag, BOOTSTRAP};
use super::{now_ms, CLIENT_ID};
use crate::client::records::parse_compression;
use crate::client::{partition_for_key, Client, ProduceRecord};

/// Most lines sent in one round of produce requests.
const BATCH_LINES_MAX: usize = 1000;
/// Most line bytes sent in one round of produce requests.
const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Lines read ahead of the sender before the reader thread blocks.
const READ_AHEAD_LINES_MAX: usize = 10_000;

const USAGE: &str = "\
usage: runnel produce --topic T [options] < lines

Reads lines from stdin and produces each as a record.

options:
  -b, --bootstrap-server HOST:PORT   broker to contact (default 127.0.0.1:9092)
  -t, --topic T                      topic to produce to (required)
  -p, --partition P                  produce every record to partition P
  --acks 0|1|all                     acknowledgements to wait for (default all)
  --key-separator SEP                split each line into key SEP value; keyed records
                                     are partitioned by murmur2 of the key as Kafka does
                                     (a line without SEP gets a null key)
  --header k=v                       add a header to every record (repeatable)
  --compression none|gzip|snappy|lz4|zstd   (default none)
  -h, --help                         this text

Without --partition and without a key, records go to partitions round-robin.";

const FLAGS: &[Flag] = &[
    BOOTSTRAP,
    value(&["--topic", "-t"]),
    value(&["--partition", "-p"]),
    value(&["--acks"]),
    value(&["--key-separator"]),
    value(&["--header"]),
    value(&["--compression"]),
];

/// `runnel produce ...`: produce stdin lines.
pub async fn produce(argv: &[String]) -> Result<()> {
    let p = parse(argv, FLAGS)?;
    if p.help {
        println!("{USAGE}");
        return Ok(());
    }
    if let Some(extra) = p.positional.first() {
        bail!("unexpected argument {extra:?} (try --help)");
    }
    let topic = p.required("--topic")?.to_string();
    let fixed_partition: Option<i32> = p.get("--partition").map(str::parse).transpose()?;
    let acks = args::parse_acks(p.get("--acks").unwrap_or("all"))?;
    let separator = p.get("--key-separator").map(|s| s.as_bytes().to_vec());
    if separator.as_ref().is_some_and(|s| s.is_empty()) {
        bail!("--key-separator must not be empty");
    }
    let headers: Vec<(String, Bytes)> = p
        .all("--header")
        .iter()
        .map(|h| args::parse_key_value(h, "--header").map(|(k, v)| (k, Bytes::from(v))))
        .collect::<Result<_>>()?;
    let compression_name = p.get("--compression").unwrap_or("none");
    let compression =
        parse_compression(compression_name).with_context(|| format!("unknown compression {compression_name:?}"))?;

    let mut client =
        Client::connect(p.bootstrap(), CLIENT_ID).await.with_context(|| format!("connecting to {}", p.bootstrap()))?;
    let partitions = client.partitions(&topic).await.with_context(|| format!("looking up topic {topic}"))?.len() as i32;
    if partitions == 0 {
        bail!("topic {topic} has no partitions");
    }
    if let Some(fp) = fixed_partition {
        if !(0..partitions).contains(&fp) {
            bail!("topic {topic} has no partition {fp} (it has {partitions})");
        }
    }

    let mut lines = spawn_stdin_reader();
    let mut round_robin: i32 = 0;
    while let Some(first) = lines.recv().await {
        let mut chunk = vec![first?];
        let mut bytes = chunk[0].len();
        while chunk.len() < BATCH_LINES_MAX && bytes < BATCH_BYTES_MAX {
            match lines.try_recv() {
                Ok(line) => {
                    let line = line?;
                    bytes += line.len();
                    chunk.push(line);
                }
                Err(_) => break,
            }
        }
        let timestamp_ms = now_ms();
        let mut by_partition: BTreeMap<i32, Vec<ProduceRecord>> = BTreeMap::new();
        for line in chunk {
            let (key, value) = split_line(line, separator.as_deref());
            let partition = match (fixed_partition, &key) {
                (Some(fp), _) => fp,
                (None, Some(k)) => partition_for_key(k, partitions),
                (None, None) => {
                    round_robin = (round_robin + 1) % partitions;
                    round_robin
                }
            };
            by_partition.entry(partition).or_default().push(ProduceRecord {
                key,
                value: Some(value),
                headers: headers.clone(),
                timestamp_ms,
            });
        }
        for (partition, records) in by_partition {
            client
                .produce(&topic, partition, acks, records, compression)
                .await
                .with_context(|| format!("producing to {topic}-{partition}"))?;
        }
    }
    Ok(())
}

/// Splits `line` into key and value at the first `separator`; no separator (or none found)
/// means a null key and the whole line as value.
fn split_line(line: Bytes, separator: Option<&[u8]>) -> (Option<Bytes>, Bytes) {
    let Some(sep) = separator else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (Some(line.slice(..at)), line.slice(at + sep.len()..)),
        None => (None, line),
    }
}

/// Starts a thread that sends stdin's lines (without the line ending) on a bounded channel.
fn spawn_stdin_reader() -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD_LINES_MAX);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(Bytes::from(line))).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_line_at_first_separator() {
        // Proves key/value splitting, multi-byte separators and the no-separator case.
        let (k, v) = split_line(Bytes::from_static(b"k1:v:1"), Some(b":"));
        assert_eq!((k.as_deref(), &v[..]), (Some(&b"k1"[..]), &b"v:1"[..]));
        let (k, v) = split_line(Bytes::from_static(b"a::b"), Some(b"::"));
        assert_eq!((k.as_deref(), &v[..]), (Some(&b"a"[..]), &b"b"[..]));
        let (k, v) = split_line(Bytes::from_static(b"plain"), Some(b":"));
        assert_eq!((k, &v[..]), (None, &b"plain"[..]));
        let (k, v) = split_line(Bytes::from_static(b"x:y"), None);
        assert_eq!((k, &v[..]), (None, &b"x:y"[..]));
    }
}
