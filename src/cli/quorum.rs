//! `runnel quorum describe`: the controller quorum as the active controller sees it (Kafka's
//! `kafka-metadata-quorum describe`), through the DescribeQuorum API (KIP-595/KIP-836) which any
//! broker forwards to the active controller.
//!
//! [`describe_quorum`] is also what `chaos/` uses to find the active controller.

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::{describe_quorum_request, DescribeQuorumRequest, TopicName};

use super::args::{parse, switch, Flag, BOOTSTRAP};
use super::CLIENT_ID;
use crate::client::{Client, ClientError};
use crate::protocol::str_bytes;

const USAGE: &str = "\
usage: runnel quorum describe [--status] [--replication]

  --status        leader, epoch, high watermark and voters (the default)
  --replication   one line per voter: log end offset, lag, last contact
  -b, --bootstrap-server HOST:PORT   broker to contact (default 127.0.0.1:9092)
  -h, --help      this text";

const FLAGS: &[Flag] = &[BOOTSTRAP, switch(&["--status"]), switch(&["--replication"])];

/// The metadata log's topic and partition (what DescribeQuorum asks about).
const METADATA_TOPIC: &str = "__cluster_metadata";

/// One voter as the active controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterStatus {
    /// Node id.
    pub node_id: i32,
    /// Last metadata offset the voter acknowledged (-1 unknown).
    pub log_end_offset: i64,
    /// When the leader last heard from it, ms since the epoch (-1 unknown).
    pub last_fetch_timestamp: i64,
    /// When it was last caught up, ms since the epoch (-1 unknown).
    pub last_caught_up_timestamp: i64,
}

/// The controller quorum's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    /// The active controller.
    pub leader_id: i32,
    /// Its epoch (the Raft term).
    pub leader_epoch: i32,
    /// The committed metadata offset.
    pub high_watermark: i64,
    /// Every voter.
    pub voters: Vec<VoterStatus>,
}

/// Asks any broker of `client` for the quorum state (one attempt; NOT_LEADER_OR_FOLLOWER while
/// an election is in progress).
pub async fn describe_quorum(client: &mut Client) -> Result<QuorumStatus, ClientError> {
    let mut part = describe_quorum_request::PartitionData::default();
    part.partition_index = 0;
    let mut topic = describe_quorum_request::TopicData::default();
    topic.topic_name = TopicName(str_bytes(METADATA_TOPIC));
    topic.partitions.push(part);
    let mut req = DescribeQuorumRequest::default();
    req.topics.push(topic);
    let resp = client.send(req).await?;
    if resp.error_code != 0 {
        return Err(ClientError::kafka(resp.error_code, resp.error_message.as_deref()));
    }
    let Some(p) = resp.topics.first().and_then(|t| t.partitions.first()) else {
        return Err(ClientError::InvalidArgument("DescribeQuorum response without a partition".into()));
    };
    if p.error_code != 0 {
        return Err(ClientError::kafka(p.error_code, p.error_message.as_deref()));
    }
    Ok(QuorumStatus {
        leader_id: p.leader_id.0,
        leader_epoch: p.leader_epoch,
        high_watermark: p.high_watermark,
        voters: p
            .current_voters
            .iter()
            .map(|v| VoterStatus {
                node_id: v.replica_id.0,
                log_end_offset: v.log_end_offset,
                last_fetch_timestamp: v.last_fetch_timestamp,
                last_caught_up_timestamp: v.last_caught_up_timestamp,
            })
            .collect(),
    })
}

/// Kafka's `describe --status` layout.
fn status_text(q: &QuorumStatus, now_ms: i64) -> String {
    let followers = q.voters.iter().filter(|v| v.node_id != q.leader_id);
    let max_lag = followers.clone().map(|v| lag(q, v)).max().unwrap_or(0);
    let max_lag_ms = followers
        .map(|v| if v.last_caught_up_timestamp < 0 { -1 } else { (now_ms - v.last_caught_up_timestamp).max(0) })
        .max()
        .unwrap_or(0);
    let ids: Vec<String> = q.voters.iter().map(|v| v.node_id.to_string()).collect();
    format!(
        "LeaderId:               {}\nLeaderEpoch:            {}\nHighWatermark:          {}\n\
         MaxFollowerLag:         {max_lag}\nMaxFollowerLagTimeMs:   {max_lag_ms}\n\
         CurrentVoters:          [{}]\nCurrentObservers:       []\n",
        q.leader_id,
        q.leader_epoch,
        q.high_watermark,
        ids.join(",")
    )
}

fn lag(q: &QuorumStatus, v: &VoterStatus) -> i64 {
    if v.log_end_offset < 0 {
        -1
    } else {
        (q.high_watermark - v.log_end_offset).max(0)
    }
}

/// Kafka's `describe --replication` layout (ages instead of raw timestamps).
fn replication_text(q: &QuorumStatus, now_ms: i64) -> String {
    let age = |t: i64| if t < 0 { "unknown".to_string() } else { format!("{} ms ago", (now_ms - t).max(0)) };
    let mut out = "NodeId\tLogEndOffset\tLag\tLastFetch\tLastCaughtUp\tStatus\n".to_string();
    for v in &q.voters {
        let status = if v.node_id == q.leader_id { "Leader" } else { "Follower" };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{status}\n",
            v.node_id,
            v.log_end_offset,
            lag(q, v),
            age(v.last_fetch_timestamp),
            age(v.last_caught_up_timestamp)
        ));
    }
    out
}

/// `runnel quorum ...`.
pub async fn quorum(argv: &[String]) -> Result<()> {
    let p = parse(argv, FLAGS)?;
    if p.help {
        println!("{USAGE}");
        return Ok(());
    }
    match p.positional.as_slice() {
        [c] if c == "describe" => {}
        [] => bail!("missing command: describe\n\n{USAGE}"),
        _ => bail!("unknown command {:?}: expected describe\n\n{USAGE}", p.positional.join(" ")),
    }
    let mut client =
        Client::connect(p.bootstrap(), CLIENT_ID).await.with_context(|| format!("connecting to {}", p.bootstrap()))?;
    let q = describe_quorum(&mut client).await.context("describing the controller quorum")?;
    let now = super::now_ms();
    if p.has("--status") || !p.has("--replication") {
        print!("{}", status_text(&q, now));
    }
    if p.has("--replication") {
        print!("{}", replication_text(&q, now));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QuorumStatus {
        let v = |node_id, log_end_offset, t| VoterStatus {
            node_id,
            log_end_offset,
            last_fetch_timestamp: t,
            last_caught_up_timestamp: t,
        };
        QuorumStatus {
            leader_id: 2,
            leader_epoch: 5,
            high_watermark: 100,
            voters: vec![v(1, 97, 900), v(2, 100, 1000), v(3, -1, -1)],
        }
    }

    // Proves the status layout names the leader, epoch, watermark, lag and voters.
    #[test]
    fn status_text_matches_kafka_layout() {
        let s = status_text(&sample(), 1000);
        assert!(s.contains("LeaderId:               2\n"), "{s}");
        assert!(s.contains("LeaderEpoch:            5\n"), "{s}");
        assert!(s.contains("HighWatermark:          100\n"), "{s}");
        assert!(s.contains("MaxFollowerLag:         3\n"), "{s}");
        assert!(s.contains("CurrentVoters:          [1,2,3]\n"), "{s}");
    }

    // Proves the replication table marks the leader and shows unknown progress as such.
    #[test]
    fn replication_text_marks_leader_and_unknowns() {
        let s = replication_text(&sample(), 1000);
        assert!(s.contains("2\t100\t0\t0 ms ago\t0 ms ago\tLeader\n"), "{s}");
        assert!(s.contains("1\t97\t3\t100 ms ago\t100 ms ago\tFollower\n"), "{s}");
        assert!(s.contains("3\t-1\t-1\tunknown\tunknown\tFollower\n"), "{s}");
    }
}
