//! `runnel topics create|list|describe|delete`.

use anyhow::{bail, Context, Result};

use super::args::{self, parse, switch, value, Flag, BOOTSTRAP};
use super::CLIENT_ID;
use crate::client::{Client, TopicMetadata};

const USAGE: &str = "\
usage: runnel topics <command> [options]

commands:
  create NAME [--partitions N] [--replication-factor N] [--config k=v ...]
  list
  describe [NAME]
  delete NAME

options:
  -b, --bootstrap-server HOST:PORT   broker to contact (default 127.0.0.1:9092)
  --partitions N                     partitions for create (default 1)
  --replication-factor N             replication factor for create (default: the broker's
                                     default.replication.factor)
  --config k=v                       topic config for create (repeatable)
  --exclude-internal                 list/describe: leave out internal topics
  -h, --help                         this text";

const FLAGS: &[Flag] = &[
    BOOTSTRAP,
    value(&["--partitions"]),
    value(&["--replication-factor"]),
    value(&["--config"]),
    switch(&["--exclude-internal"]),
];

/// Kafka's config source for a per-topic override (DescribeConfigs `config_source`).
const CONFIG_SOURCE_DYNAMIC_TOPIC: i8 = 1;

/// `runnel topics ...`: manage topics.
pub async fn topics(argv: &[String]) -> Result<()> {
    let p = parse(argv, FLAGS)?;
    if p.help {
        println!("{USAGE}");
        return Ok(());
    }
    let Some(command) = p.positional.first() else {
        bail!("missing command: create, list, describe or delete\n\n{USAGE}");
    };
    let names = &p.positional[1..];
    match command.as_str() {
        "create" => {
            let [name] = names else {
                bail!("topics create takes exactly one topic name");
            };
            let partitions: i32 = p.parse_or("--partitions", 1)?;
            let rf: i16 = p.parse_or("--replication-factor", -1)?;
            let configs =
                p.all("--config").iter().map(|c| args::parse_key_value(c, "--config")).collect::<Result<Vec<_>>>()?;
            let mut client = connect(p.bootstrap()).await?;
            client
                .create_topic(name, partitions, rf, configs)
                .await
                .with_context(|| format!("creating topic {name}"))?;
            println!("Created topic {name}.");
        }
        "list" => {
            if !names.is_empty() {
                bail!("topics list takes no arguments");
            }
            let mut client = connect(p.bootstrap()).await?;
            let metadata = client.metadata(None).await?;
            for t in &metadata.topics {
                if p.has("--exclude-internal") && t.is_internal {
                    continue;
                }
                println!("{}", t.name);
            }
        }
        "describe" => {
            if names.len() > 1 {
                bail!("topics describe takes at most one topic name");
            }
            let mut client = connect(p.bootstrap()).await?;
            let metadata = client.metadata(names.first().map(|n| vec![n.clone()])).await?;
            for t in &metadata.topics {
                if p.has("--exclude-internal") && t.is_internal {
                    continue;
                }
                if t.error_code != 0 {
                    bail!("topic {}: {}", t.name, crate::client::kafka_error_name(t.error_code));
                }
                let configs = match client.describe_configs(&t.name).await {
                    Ok(entries) => entries
                        .iter()
                        .filter(|c| c.source == CONFIG_SOURCE_DYNAMIC_TOPIC)
                        .map(|c| format!("{}={}", c.name, c.value.as_deref().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(","),
                    Err(e) => {
                        tracing::debug!(topic = t.name, error = %e, "describe configs failed");
                        String::new()
                    }
                };
                print!("{}", describe_topic(t, &configs));
            }
        }
        "delete" => {
            let [name] = names else {
                bail!("topics delete takes exactly one topic name");
            };
            let mut client = connect(p.bootstrap()).await?;
            client.delete_topic(name).await.with_context(|| format!("deleting topic {name}"))?;
            println!("Deleted topic {name}.");
        }
        other => bail!("unknown topics command {other:?}\n\n{USAGE}"),
    }
    Ok(())
}

async fn connect(bootstrap: &str) -> Result<Client> {
    Client::connect(bootstrap, CLIENT_ID).await.with_context(|| format!("connecting to {bootstrap}"))
}

/// Kafka's `kafka-topics --describe` layout: a topic line, then one line per partition.
fn describe_topic(t: &TopicMetadata, configs: &str) -> String {
    let rf = t.partitions.first().map(|p| p.replicas.len()).unwrap_or(0);
    let mut out = format!(
        "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}\n",
        t.name,
        t.topic_id,
        t.partitions.len(),
        rf,
        configs
    );
    for p in &t.partitions {
        out.push_str(&format!(
            "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}",
            t.name,
            p.partition,
            if p.leader_id < 0 { "none".to_string() } else { p.leader_id.to_string() },
            join(&p.replicas),
            join(&p.isr),
        ));
        if p.leader_epoch >= 0 {
            out.push_str(&format!("\tLeaderEpoch: {}", p.leader_epoch));
        }
        if !p.offline_replicas.is_empty() {
            out.push_str(&format!("\tOffline: {}", join(&p.offline_replicas)));
        }
        if p.error_code != 0 {
            out.push_str(&format!("\tError: {}", crate::client::kafka_error_name(p.error_code)));
        }
        out.push('\n');
    }
    out
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::PartitionMetadata;

    #[test]
    fn describe_output_has_leader_replicas_isr_and_epoch() {
        // Proves the describe layout operators know from kafka-topics.
        let t = TopicMetadata {
            name: "t".into(),
            topic_id: uuid::Uuid::nil(),
            error_code: 0,
            is_internal: false,
            partitions: vec![PartitionMetadata {
                partition: 0,
                error_code: 0,
                leader_id: 1,
                leader_epoch: 3,
                replicas: vec![1, 2],
                isr: vec![1],
                offline_replicas: vec![],
            }],
        };
        let s = describe_topic(&t, "retention.ms=1");
        assert!(s.starts_with("Topic: t\tTopicId: 00000000-0000-0000-0000-000000000000\tPartitionCount: 1\tReplicationFactor: 2\tConfigs: retention.ms=1\n"), "{s}");
        assert!(s.contains("\tPartition: 0\tLeader: 1\tReplicas: 1,2\tIsr: 1\tLeaderEpoch: 3\n"), "{s}");
    }
}
