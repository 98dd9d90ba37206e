//! `runnel groups list | describe GROUP | delete GROUP`: consumer groups, in the manner of
//! Kafka's `kafka-consumer-groups.sh` (`--list`, `--describe` with per-partition lag,
//! `--delete`). ListGroups goes to every broker (each lists the groups it coordinates); the
//! others go to the group's coordinator, found with FindCoordinator.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest, OffsetFetchRequest,
};

use super::args::{parse, Flag, BOOTSTRAP};
use super::CLIENT_ID;
use crate::client::{Client, ClientError, LATEST_TIMESTAMP};
use crate::protocol::str_bytes;

const USAGE: &str = "\
usage: runnel groups <command> [options]

commands:
  list              every consumer group (asks every broker)
  describe GROUP    state, members, and per partition: committed offset, log end offset, lag
  delete GROUP      delete an empty group and its committed offsets

options:
  -b, --bootstrap-server HOST:PORT   broker to contact (default 127.0.0.1:9092)
  -h, --help                         this text";

const FLAGS: &[Flag] = &[BOOTSTRAP];

/// Node id of `group`'s coordinator.
async fn coordinator(client: &mut Client, group: &str) -> Result<i32, ClientError> {
    let meta = client.metadata(Some(Vec::new())).await?;
    let node =
        meta.brokers.first().map(|b| b.node_id).ok_or_else(|| ClientError::InvalidArgument("no brokers".into()))?;
    let conn = client.connection_to(node).await?;
    let version = conn.version_for::<FindCoordinatorRequest>()?;
    let mut req = FindCoordinatorRequest::default();
    if version >= 4 {
        req.coordinator_keys = vec![str_bytes(group)];
    } else {
        req.key = str_bytes(group);
    }
    let resp = conn.send(&req).await?;
    let (code, node_id) = match resp.coordinators.first() {
        Some(c) if version >= 4 => (c.error_code, c.node_id.0),
        _ => (resp.error_code, resp.node_id.0),
    };
    if code != 0 {
        return Err(ClientError::kafka(code, None));
    }
    Ok(node_id)
}

async fn list(client: &mut Client) -> Result<()> {
    let meta = client.metadata(Some(Vec::new())).await.context("fetching metadata")?;
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    for b in &meta.brokers {
        let resp = client.send_to(b.node_id, ListGroupsRequest::default()).await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                eprintln!("broker {} did not answer ListGroups: {e}", b.node_id);
                continue;
            }
        };
        if resp.error_code != 0 {
            eprintln!("broker {}: {}", b.node_id, ClientError::kafka(resp.error_code, None));
        }
        for g in resp.groups {
            groups.insert(g.group_id.to_string(), (g.protocol_type.to_string(), g.group_state.to_string()));
        }
    }
    for (id, _) in groups {
        println!("{id}");
    }
    Ok(())
}

async fn describe(client: &mut Client, group: &str) -> Result<()> {
    let node = coordinator(client, group).await.with_context(|| format!("finding the coordinator of {group}"))?;
    let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]);
    let resp = client.send_to(node, req).await.context("describing the group")?;
    let Some(d) = resp.groups.into_iter().next() else { bail!("empty DescribeGroups response") };
    if d.error_code != 0 {
        bail!("describing {group}: {}", ClientError::kafka(d.error_code, None));
    }
    println!("GROUP {group}  STATE {}  COORDINATOR {node}  MEMBERS {}", d.group_state, d.members.len());
    for m in &d.members {
        println!("  member {}  client {}  host {}", m.member_id, m.client_id, m.client_host);
    }
    let conn = client.connection_to(node).await?;
    let version = conn.version_for::<OffsetFetchRequest>()?;
    let mut req = OffsetFetchRequest::default();
    let mut committed: Vec<(String, i32, i64)> = Vec::new();
    if version >= 8 {
        let mut g = kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup::default();
        g.group_id = GroupId(str_bytes(group));
        g.topics = None;
        req.groups = vec![g];
        let resp = conn.send(&req).await.context("fetching committed offsets")?;
        for g in resp.groups {
            if g.error_code != 0 {
                bail!("fetching offsets of {group}: {}", ClientError::kafka(g.error_code, None));
            }
            for t in g.topics {
                for p in t.partitions {
                    committed.push((t.name.to_string(), p.partition_index, p.committed_offset));
                }
            }
        }
    } else {
        req.group_id = GroupId(str_bytes(group));
        req.topics = None;
        let resp = conn.send(&req).await.context("fetching committed offsets")?;
        if resp.error_code != 0 {
            bail!("fetching offsets of {group}: {}", ClientError::kafka(resp.error_code, None));
        }
        for t in resp.topics {
            for p in t.partitions {
                committed.push((t.name.to_string(), p.partition_index, p.committed_offset));
            }
        }
    }
    committed.sort();
    println!("\n{:<30} {:>9} {:>15} {:>15} {:>10}", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG");
    for (topic, partition, offset) in committed {
        let end = client.list_offsets(&topic, partition, LATEST_TIMESTAMP).await.map(|(o, _)| o).unwrap_or(-1);
        let lag = if offset >= 0 && end >= 0 { (end - offset).max(0).to_string() } else { "-".to_string() };
        println!("{topic:<30} {partition:>9} {offset:>15} {end:>15} {lag:>10}");
    }
    Ok(())
}

async fn delete(client: &mut Client, group: &str) -> Result<()> {
    let node = coordinator(client, group).await.with_context(|| format!("finding the coordinator of {group}"))?;
    let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes(group))]);
    let resp = client.send_to(node, req).await.context("deleting the group")?;
    for r in resp.results {
        if r.error_code != 0 {
            bail!("deleting {group}: {}", ClientError::kafka(r.error_code, None));
        }
    }
    println!("Deleted group {group}.");
    Ok(())
}

/// `runnel groups ...`.
pub async fn groups(argv: &[String]) -> Result<()> {
    let p = parse(argv, FLAGS)?;
    if p.help {
        println!("{USAGE}");
        return Ok(());
    }
    let mut client =
        Client::connect(p.bootstrap(), CLIENT_ID).await.with_context(|| format!("connecting to {}", p.bootstrap()))?;
    match p.positional.as_slice() {
        [c] if c == "list" => list(&mut client).await,
        [c, g] if c == "describe" => describe(&mut client, g).await,
        [c, g] if c == "delete" => delete(&mut client, g).await,
        [] => bail!("missing command\n\n{USAGE}"),
        _ => bail!("unknown command {:?}\n\n{USAGE}", p.positional.join(" ")),
    }
}
