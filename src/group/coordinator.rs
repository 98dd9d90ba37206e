//! The classic group membership state machine (JoinGroup, SyncGroup, Heartbeat, LeaveGroup),
//! following Kafka's `GroupCoordinator` semantics, as a deterministic sans-IO core.
//!
//! Inputs are decoded requests plus `now_ms`; outputs are immediate results, pending
//! operations ([`OpId`]) completed later through [`GroupCoordinator::take_completions`], and
//! [`GroupCoordinator::next_deadline`]. [`GroupCoordinator::poll`] applies timeouts (session
//! expiry, rebalance timeout, the initial rebalance delay). Member ids come from a seeded
//! generator, so a seed and an input sequence replay exactly.
//!
//! Group states: Empty -> PreparingRebalance -> CompletingRebalance -> Stable, and back to
//! PreparingRebalance when membership or protocols change.
//!
//! Invariants (checked by `check_invariants` in tests and debug builds):
//! - A member awaits a JoinGroup answer only while its group is PreparingRebalance, and a
//!   SyncGroup answer only while its group is CompletingRebalance.
//! - `pending_ops` equals the number of members awaiting a join or sync answer, and never
//!   exceeds [`PENDING_OPS_MAX`].
//! - An Empty group has no members; a CompletingRebalance or Stable group has a leader that is
//!   a member and a selected protocol every member supports.
//! - Every OpId handed out is completed exactly once (possibly with an error), unless the
//!   coordinator is dropped.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{
    GROUPS_MAX, GROUP_ID_MAX_LEN, GROUP_MAX_SIZE_REACHED, GROUP_MEMBERS_MAX, MEMBER_METADATA_MAX_BYTES,
    MEMBER_PROTOCOLS_MAX, PENDING_OPS_MAX,
};
use crate::protocol::errors;

/// Identifies a JoinGroup or SyncGroup request waiting for the group.
pub type OpId = u64;

/// How long an Empty group without members is remembered (so its generation survives brief
/// gaps) before it is forgotten. Committed offsets live in the offset store, not here.
pub const EMPTY_GROUP_RETAIN_MS: i64 = 10 * 60 * 1000;

/// Coordinator settings (from the broker config).
#[derive(Debug, Clone, Copy)]
pub struct CoordinatorConfig {
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`.
    pub session_timeout_min_ms: i64,
    /// `group.max.session.timeout.ms`.
    pub session_timeout_max_ms: i64,
}

/// A group's state, named as Kafka names it in ListGroups and DescribeGroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (possibly committed offsets).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Assignment distributed.
    Stable,
}

impl GroupState {
    /// Kafka's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A decoded JoinGroup request.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// Group id.
    pub group_id: String,
    /// Member id ("" for a new member).
    pub member_id: String,
    /// Static member id (stored and echoed; static fencing is not implemented).
    pub group_instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout (v0: equal to the session timeout).
    pub rebalance_timeout_ms: i32,
    /// Protocol type ("consumer" for consumers).
    pub protocol_type: String,
    /// Supported protocols in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): a new member first gets MEMBER_ID_REQUIRED and an id.
    pub require_known_member_id: bool,
}

/// One member as the leader sees it in the JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMember {
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// Metadata for the selected protocol.
    pub metadata: Bytes,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinResult {
    /// Error code.
    pub error_code: i16,
    /// New generation, or -1 on error.
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The selected protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// This member's id (also set with MEMBER_ID_REQUIRED).
    pub member_id: String,
    /// Every member, for the leader only.
    pub members: Vec<JoinMember>,
}

impl JoinResult {
    fn error(error_code: i16, member_id: &str) -> JoinResult {
        JoinResult { error_code, generation_id: -1, member_id: member_id.to_string(), ..Default::default() }
    }
}

/// The immediate outcome of a JoinGroup.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Answer now.
    Done(JoinResult),
    /// Answer when the operation completes.
    Pending(OpId),
}

/// A decoded SyncGroup request.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// Group id.
    pub group_id: String,
    /// Generation the member believes current.
    pub generation_id: i32,
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// v5+: must match the group's when present.
    pub protocol_type: Option<String>,
    /// v5+: must match the group's when present.
    pub protocol_name: Option<String>,
    /// The leader's assignment per member (followers send none).
    pub assignments: Vec<(String, Bytes)>,
}

/// A SyncGroup answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResult {
    /// Error code.
    pub error_code: i16,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The selected protocol.
    pub protocol_name: Option<String>,
    /// This member's assignment.
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error_code: i16) -> SyncResult {
        SyncResult { error_code, ..Default::default() }
    }
}

/// The immediate outcome of a SyncGroup.
#[derive(Debug)]
pub enum SyncOutcome {
    /// Answer now.
    Done(SyncResult),
    /// Answer when the operation completes.
    Pending(OpId),
}

/// The answer to a pending operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// For a pending JoinGroup.
    Join(JoinResult),
    /// For a pending SyncGroup.
    Sync(SyncResult),
}

/// One member in DescribeGroups.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Metadata for the selected protocol (Stable groups only).
    pub metadata: Bytes,
    /// Current assignment (Stable groups only).
    pub assignment: Bytes,
}

/// A group in DescribeGroups.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// State.
    pub state: GroupState,
    /// Protocol type ("" if none).
    pub protocol_type: String,
    /// Selected protocol (Stable groups only, else "").
    pub protocol_name: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

#[derive(Debug)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i64,
    rebalance_timeout_ms: i64,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat_ms: i64,
    awaiting_join: Option<OpId>,
    awaiting_sync: Option<OpId>,
}

impl Member {
    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
    fn session_deadline_ms(&self) -> Option<i64> {
        // A member waiting for a join or sync answer is kept alive, as Kafka does.
        if self.awaiting_join.is_some() || self.awaiting_sync.is_some() {
            None
        } else {
            Some(self.last_heartbeat_ms.saturating_add(self.session_timeout_ms))
        }
    }
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader_id: Option<String>,
    members: BTreeMap<String, Member>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, with the time they are forgotten.
    pending_members: BTreeMap<String, i64>,
    /// PreparingRebalance: the join completes no earlier than this (initial delay) ...
    join_not_before_ms: i64,
    /// ... and no later than this (rebalance timeout); laggards are then removed.
    join_deadline_ms: i64,
    /// Set while the initial rebalance delay of a new group may still be extended.
    initial_delay_active: bool,
    /// When the group last became Empty without members.
    empty_since_ms: i64,
}

impl Group {
    fn new(now_ms: i64) -> Group {
        Group {
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            join_not_before_ms: 0,
            join_deadline_ms: 0,
            initial_delay_active: false,
            empty_since_ms: now_ms,
        }
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> BTreeSet<String> {
        let mut it = self.members.values();
        let Some(first) = it.next() else { return BTreeSet::new() };
        let mut set: BTreeSet<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            set.retain(|p| m.protocols.iter().any(|(n, _)| n == p));
        }
        set
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        let candidates = self.candidate_protocols();
        self.protocol_type.as_deref() == Some(protocol_type) && protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    /// Kafka's vote: each member votes for its most preferred candidate; most votes wins
    /// (ties broken by name, for determinism).
    fn select_protocol(&self) -> String {
        let candidates = self.candidate_protocols();
        assert!(!candidates.is_empty(), "members share no protocol");
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            let choice = m.protocols.iter().find(|(n, _)| candidates.contains(n)).expect("member supports a candidate");
            *votes.entry(choice.0.as_str()).or_default() += 1;
        }
        let best = votes.values().copied().max().unwrap_or(0);
        votes.into_iter().find(|(_, v)| *v == best).map(|(n, _)| n.to_string()).expect("a protocol got votes")
    }

    fn max_rebalance_timeout_ms(&self) -> i64 {
        self.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0)
    }

    fn join_result_for(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = self.leader_id.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| JoinMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error_code: errors::NONE,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn find_member(&self, member_id: &str, group_instance_id: Option<&str>) -> Option<String> {
        if !member_id.is_empty() {
            return self.members.contains_key(member_id).then(|| member_id.to_string());
        }
        let iid = group_instance_id?;
        self.members.iter().find(|(_, m)| m.group_instance_id.as_deref() == Some(iid)).map(|(id, _)| id.clone())
    }
}

/// The group coordinator core.
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<String, Group>,
    completions: Vec<(OpId, Completion)>,
    next_op: OpId,
    pending_ops: usize,
    rng_state: u64,
}

impl GroupCoordinator {
    /// A coordinator with no groups; `seed` drives member id generation.
    pub fn new(config: CoordinatorConfig, seed: u64) -> GroupCoordinator {
        assert!(config.session_timeout_min_ms <= config.session_timeout_max_ms);
        GroupCoordinator {
            config,
            groups: BTreeMap::new(),
            completions: Vec::new(),
            next_op: 1,
            pending_ops: 0,
            rng_state: seed,
        }
    }

    /// Completed operations since the last call, in completion order.
    pub fn take_completions(&mut self) -> Vec<(OpId, Completion)> {
        std::mem::take(&mut self.completions)
    }

    /// How many JoinGroup/SyncGroup requests are waiting.
    pub fn pending_ops(&self) -> usize {
        self.pending_ops
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        // splitmix64, twice, makes a UUID-shaped suffix as Kafka's member ids have.
        let mut next = || {
            self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng_state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let u = ((next() as u128) << 64) | next() as u128;
        let client: String = client_id.chars().take(GROUP_ID_MAX_LEN / 2).collect();
        format!("{client}-{}", uuid::Uuid::from_u128(u))
    }

    fn next_op_id(&mut self) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        self.pending_ops += 1;
        assert!(self.pending_ops <= PENDING_OPS_MAX);
        op
    }

    fn complete(&mut self, op: OpId, c: Completion) {
        assert!(self.pending_ops > 0);
        self.pending_ops -= 1;
        self.completions.push((op, c));
    }

    /// Handles JoinGroup.
    pub fn join(&mut self, req: JoinRequest, now_ms: i64) -> JoinOutcome {
        let out = self.join_inner(req, now_ms);
        self.debug_check();
        out
    }

    fn join_inner(&mut self, req: JoinRequest, now_ms: i64) -> JoinOutcome {
        let fail = |code: i16| JoinOutcome::Done(JoinResult::error(code, &req.member_id));
        if req.group_id.is_empty() || req.group_id.len() > GROUP_ID_MAX_LEN {
            return fail(errors::INVALID_GROUP_ID);
        }
        if req.member_id.len() > GROUP_ID_MAX_LEN
            || req.group_instance_id.as_ref().is_some_and(|i| i.is_empty() || i.len() > GROUP_ID_MAX_LEN)
            || req.protocols.len() > MEMBER_PROTOCOLS_MAX
            || req.protocols.iter().any(|(n, m)| n.len() > GROUP_ID_MAX_LEN || m.len() > MEMBER_METADATA_MAX_BYTES)
        {
            return fail(errors::INVALID_REQUEST);
        }
        let st = req.session_timeout_ms as i64;
        if st < self.config.session_timeout_min_ms || st > self.config.session_timeout_max_ms {
            return fail(errors::INVALID_SESSION_TIMEOUT);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return fail(errors::INCONSISTENT_GROUP_PROTOCOL);
        }
        if self.pending_ops >= PENDING_OPS_MAX {
            return fail(errors::COORDINATOR_NOT_AVAILABLE);
        }
        if !self.groups.contains_key(&req.group_id) {
            if !req.member_id.is_empty() {
                return fail(errors::UNKNOWN_MEMBER_ID);
            }
            if self.groups.len() >= GROUPS_MAX {
                return fail(errors::COORDINATOR_NOT_AVAILABLE);
            }
            self.groups.insert(req.group_id.clone(), Group::new(now_ms));
        }
        let g = self.groups.get_mut(&req.group_id).expect("group exists");
        if !g.supports(&req.protocol_type, &req.protocols) {
            return fail(errors::INCONSISTENT_GROUP_PROTOCOL);
        }
        if req.member_id.is_empty() {
            if g.members.len() + g.pending_members.len() >= GROUP_MEMBERS_MAX {
                return fail(GROUP_MAX_SIZE_REACHED);
            }
            let member_id = self.new_member_id(&req.client_id);
            if req.require_known_member_id {
                let g = self.groups.get_mut(&req.group_id).expect("group exists");
                g.pending_members.insert(member_id.clone(), now_ms.saturating_add(st));
                return JoinOutcome::Done(JoinResult::error(errors::MEMBER_ID_REQUIRED, &member_id));
            }
            return JoinOutcome::Pending(self.add_member_and_rebalance(&member_id, req, now_ms));
        }
        if g.pending_members.remove(&req.member_id).is_some() {
            let member_id = req.member_id.clone();
            return JoinOutcome::Pending(self.add_member_and_rebalance(&member_id, req, now_ms));
        }
        let Some(m) = g.members.get(&req.member_id) else {
            return fail(errors::UNKNOWN_MEMBER_ID);
        };
        let unchanged = m.matches(&req.protocols);
        let is_leader = g.leader_id.as_deref() == Some(req.member_id.as_str());
        match g.state {
            GroupState::Empty => fail(errors::UNKNOWN_MEMBER_ID),
            GroupState::CompletingRebalance if unchanged => {
                // A retried JoinGroup: resend the current generation's answer.
                JoinOutcome::Done(g.join_result_for(&req.member_id))
            }
            GroupState::Stable if unchanged && !is_leader => JoinOutcome::Done(g.join_result_for(&req.member_id)),
            _ => JoinOutcome::Pending(self.update_member_and_rebalance(req, now_ms)),
        }
    }

    fn add_member_and_rebalance(&mut self, member_id: &str, req: JoinRequest, now_ms: i64) -> OpId {
        let op = self.next_op_id();
        let delay = self.config.initial_rebalance_delay_ms;
        let g = self.groups.get_mut(&req.group_id).expect("group exists");
        if g.members.is_empty() {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        g.members.insert(
            member_id.to_string(),
            Member {
                group_instance_id: req.group_instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms as i64,
                rebalance_timeout_ms: req.rebalance_timeout_ms.max(0) as i64,
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_heartbeat_ms: now_ms,
                awaiting_join: Some(op),
                awaiting_sync: None,
            },
        );
        if g.state == GroupState::PreparingRebalance && g.initial_delay_active {
            // Kafka's InitialDelayedJoin: each new member extends the delay, up to the
            // rebalance timeout.
            g.join_not_before_ms = now_ms.saturating_add(delay).min(g.join_deadline_ms);
        }
        self.rebalance_or_try_complete(&req.group_id, now_ms);
        op
    }

    fn update_member_and_rebalance(&mut self, req: JoinRequest, now_ms: i64) -> OpId {
        let op = self.next_op_id();
        let g = self.groups.get_mut(&req.group_id).expect("group exists");
        let m = g.members.get_mut(&req.member_id).expect("member exists");
        m.protocols = req.protocols;
        m.session_timeout_ms = req.session_timeout_ms as i64;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms.max(0) as i64;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.last_heartbeat_ms = now_ms;
        let old = m.awaiting_join.replace(op);
        if let Some(old) = old {
            // A duplicate JoinGroup: the newer request carries the answer.
            self.complete(old, Completion::Join(JoinResult::error(errors::REBALANCE_IN_PROGRESS, &req.member_id)));
        }
        self.rebalance_or_try_complete(&req.group_id, now_ms);
        op
    }

    fn rebalance_or_try_complete(&mut self, group_id: &str, now_ms: i64) {
        let state = self.groups[group_id].state;
        if state == GroupState::PreparingRebalance {
            self.try_complete_join(group_id, now_ms);
        } else {
            self.prepare_rebalance(group_id, now_ms);
        }
    }

    fn prepare_rebalance(&mut self, group_id: &str, now_ms: i64) {
        let delay = self.config.initial_rebalance_delay_ms;
        let g = self.groups.get_mut(group_id).expect("group exists");
        assert!(g.state != GroupState::PreparingRebalance);
        let mut cancelled = Vec::new();
        if g.state == GroupState::CompletingRebalance {
            for m in g.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(op) = m.awaiting_sync.take() {
                    cancelled.push(op);
                }
            }
        }
        let timeout = g.max_rebalance_timeout_ms();
        if g.state == GroupState::Empty && delay > 0 {
            g.initial_delay_active = true;
            g.join_not_before_ms = now_ms.saturating_add(delay);
            g.join_deadline_ms = now_ms.saturating_add(timeout.max(delay));
        } else {
            g.initial_delay_active = false;
            g.join_not_before_ms = now_ms;
            g.join_deadline_ms = now_ms.saturating_add(timeout);
        }
        g.state = GroupState::PreparingRebalance;
        for op in cancelled {
            self.complete(op, Completion::Sync(SyncResult::error(errors::REBALANCE_IN_PROGRESS)));
        }
        self.try_complete_join(group_id, now_ms);
    }

    /// Ends PreparingRebalance if every member rejoined (after any initial delay) or the
    /// rebalance timeout passed: drops laggards, starts the next generation, answers joins.
    fn try_complete_join(&mut self, group_id: &str, now_ms: i64) {
        let g = self.groups.get_mut(group_id).expect("group exists");
        if g.state != GroupState::PreparingRebalance {
            return;
        }
        let ready = now_ms >= g.join_deadline_ms || (now_ms >= g.join_not_before_ms && g.all_joined());
        if !ready {
            return;
        }
        g.members.retain(|_, m| m.awaiting_join.is_some());
        g.initial_delay_active = false;
        g.generation_id = g.generation_id.wrapping_add(1).max(1);
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.protocol_name = None;
            g.leader_id = None;
            g.empty_since_ms = now_ms;
            return;
        }
        g.protocol_name = Some(g.select_protocol());
        if g.leader_id.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
            g.leader_id = g.members.keys().next().cloned();
        }
        g.state = GroupState::CompletingRebalance;
        let mut answers = Vec::new();
        let ids: Vec<String> = g.members.keys().cloned().collect();
        for id in ids {
            let result = g.join_result_for(&id);
            let m = g.members.get_mut(&id).expect("member exists");
            m.last_heartbeat_ms = now_ms;
            answers.push((m.awaiting_join.take().expect("joined"), result));
        }
        tracing::debug!(group = group_id, generation = g.generation_id, members = answers.len(), "rebalance joined");
        for (op, r) in answers {
            self.complete(op, Completion::Join(r));
        }
    }

    /// Removes a member and rebalances the rest (or completes a rebalance it was holding up).
    fn remove_member(&mut self, group_id: &str, member_id: &str, now_ms: i64) {
        let g = self.groups.get_mut(group_id).expect("group exists");
        let Some(m) = g.members.remove(member_id) else { return };
        if g.leader_id.as_deref() == Some(member_id) {
            g.leader_id = None;
        }
        if g.members.is_empty() && g.state != GroupState::PreparingRebalance {
            g.empty_since_ms = now_ms;
        }
        let state = g.state;
        if let Some(op) = m.awaiting_join {
            self.complete(op, Completion::Join(JoinResult::error(errors::UNKNOWN_MEMBER_ID, member_id)));
        }
        if let Some(op) = m.awaiting_sync {
            self.complete(op, Completion::Sync(SyncResult::error(errors::UNKNOWN_MEMBER_ID)));
        }
        match state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(group_id, now_ms),
            GroupState::PreparingRebalance => self.try_complete_join(group_id, now_ms),
            GroupState::Empty => {}
        }
    }

    /// Handles SyncGroup.
    pub fn sync(&mut self, req: SyncRequest, now_ms: i64) -> SyncOutcome {
        let out = self.sync_inner(req, now_ms);
        self.debug_check();
        out
    }

    fn sync_inner(&mut self, req: SyncRequest, now_ms: i64) -> SyncOutcome {
        let fail = |code: i16| SyncOutcome::Done(SyncResult::error(code));
        let Some(g) = self.groups.get(&req.group_id) else { return fail(errors::UNKNOWN_MEMBER_ID) };
        let Some(m) = g.members.get(&req.member_id) else { return fail(errors::UNKNOWN_MEMBER_ID) };
        if req.generation_id != g.generation_id {
            return fail(errors::ILLEGAL_GENERATION);
        }
        if req.protocol_type.as_ref().is_some_and(|t| g.protocol_type.as_ref() != Some(t))
            || req.protocol_name.as_ref().is_some_and(|n| g.protocol_name.as_ref() != Some(n))
        {
            return fail(errors::INCONSISTENT_GROUP_PROTOCOL);
        }
        match g.state {
            GroupState::Empty => fail(errors::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => fail(errors::REBALANCE_IN_PROGRESS),
            GroupState::Stable => SyncOutcome::Done(SyncResult {
                error_code: errors::NONE,
                protocol_type: g.protocol_type.clone(),
                protocol_name: g.protocol_name.clone(),
                assignment: m.assignment.clone(),
            }),
            GroupState::CompletingRebalance => {
                if m.awaiting_sync.is_none() && self.pending_ops >= PENDING_OPS_MAX {
                    return fail(errors::COORDINATOR_NOT_AVAILABLE);
                }
                if req.assignments.iter().any(|(_, a)| a.len() > MEMBER_METADATA_MAX_BYTES) {
                    return fail(errors::INVALID_REQUEST);
                }
                let op = self.next_op_id();
                let g = self.groups.get_mut(&req.group_id).expect("group exists");
                let is_leader = g.leader_id.as_deref() == Some(req.member_id.as_str());
                let m = g.members.get_mut(&req.member_id).expect("member exists");
                m.last_heartbeat_ms = now_ms;
                if let Some(old) = m.awaiting_sync.replace(op) {
                    self.complete(old, Completion::Sync(SyncResult::error(errors::REBALANCE_IN_PROGRESS)));
                }
                if is_leader {
                    self.apply_assignment(&req.group_id, req.assignments, now_ms);
                }
                SyncOutcome::Pending(op)
            }
        }
    }

    /// The leader's SyncGroup: store assignments, go Stable, answer every waiting member.
    fn apply_assignment(&mut self, group_id: &str, assignments: Vec<(String, Bytes)>, now_ms: i64) {
        let g = self.groups.get_mut(group_id).expect("group exists");
        let mut by_member: BTreeMap<String, Bytes> = assignments.into_iter().collect();
        let mut answers = Vec::new();
        for (id, m) in g.members.iter_mut() {
            m.assignment = by_member.remove(id).unwrap_or_default();
            m.last_heartbeat_ms = now_ms;
            if let Some(op) = m.awaiting_sync.take() {
                answers.push((op, m.assignment.clone()));
            }
        }
        g.state = GroupState::Stable;
        let (pt, pn) = (g.protocol_type.clone(), g.protocol_name.clone());
        tracing::debug!(group = group_id, generation = g.generation_id, "group stable");
        for (op, assignment) in answers {
            let r = SyncResult {
                error_code: errors::NONE,
                protocol_type: pt.clone(),
                protocol_name: pn.clone(),
                assignment,
            };
            self.complete(op, Completion::Sync(r));
        }
    }

    /// Handles Heartbeat; returns the error code.
    pub fn heartbeat(&mut self, group_id: &str, member_id: &str, generation_id: i32, now_ms: i64) -> i16 {
        let Some(g) = self.groups.get_mut(group_id) else { return errors::UNKNOWN_MEMBER_ID };
        if g.state == GroupState::Empty {
            return errors::UNKNOWN_MEMBER_ID;
        }
        let Some(m) = g.members.get_mut(member_id) else { return errors::UNKNOWN_MEMBER_ID };
        if generation_id != g.generation_id {
            return errors::ILLEGAL_GENERATION;
        }
        m.last_heartbeat_ms = now_ms;
        match g.state {
            GroupState::PreparingRebalance => errors::REBALANCE_IN_PROGRESS,
            _ => errors::NONE,
        }
    }

    /// Handles LeaveGroup for each (member id, group instance id); returns one error code per
    /// member, in order.
    pub fn leave(&mut self, group_id: &str, members: &[(String, Option<String>)], now_ms: i64) -> Vec<i16> {
        let mut out = Vec::with_capacity(members.len());
        for (member_id, iid) in members {
            let found = self.groups.get(group_id).and_then(|g| g.find_member(member_id, iid.as_deref()));
            match found {
                Some(id) => {
                    tracing::debug!(group = group_id, member = %id, "member left");
                    self.remove_member(group_id, &id, now_ms);
                    out.push(errors::NONE);
                }
                None => out.push(errors::UNKNOWN_MEMBER_ID),
            }
        }
        self.debug_check();
        out
    }

    /// Checks an OffsetCommit's membership fields (Kafka's rules); returns the error code. A
    /// commit with a negative generation is a "simple consumer" commit, accepted while the
    /// group has no members.
    pub fn validate_commit(&mut self, group_id: &str, member_id: &str, generation_id: i32, now_ms: i64) -> i16 {
        if group_id.is_empty() || group_id.len() > GROUP_ID_MAX_LEN {
            return errors::INVALID_GROUP_ID;
        }
        let Some(g) = self.groups.get_mut(group_id) else {
            return if generation_id < 0 { errors::NONE } else { errors::ILLEGAL_GENERATION };
        };
        if generation_id < 0 && g.state == GroupState::Empty {
            return errors::NONE;
        }
        if g.state == GroupState::CompletingRebalance {
            return errors::REBALANCE_IN_PROGRESS;
        }
        let Some(m) = g.members.get_mut(member_id) else { return errors::UNKNOWN_MEMBER_ID };
        if generation_id != g.generation_id {
            return errors::ILLEGAL_GENERATION;
        }
        m.last_heartbeat_ms = now_ms;
        errors::NONE
    }

    /// Applies timeouts: expired KIP-394 pending members and sessions, rebalance timeouts and
    /// initial delays, forgetting long-empty groups.
    pub fn poll(&mut self, now_ms: i64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            let g = self.groups.get_mut(&id).expect("group exists");
            g.pending_members.retain(|_, until| *until > now_ms);
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.session_deadline_ms().is_some_and(|d| d <= now_ms))
                .map(|(mid, _)| mid.clone())
                .collect();
            for mid in expired {
                tracing::info!(group = %id, member = %mid, "member session expired");
                self.remove_member(&id, &mid, now_ms);
            }
            self.try_complete_join(&id, now_ms);
            let g = &self.groups[&id];
            if g.state == GroupState::Empty
                && g.members.is_empty()
                && g.pending_members.is_empty()
                && now_ms.saturating_sub(g.empty_since_ms) >= EMPTY_GROUP_RETAIN_MS
            {
                self.groups.remove(&id);
            }
        }
        self.debug_check();
    }

    /// The earliest time at which [`GroupCoordinator::poll`] has work, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut best: Option<i64> = None;
        let mut consider = |t: i64| best = Some(best.map_or(t, |b| b.min(t)));
        for g in self.groups.values() {
            for &until in g.pending_members.values() {
                consider(until);
            }
            for m in g.members.values() {
                if let Some(d) = m.session_deadline_ms() {
                    consider(d);
                }
            }
            match g.state {
                GroupState::PreparingRebalance => {
                    consider(g.join_deadline_ms);
                    if g.all_joined() {
                        consider(g.join_not_before_ms);
                    }
                }
                GroupState::Empty if g.members.is_empty() && g.pending_members.is_empty() => {
                    consider(g.empty_since_ms.saturating_add(EMPTY_GROUP_RETAIN_MS));
                }
                _ => {}
            }
        }
        best
    }

    /// The group's state, if the coordinator knows the group.
    pub fn group_state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|g| g.state)
    }

    /// The group's generation, if known.
    pub fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups.get(group_id).map(|g| g.generation_id)
    }

    /// DescribeGroups for one group.
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let g = self.groups.get(group_id)?;
        let stable = g.state == GroupState::Stable;
        let protocol = g.protocol_name.clone().unwrap_or_default();
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable { m.metadata_for(&protocol) } else { Bytes::new() },
                assignment: if stable { m.assignment.clone() } else { Bytes::new() },
            })
            .collect();
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol_name: if stable { protocol } else { String::new() },
            members,
        })
    }

    /// Every known group: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        self.groups.iter().map(|(id, g)| (id.clone(), g.protocol_type.clone().unwrap_or_default(), g.state)).collect()
    }

    /// Forgets a group for DeleteGroups. Fails with NON_EMPTY_GROUP while it has members (or
    /// members mid-join); returns whether the coordinator knew it.
    pub fn delete_group(&mut self, group_id: &str) -> Result<bool, i16> {
        match self.groups.get(group_id) {
            None => Ok(false),
            Some(g) if g.state != GroupState::Empty || !g.members.is_empty() || !g.pending_members.is_empty() => {
                Err(errors::NON_EMPTY_GROUP)
            }
            Some(_) => {
                self.groups.remove(group_id);
                Ok(true)
            }
        }
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// Asserts the invariants in the module documentation.
    pub fn check_invariants(&self) {
        let mut waiting = 0;
        for (id, g) in &self.groups {
            for m in g.members.values() {
                assert!(
                    m.awaiting_join.is_none() || g.state == GroupState::PreparingRebalance,
                    "{id}: join waits in {:?}",
                    g.state
                );
                assert!(
                    m.awaiting_sync.is_none() || g.state == GroupState::CompletingRebalance,
                    "{id}: sync waits in {:?}",
                    g.state
                );
                waiting += m.awaiting_join.is_some() as usize + m.awaiting_sync.is_some() as usize;
            }
            match g.state {
                GroupState::Empty => assert!(g.members.is_empty(), "{id}: Empty group with members"),
                GroupState::CompletingRebalance | GroupState::Stable => {
                    let leader = g.leader_id.as_ref().expect("leader");
                    assert!(g.members.contains_key(leader), "{id}: leader is not a member");
                    let p = g.protocol_name.as_ref().expect("protocol");
                    assert!(g.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == p)));
                }
                GroupState::PreparingRebalance => {}
            }
            assert!(g.members.len() + g.pending_members.len() <= GROUP_MEMBERS_MAX);
        }
        assert_eq!(waiting, self.pending_ops, "pending op count drifted");
        assert!(self.pending_ops <= PENDING_OPS_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION_MS: i32 = 10_000;
    const REBALANCE_MS: i32 = 30_000;

    fn coordinator(initial_delay_ms: i64) -> GroupCoordinator {
        GroupCoordinator::new(
            CoordinatorConfig {
                initial_rebalance_delay_ms: initial_delay_ms,
                session_timeout_min_ms: 6_000,
                session_timeout_max_ms: 300_000,
            },
            42,
        )
    }

    fn join_req(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{p}")))).collect(),
            require_known_member_id: true,
            ..Default::default()
        }
    }

    /// Runs the KIP-394 handshake and returns the member id and the pending join op.
    fn join_new(c: &mut GroupCoordinator, now: i64) -> (String, OpId) {
        let JoinOutcome::Done(r) = c.join(join_req("", &["range"]), now) else { panic!("expected MEMBER_ID_REQUIRED") };
        assert_eq!(r.error_code, errors::MEMBER_ID_REQUIRED);
        assert!(r.member_id.starts_with("c-"));
        match c.join(join_req(&r.member_id, &["range"]), now) {
            JoinOutcome::Pending(op) => (r.member_id, op),
            JoinOutcome::Done(r) => panic!("unexpected immediate answer {r:?}"),
        }
    }

    fn completions(c: &mut GroupCoordinator) -> BTreeMap<OpId, Completion> {
        c.take_completions().into_iter().collect()
    }

    fn join_of(done: &BTreeMap<OpId, Completion>, op: OpId) -> JoinResult {
        match done.get(&op) {
            Some(Completion::Join(r)) => r.clone(),
            other => panic!("op {op}: expected a join completion, got {other:?}"),
        }
    }

    fn sync_of(done: &BTreeMap<OpId, Completion>, op: OpId) -> SyncResult {
        match done.get(&op) {
            Some(Completion::Sync(r)) => r.clone(),
            other => panic!("op {op}: expected a sync completion, got {other:?}"),
        }
    }

    fn sync_req(member: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncRequest {
        SyncRequest {
            group_id: "g".into(),
            generation_id: generation,
            member_id: member.into(),
            assignments: assignments.iter().map(|(m, a)| (m.to_string(), Bytes::from(a.to_string()))).collect(),
            ..Default::default()
        }
    }

    /// Brings a group with two members to Stable at `now`; returns (leader, follower, generation).
    fn stable_pair(c: &mut GroupCoordinator, now: i64) -> (String, String, i32) {
        let (a, op_a) = join_new(c, now);
        // With no initial delay the first member's join completes at once.
        let done = completions(c);
        let ra = join_of(&done, op_a);
        assert_eq!((ra.error_code, ra.generation_id, ra.leader.as_str()), (errors::NONE, 1, a.as_str()));
        let SyncOutcome::Pending(s_a) = c.sync(sync_req(&a, 1, &[(&a, "A")]), now) else { panic!() };
        assert_eq!(sync_of(&completions(c), s_a).assignment, Bytes::from("A"));
        // The second member triggers a rebalance; the first rejoins when its heartbeat says so.
        let (b, op_b) = join_new(c, now);
        assert_eq!(c.heartbeat("g", &a, 1, now), errors::REBALANCE_IN_PROGRESS);
        let JoinOutcome::Pending(op_a2) = c.join(join_req(&a, &["range"]), now) else { panic!() };
        let done = completions(c);
        let (ra, rb) = (join_of(&done, op_a2), join_of(&done, op_b));
        assert_eq!(ra.generation_id, 2);
        assert_eq!(ra.leader, a);
        assert_eq!(ra.members.len(), 2);
        assert!(rb.members.is_empty());
        assert_eq!(rb.protocol_name.as_deref(), Some("range"));
        let SyncOutcome::Pending(s_b) = c.sync(sync_req(&b, 2, &[]), now) else { panic!() };
        assert!(completions(c).is_empty(), "follower waits for the leader");
        let SyncOutcome::Pending(s_a) = c.sync(sync_req(&a, 2, &[(&a, "A2"), (&b, "B2")]), now) else { panic!() };
        let done = completions(c);
        assert_eq!(sync_of(&done, s_a).assignment, Bytes::from("A2"));
        assert_eq!(sync_of(&done, s_b).assignment, Bytes::from("B2"));
        assert_eq!(c.group_state("g"), Some(GroupState::Stable));
        (a, b, 2)
    }

    #[test]
    fn two_members_join_and_sync_assignments() {
        // Proves two members reach Stable: the leader gets both members' metadata and the
        // leader's SyncGroup distributes each member's assignment.
        let mut c = coordinator(0);
        let (a, b, generation) = stable_pair(&mut c, 0);
        assert_eq!(c.heartbeat("g", &a, generation, 100), errors::NONE);
        assert_eq!(c.heartbeat("g", &b, generation, 100), errors::NONE);
        // A follower's later SyncGroup gets its stored assignment at once.
        let SyncOutcome::Done(r) = c.sync(sync_req(&b, generation, &[]), 200) else { panic!() };
        assert_eq!(r.assignment, Bytes::from("B2"));
        let d = c.describe("g").unwrap();
        assert_eq!(d.members.len(), 2);
        assert_eq!(d.protocol_name, "range");
        c.check_invariants();
    }

    #[test]
    fn member_id_required_flow() {
        // Proves KIP-394: a v4+ join without a member id gets MEMBER_ID_REQUIRED and an id, an
        // unknown id is rejected, and pending ids expire after the session timeout.
        let mut c = coordinator(0);
        let JoinOutcome::Done(r) = c.join(join_req("", &["range"]), 0) else { panic!() };
        assert_eq!(r.error_code, errors::MEMBER_ID_REQUIRED);
        let JoinOutcome::Done(bad) = c.join(join_req("nobody", &["range"]), 0) else { panic!() };
        assert_eq!(bad.error_code, errors::UNKNOWN_MEMBER_ID);
        c.poll(SESSION_MS as i64 + 1);
        let JoinOutcome::Done(late) = c.join(join_req(&r.member_id, &["range"]), SESSION_MS as i64 + 1) else {
            panic!()
        };
        assert_eq!(late.error_code, errors::UNKNOWN_MEMBER_ID);
        // Pre-v4 clients are admitted without the extra round trip.
        let mut old = join_req("", &["range"]);
        old.require_known_member_id = false;
        let JoinOutcome::Pending(op) = c.join(old, 20_000) else { panic!() };
        assert_eq!(join_of(&completions(&mut c), op).error_code, errors::NONE);
    }

    #[test]
    fn third_member_triggers_rebalance() {
        // Proves a new member moves a Stable group to PreparingRebalance, the rebalance waits
        // for every known member, and the next generation includes all three.
        let mut c = coordinator(0);
        let (a, b, generation) = stable_pair(&mut c, 0);
        let (x, op_x) = join_new(&mut c, 10);
        assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
        assert!(completions(&mut c).is_empty());
        assert_eq!(c.heartbeat("g", &b, generation, 20), errors::REBALANCE_IN_PROGRESS);
        let JoinOutcome::Pending(op_a) = c.join(join_req(&a, &["range"]), 30) else { panic!() };
        assert!(completions(&mut c).is_empty(), "b has not rejoined yet");
        let JoinOutcome::Pending(op_b) = c.join(join_req(&b, &["range"]), 40) else { panic!() };
        let done = completions(&mut c);
        let leader = join_of(&done, op_a);
        assert_eq!(leader.generation_id, generation + 1);
        assert_eq!(leader.members.len(), 3);
        assert_eq!(join_of(&done, op_b).generation_id, generation + 1);
        assert_eq!(join_of(&done, op_x).leader, a);
        assert_eq!(c.group_state("g"), Some(GroupState::CompletingRebalance));
        // A stale-generation heartbeat is refused.
        assert_eq!(c.heartbeat("g", &x, generation, 50), errors::ILLEGAL_GENERATION);
    }

    #[test]
    fn rebalance_timeout_removes_members_that_did_not_rejoin() {
        // Proves members that do not rejoin within the rebalance timeout are dropped and the
        // rebalance completes without them.
        let mut c = coordinator(0);
        let (a, b, generation) = stable_pair(&mut c, 0);
        let JoinOutcome::Pending(op_a) = c.join(join_req(&a, &["range", "roundrobin"]), 100) else { panic!() };
        // b keeps heartbeating (so its session stays alive) but never rejoins.
        let deadline = 100 + REBALANCE_MS as i64;
        let mut now = 100;
        while now + 3_000 < deadline {
            now += 3_000;
            assert_eq!(c.heartbeat("g", &b, generation, now), errors::REBALANCE_IN_PROGRESS);
            c.poll(now);
            assert!(completions(&mut c).is_empty());
        }
        assert_eq!(c.next_deadline(), Some(deadline));
        c.poll(deadline);
        let r = join_of(&completions(&mut c), op_a);
        assert_eq!((r.generation_id, r.members.len()), (generation + 1, 1));
        assert_eq!(c.heartbeat("g", &b, generation, deadline), errors::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn session_expiry_removes_member_and_rebalances() {
        // Proves a member that stops heartbeating is removed after its session timeout and the
        // survivors are told to rejoin.
        let mut c = coordinator(0);
        let (a, b, generation) = stable_pair(&mut c, 0);
        let mut now = 0;
        while now < SESSION_MS as i64 + 1_000 {
            now += 3_000;
            assert_eq!(c.heartbeat("g", &a, generation, now), errors::NONE);
            c.poll(now);
            if c.group_state("g") != Some(GroupState::Stable) {
                break;
            }
        }
        assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
        assert_eq!(c.heartbeat("g", &b, generation, now), errors::UNKNOWN_MEMBER_ID);
        assert_eq!(c.heartbeat("g", &a, generation, now), errors::REBALANCE_IN_PROGRESS);
        let JoinOutcome::Pending(op) = c.join(join_req(&a, &["range"]), now) else { panic!() };
        let r = join_of(&completions(&mut c), op);
        assert_eq!((r.generation_id, r.members.len()), (generation + 1, 1));
    }

    #[test]
    fn leave_triggers_rebalance_and_last_leave_empties_group() {
        // Proves LeaveGroup removes the member at once, rebalances the rest, and the group is
        // Empty (with a new generation) when the last member leaves.
        let mut c = coordinator(0);
        let (a, b, generation) = stable_pair(&mut c, 0);
        assert_eq!(
            c.leave("g", &[(b.clone(), None), ("ghost".into(), None)], 10),
            vec![errors::NONE, errors::UNKNOWN_MEMBER_ID]
        );
        assert_eq!(c.group_state("g"), Some(GroupState::PreparingRebalance));
        let JoinOutcome::Pending(op) = c.join(join_req(&a, &["range"]), 20) else { panic!() };
        assert_eq!(join_of(&completions(&mut c), op).generation_id, generation + 1);
        assert_eq!(c.leave("g", &[(a.clone(), None)], 30), vec![errors::NONE]);
        assert_eq!(c.group_state("g"), Some(GroupState::Empty));
        assert_eq!(c.generation("g"), Some(generation + 2));
        assert_eq!(c.heartbeat("g", &a, generation + 1, 40), errors::UNKNOWN_MEMBER_ID);
        assert_eq!(c.delete_group("g"), Ok(true));
    }

    #[test]
    fn heartbeat_and_sync_errors() {
        // Proves Heartbeat/SyncGroup answer UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION and
        // REBALANCE_IN_PROGRESS as Kafka does, and a leaver's pending sync is cancelled.
        let mut c = coordinator(0);
        assert_eq!(c.heartbeat("nope", "m", 1, 0), errors::UNKNOWN_MEMBER_ID);
        let (a, b, generation) = stable_pair(&mut c, 0);
        assert_eq!(c.heartbeat("g", "stranger", generation, 1), errors::UNKNOWN_MEMBER_ID);
        assert_eq!(c.heartbeat("g", &a, generation - 1, 1), errors::ILLEGAL_GENERATION);
        let SyncOutcome::Done(r) = c.sync(sync_req(&a, generation + 5, &[]), 1) else { panic!() };
        assert_eq!(r.error_code, errors::ILLEGAL_GENERATION);
        // Rebalance in progress: sync is refused.
        let JoinOutcome::Pending(op_a) = c.join(join_req(&a, &["range", "x"]), 2) else { panic!() };
        let SyncOutcome::Done(r) = c.sync(sync_req(&b, generation, &[]), 3) else { panic!() };
        assert_eq!(r.error_code, errors::REBALANCE_IN_PROGRESS);
        let JoinOutcome::Pending(op_b) = c.join(join_req(&b, &["range"]), 4) else { panic!() };
        let done = completions(&mut c);
        let g2 = join_of(&done, op_a).generation_id;
        assert_eq!(join_of(&done, op_b).generation_id, g2);
        // The follower waits for the leader; the leader leaves instead; the follower is told
        // to rejoin.
        let SyncOutcome::Pending(s_b) = c.sync(sync_req(&b, g2, &[]), 5) else { panic!() };
        assert_eq!(c.leave("g", &[(a.clone(), None)], 6), vec![errors::NONE]);
        assert_eq!(sync_of(&completions(&mut c), s_b).error_code, errors::REBALANCE_IN_PROGRESS);
        c.check_invariants();
    }

    #[test]
    fn protocol_selection_and_inconsistency() {
        // Proves the chosen protocol is one every member supports, picked by votes, and a
        // member with no protocol in common (or another protocol type) is refused.
        let mut c = coordinator(0);
        let mut old = join_req("", &["roundrobin", "range"]);
        old.require_known_member_id = false;
        let JoinOutcome::Pending(op1) = c.join(old.clone(), 0) else { panic!() };
        let m1 = join_of(&completions(&mut c), op1).member_id;
        let mut second = join_req("", &["range", "roundrobin"]);
        second.require_known_member_id = false;
        let JoinOutcome::Pending(op2) = c.join(second.clone(), 1) else { panic!() };
        let JoinOutcome::Pending(op1b) = c.join(join_req(&m1, &["sticky", "roundrobin", "range"]), 2) else { panic!() };
        let done = completions(&mut c);
        // Votes: m1 -> roundrobin (sticky is not shared), m2 -> range; tie broken by name.
        assert_eq!(join_of(&done, op1b).protocol_name.as_deref(), Some("range"));
        assert_eq!(join_of(&done, op2).protocol_name.as_deref(), Some("range"));
        let mut alien = join_req("", &["cooperative-sticky"]);
        alien.require_known_member_id = false;
        let JoinOutcome::Done(r) = c.join(alien, 3) else { panic!() };
        assert_eq!(r.error_code, errors::INCONSISTENT_GROUP_PROTOCOL);
        let mut other_type = join_req("", &["range"]);
        other_type.protocol_type = "connect".into();
        let JoinOutcome::Done(r) = c.join(other_type, 3) else { panic!() };
        assert_eq!(r.error_code, errors::INCONSISTENT_GROUP_PROTOCOL);
    }

    #[test]
    fn invalid_session_timeout_and_group_id() {
        // Proves session timeouts outside the broker bounds and empty group ids are refused.
        let mut c = coordinator(0);
        let mut r = join_req("", &["range"]);
        r.session_timeout_ms = 1_000;
        let JoinOutcome::Done(res) = c.join(r, 0) else { panic!() };
        assert_eq!(res.error_code, errors::INVALID_SESSION_TIMEOUT);
        let mut r = join_req("", &["range"]);
        r.group_id = String::new();
        let JoinOutcome::Done(res) = c.join(r, 0) else { panic!() };
        assert_eq!(res.error_code, errors::INVALID_GROUP_ID);
    }

    #[test]
    fn initial_rebalance_delay_collects_members() {
        // Proves a new group waits group.initial.rebalance.delay.ms (extended per new member)
        // before its first generation, so members joining together share it.
        let mut c = coordinator(3_000);
        let (a, op_a) = join_new(&mut c, 0);
        assert!(completions(&mut c).is_empty());
        assert_eq!(c.next_deadline(), Some(3_000));
        let (_b, op_b) = join_new(&mut c, 1_000);
        c.poll(3_000);
        assert!(completions(&mut c).is_empty(), "delay extended by the second member");
        c.poll(4_000);
        let done = completions(&mut c);
        let (ra, rb) = (join_of(&done, op_a), join_of(&done, op_b));
        assert_eq!((ra.generation_id, rb.generation_id), (1, 1));
        assert_eq!(ra.leader, rb.leader);
        let leader_result = if ra.leader == a { ra } else { rb };
        assert_eq!(leader_result.members.len(), 2);
    }

    #[test]
    fn commit_validation_rules() {
        // Proves OffsetCommit membership checks: simple-consumer commits (generation -1) are
        // accepted only while the group has no members; members need the current generation.
        let mut c = coordinator(0);
        assert_eq!(c.validate_commit("simple", "", -1, 0), errors::NONE);
        assert_eq!(c.validate_commit("simple", "m", 3, 0), errors::ILLEGAL_GENERATION);
        let (a, _b, generation) = stable_pair(&mut c, 0);
        assert_eq!(c.validate_commit("g", &a, generation, 1), errors::NONE);
        assert_eq!(c.validate_commit("g", &a, generation - 1, 1), errors::ILLEGAL_GENERATION);
        assert_eq!(c.validate_commit("g", "", -1, 1), errors::UNKNOWN_MEMBER_ID);
        assert_eq!(c.delete_group("g"), Err(errors::NON_EMPTY_GROUP));
    }

    #[test]
    fn random_schedules_keep_invariants() {
        // Proves the invariants hold and every op completes exactly once under random
        // interleavings of joins, syncs, heartbeats, leaves and clock jumps.
        for seed in 0..40u64 {
            let mut c = coordinator((seed % 3) as i64 * 1_000);
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut now = 0i64;
            let mut known: Vec<String> = Vec::new();
            let mut open_ops = BTreeSet::new();
            for _ in 0..400 {
                now += rnd(4_000) as i64;
                let pick = |known: &Vec<String>, r: u64| {
                    known.get(r as usize % known.len().max(1)).cloned().unwrap_or_default()
                };
                let gen = c.generation("g").unwrap_or(0);
                match rnd(6) {
                    0 => match c.join(join_req("", &["range"]), now) {
                        JoinOutcome::Done(r) => {
                            if r.error_code == errors::MEMBER_ID_REQUIRED {
                                known.push(r.member_id)
                            }
                        }
                        JoinOutcome::Pending(op) => {
                            open_ops.insert(op);
                        }
                    },
                    1 => {
                        let m = pick(&known, rnd(1000));
                        if let JoinOutcome::Pending(op) = c.join(join_req(&m, &["range"]), now) {
                            open_ops.insert(op);
                        }
                    }
                    2 => {
                        let m = pick(&known, rnd(1000));
                        let assignments: Vec<(&str, &str)> = known.iter().map(|k| (k.as_str(), "x")).collect();
                        if let SyncOutcome::Pending(op) = c.sync(sync_req(&m, gen, &assignments), now) {
                            open_ops.insert(op);
                        }
                    }
                    3 => {
                        let m = pick(&known, rnd(1000));
                        c.heartbeat("g", &m, gen, now);
                    }
                    4 => {
                        let m = pick(&known, rnd(1000));
                        c.leave("g", &[(m, None)], now);
                    }
                    _ => c.poll(now),
                }
                for (op, _) in c.take_completions() {
                    assert!(open_ops.remove(&op), "seed {seed}: op {op} completed twice or never issued");
                }
                c.check_invariants();
                assert_eq!(open_ops.len(), c.pending_ops());
            }
        }
    }
}
