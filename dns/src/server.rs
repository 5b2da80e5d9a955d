//! Answering DNS queries: bytes in, an [`Answer`] out.
//!
//! Rules (after weaveDNS, with the differences noted):
//! - Names in our domain (`weave.local.` by default) are answered from the records, AA set:
//!   A (and ANY) with every live address, shuffled per answer, TTL from the config; any
//!   other type of an existing name is NOERROR with no answers (RFC 4074) and our SOA in
//!   authority (so the empty answer can be cached, RFC 2308); unknown names NXDOMAIN with
//!   the SOA. The domain apex exists (it has the SOA). Classes other than IN/ANY, and zone
//!   transfers, are REFUSED.
//! - A single-label name (`web.`) is completed with the domain; if the completed name has
//!   records it is answered as above. Otherwise the query is forwarded (Weave answered
//!   NXDOMAIN; forwarding keeps single-label names that upstream resolves, like a site's
//!   short hostnames, working).
//! - PTR queries under `in-addr.arpa.` for an address of a live record are answered (the
//!   smallest name); other reverse queries are forwarded.
//! - Everything else is forwarded: a cached reply if there is one, else a [`ForwardPlan`]
//!   the caller carries out. SERVFAIL when there is no upstream, or all fail.
//! - Sizes: over UDP 512 bytes without EDNS0, else the client's size clamped to
//!   [512, `max_udp_payload`]; over TCP 65535. A local answer too big keeps the largest
//!   prefix of records that fits and sets TC; a forwarded one too big is cut to the
//!   question with TC set (the client retries over TCP).
//! - Malformed queries get FORMERR (or NOTIMP for other opcodes, BADVERS for EDNS
//!   versions above 0); those too short to carry an ID, and responses, are dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::cache::{Cache, KeyBuf};
use crate::message::{
    self, A_RECORD_LEN, CLASS_ANY, CLASS_IN, EXT_RCODE_BADVERS, HEADER_LEN, OPT_LEN, Query,
    QueryError, RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED, RCODE_SERVFAIL, TYPE_A, TYPE_ANY,
    TYPE_AXFR, TYPE_IXFR, TYPE_PTR, TYPE_SOA,
};
use crate::name::{MAX_NAME_LEN, WireName, suffix_at_label};
use crate::records::NameStore;

/// The smallest UDP payload every DNS client accepts (RFC 1035 §4.2.1).
const MIN_UDP: usize = 512;
/// The largest message over TCP (two-byte length prefix).
const MAX_TCP: usize = 65535;

/// How the query arrived, and so how big the answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Settings of the DNS server (`--dns-domain`, `--dns-ttl`, ...).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Our domain; default `weave.local.`.
    pub domain: WireName,
    /// TTL of our answers, seconds; default 1 (Weave's code; its docs said 30).
    pub ttl: u32,
    /// How long to wait for each upstream (Weave: 5 s).
    pub upstream_timeout: Duration,
    /// Largest UDP answer we send, and the size we advertise in EDNS0; default 4096.
    pub max_udp_payload: u16,
    /// How many upstream replies to cache; 0 disables the cache. Default 1024.
    pub cache_capacity: usize,
    /// Cap on how long a positive upstream reply is cached; default 1 h.
    pub cache_max_ttl: Duration,
    /// Cap on how long a negative upstream reply is cached; default 30 s.
    pub cache_max_negative_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            domain: WireName::from_dotted("weave.local.")
                .expect("the default domain is a valid name"),
            ttl: 1,
            upstream_timeout: Duration::from_secs(5),
            max_udp_payload: 4096,
            cache_capacity: 1024,
            cache_max_ttl: Duration::from_secs(3600),
            cache_max_negative_ttl: Duration::from_secs(30),
        }
    }
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Ask upstream, following the plan.
    Forward(ForwardPlan),
    /// Send nothing.
    Drop,
}

/// [`Server::answer_message`]'s result, for callers that work with hickory messages.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageAnswer {
    Reply(Message),
    Forward(ForwardPlan),
    Drop,
}

/// How to forward one query: send [`Self::query`] to each of [`Self::upstreams`] in turn
/// over [`Self::transport`], waiting up to [`Self::timeout`] for each, and feed every
/// reply to [`Server::forward_reply`]. If none gives an answer, send the client
/// [`Server::forward_failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPlan {
    query: Vec<u8>,
    upstreams: Arc<[SocketAddr]>,
    transport: Transport,
    timeout: Duration,
    client_id: u16,
    client_flags: u16,
    client_edns: Option<message::Edns>,
    client_limit: usize,
    question_len: usize,
    cache_key: Box<[u8]>,
}

impl ForwardPlan {
    /// The query to send upstream: the client's, under a fresh random ID.
    pub fn query(&self) -> &[u8] {
        &self.query
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The client's transport; use the same upstream (so a TCP client's big answer
    /// arrives whole).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn question(&self) -> &[u8] {
        &self.query[HEADER_LEN..HEADER_LEN + self.question_len]
    }

    fn upstream_id(&self) -> u16 {
        u16::from_be_bytes([self.query[0], self.query[1]])
    }
}

/// What an upstream reply means for a [`ForwardPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Send these bytes to the client; done.
    Reply(Vec<u8>),
    /// That upstream failed (SERVFAIL, REFUSED, a malformed reply): try the next one.
    TryNext,
    /// Not a reply to this query (wrong ID or question, not a response): keep waiting.
    Ignore,
}

/// Counters for metrics and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Answered from the records (including NXDOMAIN in our domain).
    pub local: u64,
    /// Answered from the cache.
    pub cache_hits: u64,
    /// Planned for forwarding.
    pub forwarded: u64,
    /// Answered FORMERR, NOTIMP, BADVERS or REFUSED.
    pub errors: u64,
    /// Dropped without an answer.
    pub dropped: u64,
    /// SERVFAIL sent (no upstream, or all failed).
    pub servfail: u64,
}

/// The answering state: config, upstreams, cache and the seeded RNG (shuffles and IDs).
pub struct Server {
    config: ServerConfig,
    upstreams: Arc<[SocketAddr]>,
    rng: ChaCha8Rng,
    cache: Cache,
    scratch: Vec<Ipv4Addr>,
    stats: ServerStats,
}

/// Where the SOA owner (our domain) is in the response: a pointer into the question, or
/// not there yet (a completed single-label name).
#[derive(Clone, Copy)]
enum DomainAt {
    Question(usize),
    Absent,
}

impl Server {
    pub fn new(config: ServerConfig, seed: u64) -> Self {
        let cache = Cache::new(
            config.cache_capacity,
            config.cache_max_ttl,
            config.cache_max_negative_ttl,
        );
        Self {
            config,
            upstreams: Arc::from(Vec::new()),
            rng: ChaCha8Rng::seed_from_u64(seed),
            cache,
            scratch: Vec::new(),
            stats: ServerStats::default(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Replaces the upstream servers (from [`crate::parse_resolv_conf`]). Plans already
    /// handed out keep their list.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.upstreams = Arc::from(upstreams);
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// How many upstream replies are cached.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Answers one query that arrived over `transport`. Never panics on any input.
    pub fn answer(
        &mut self,
        store: &NameStore,
        query: &[u8],
        transport: Transport,
        now: Instant,
    ) -> Answer {
        let q = match message::parse_query(query) {
            Ok(q) => q,
            Err(QueryError::Drop) => {
                self.stats.dropped += 1;
                return Answer::Drop;
            }
            Err(QueryError::Reply { id, flags, rcode }) => {
                self.stats.errors += 1;
                return Answer::Reply(message::error_reply(id, flags, rcode));
            }
        };
        if q.edns.is_some_and(|e| e.version > 0) {
            self.stats.errors += 1;
            return Answer::Reply(self.reply_empty(&q, RCODE_NOERROR, false, EXT_RCODE_BADVERS));
        }
        let limit = match (transport, q.edns) {
            (Transport::Tcp, _) => MAX_TCP,
            (Transport::Udp, None) => MIN_UDP,
            (Transport::Udp, Some(e)) => usize::from(e.payload).clamp(
                MIN_UDP,
                usize::from(self.config.max_udp_payload).max(MIN_UDP),
            ),
        };
        if q.qtype == TYPE_AXFR || q.qtype == TYPE_IXFR {
            self.stats.errors += 1;
            return Answer::Reply(self.reply_empty(&q, RCODE_REFUSED, false, 0));
        }
        let class_ok = q.qclass == CLASS_IN || q.qclass == CLASS_ANY;

        if let Some(at) = suffix_at_label(q.lower_name(), self.config.domain.as_wire()) {
            if !class_ok {
                self.stats.errors += 1;
                return Answer::Reply(self.reply_empty(&q, RCODE_REFUSED, false, 0));
            }
            self.stats.local += 1;
            let key = q.lower_name();
            return Answer::Reply(self.local_answer(store, &q, key, limit, DomainAt::Question(at)));
        }
        if q.label_count() == 1 && class_ok {
            let domain = self.config.domain.as_wire();
            let label = q.label(0);
            if 1 + label.len() + domain.len() <= MAX_NAME_LEN {
                let mut buf = [0u8; MAX_NAME_LEN];
                let len = 1 + label.len() + domain.len();
                buf[0] = label.len() as u8;
                buf[1..1 + label.len()].copy_from_slice(label);
                buf[1 + label.len()..len].copy_from_slice(domain);
                if store.addrs_of(&buf[..len]).is_some() {
                    self.stats.local += 1;
                    return Answer::Reply(self.local_answer(
                        store,
                        &q,
                        &buf[..len],
                        limit,
                        DomainAt::Absent,
                    ));
                }
            }
        }
        if (q.qtype == TYPE_PTR || q.qtype == TYPE_ANY)
            && class_ok
            && let Some(addr) = reverse_addr(&q)
            && let Some(name) = store.name_of(addr)
        {
            self.stats.local += 1;
            return Answer::Reply(self.ptr_answer(&q, name, limit));
        }
        self.forward(&q, query, transport, limit, now)
    }

    /// [`Self::answer`] for a hickory message (a daemon built on hickory-server). The
    /// message is encoded and the reply decoded; same rules, same results.
    pub fn answer_message(
        &mut self,
        store: &NameStore,
        query: &Message,
        transport: Transport,
        now: Instant,
    ) -> MessageAnswer {
        let Ok(bytes) = query.to_vec() else {
            // Unencodable: whatever it is, it is not a query we can parse.
            return MessageAnswer::Reply(Message::error_msg(
                query.metadata.id,
                query.metadata.op_code,
                ResponseCode::FormErr,
            ));
        };
        match self.answer(store, &bytes, transport, now) {
            Answer::Reply(reply) => {
                MessageAnswer::Reply(Message::from_vec(&reply).unwrap_or_else(|_| {
                    // Our own output always parses (tested and fuzzed); degrade, never panic.
                    Message::error_msg(query.metadata.id, OpCode::Query, ResponseCode::ServFail)
                }))
            }
            Answer::Forward(plan) => MessageAnswer::Forward(plan),
            Answer::Drop => MessageAnswer::Drop,
        }
    }

    /// Feeds an upstream `reply` to `plan`'s query.
    pub fn forward_reply(
        &mut self,
        plan: &ForwardPlan,
        reply: &[u8],
        now: Instant,
    ) -> ForwardOutcome {
        if reply.len() < HEADER_LEN
            || u16::from_be_bytes([reply[0], reply[1]]) != plan.upstream_id()
            || reply[2] & 0x80 == 0
        {
            return ForwardOutcome::Ignore;
        }
        let Some(question_end) = message::reply_question_matches(reply, plan.question()) else {
            return ForwardOutcome::Ignore;
        };
        let Some(facts) = message::walk_reply(reply, question_end) else {
            return ForwardOutcome::TryNext;
        };
        if facts.rcode == RCODE_SERVFAIL || facts.rcode == RCODE_REFUSED {
            return ForwardOutcome::TryNext;
        }
        let mut out = reply.to_vec();
        self.cache.insert(&plan.cache_key, reply, facts, now);
        self.to_client(
            plan.client_id,
            plan.client_edns,
            plan.client_limit,
            &mut out,
            plan.question(),
        );
        ForwardOutcome::Reply(out)
    }

    /// The SERVFAIL answer for a plan whose upstreams all failed.
    pub fn forward_failed(&mut self, plan: &ForwardPlan) -> Vec<u8> {
        self.stats.servfail += 1;
        let mut out = Vec::with_capacity(HEADER_LEN + plan.question_len + OPT_LEN);
        let ar = u16::from(plan.client_edns.is_some());
        message::push_header(
            &mut out,
            plan.client_id,
            message::response_flags(plan.client_flags, false, false, RCODE_SERVFAIL),
            [1, 0, 0, ar],
        );
        out.extend_from_slice(plan.question());
        if let Some(edns) = plan.client_edns {
            message::push_opt(&mut out, self.config.max_udp_payload, 0, edns.dnssec_ok);
        }
        out
    }

    fn forward(
        &mut self,
        q: &Query<'_>,
        raw: &[u8],
        transport: Transport,
        limit: usize,
        now: Instant,
    ) -> Answer {
        let flags = u8::from(q.edns.is_some())
            | u8::from(q.edns.is_some_and(|e| e.dnssec_ok)) << 1
            | u8::from(q.cd()) << 2
            | u8::from(q.rd()) << 3;
        let key = KeyBuf::new(q.lower_name(), q.qtype, q.qclass, flags);
        if let Some(mut reply) = self.cache.get(key.as_slice(), now) {
            self.stats.cache_hits += 1;
            self.to_client(q.id, q.edns, limit, &mut reply, q.question);
            return Answer::Reply(reply);
        }
        if self.upstreams.is_empty() {
            self.stats.servfail += 1;
            return Answer::Reply(self.reply_empty(q, RCODE_SERVFAIL, false, 0));
        }
        self.stats.forwarded += 1;
        let mut upstream_query = raw.to_vec();
        let upstream_id = self.rng.next_u32() as u16;
        upstream_query[0..2].copy_from_slice(&upstream_id.to_be_bytes());
        Answer::Forward(ForwardPlan {
            query: upstream_query,
            upstreams: self.upstreams.clone(),
            transport,
            timeout: self.config.upstream_timeout,
            client_id: q.id,
            client_flags: q.flags,
            client_edns: q.edns,
            client_limit: limit,
            question_len: q.question.len(),
            cache_key: key.as_slice().into(),
        })
    }

    /// Makes an upstream (or cached) reply the client's: its ID, its question spelling,
    /// and its size limit (cut to the question with TC when too big).
    fn to_client(
        &self,
        id: u16,
        edns: Option<message::Edns>,
        limit: usize,
        reply: &mut Vec<u8>,
        question: &[u8],
    ) {
        reply[0..2].copy_from_slice(&id.to_be_bytes());
        reply[HEADER_LEN..HEADER_LEN + question.len()].copy_from_slice(question);
        if reply.len() > limit {
            let reply_flags = u16::from_be_bytes([reply[2], reply[3]]) | 0x0200;
            reply.truncate(HEADER_LEN + question.len());
            reply[2..4].copy_from_slice(&reply_flags.to_be_bytes());
            let ar = u16::from(edns.is_some());
            message::set_counts(reply, [1, 0, 0, ar]);
            if let Some(edns) = edns {
                message::push_opt(reply, self.config.max_udp_payload, 0, edns.dnssec_ok);
            }
        }
    }

    /// A response with the question and no records (but the OPT if the query had one).
    fn reply_empty(&self, q: &Query<'_>, rcode: u8, aa: bool, ext_rcode: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + q.question.len() + OPT_LEN);
        let ar = u16::from(q.edns.is_some());
        message::push_header(
            &mut out,
            q.id,
            message::response_flags(q.flags, aa, false, rcode),
            [1, 0, 0, ar],
        );
        out.extend_from_slice(q.question);
        if let Some(edns) = q.edns {
            message::push_opt(
                &mut out,
                self.config.max_udp_payload,
                ext_rcode,
                edns.dnssec_ok,
            );
        }
        out
    }

    /// Answers a name of our domain (`key`, lowercase wire form).
    fn local_answer(
        &mut self,
        store: &NameStore,
        q: &Query<'_>,
        key: &[u8],
        limit: usize,
        domain_at: DomainAt,
    ) -> Vec<u8> {
        let base = HEADER_LEN + q.question.len() + if q.edns.is_some() { OPT_LEN } else { 0 };
        let addrs = store.addrs_of(key);
        let wants_a = q.qtype == TYPE_A || q.qtype == TYPE_ANY;
        match addrs {
            Some(list) if wants_a => {
                let fit = limit.saturating_sub(base) / A_RECORD_LEN;
                let count = list.len().min(fit);
                self.shuffle(list, count);
                let mut out = Vec::with_capacity(base + count * A_RECORD_LEN);
                let ar = u16::from(q.edns.is_some());
                let flags =
                    message::response_flags(q.flags, true, count < list.len(), RCODE_NOERROR);
                message::push_header(&mut out, q.id, flags, [1, count as u16, 0, ar]);
                out.extend_from_slice(q.question);
                for addr in &self.scratch[..count] {
                    message::push_a(&mut out, self.config.ttl, *addr);
                }
                self.push_opt_for(&mut out, q);
                out
            }
            Some(_) => self.soa_answer(q, RCODE_NOERROR, false, limit, domain_at),
            None if key == self.config.domain.as_wire() => self.soa_answer(
                q,
                RCODE_NOERROR,
                q.qtype == TYPE_SOA || q.qtype == TYPE_ANY,
                limit,
                domain_at,
            ),
            None => self.soa_answer(q, RCODE_NXDOMAIN, false, limit, domain_at),
        }
    }

    /// Puts the first `count` addresses of a uniform random permutation of `list` in
    /// `self.scratch` (partial Fisher-Yates).
    fn shuffle(&mut self, list: &[(Ipv4Addr, u32)], count: usize) {
        self.scratch.clear();
        self.scratch.extend(list.iter().map(|(addr, _)| *addr));
        let n = self.scratch.len();
        for i in 0..count.min(n.saturating_sub(1)) {
            // Lemire's multiply-shift: bias below 2^-32 * n, irrelevant here.
            let j = i + ((u64::from(self.rng.next_u32()) * (n - i) as u64) >> 32) as usize;
            self.scratch.swap(i, j);
        }
    }

    /// NOERROR-empty or NXDOMAIN with our SOA in authority, or (`in_answer`) the SOA as
    /// the answer. The SOA is left out if it would not fit (only with absurd domains).
    fn soa_answer(
        &self,
        q: &Query<'_>,
        rcode: u8,
        in_answer: bool,
        limit: usize,
        domain_at: DomainAt,
    ) -> Vec<u8> {
        let domain = self.config.domain.as_wire();
        let mut out =
            Vec::with_capacity(HEADER_LEN + q.question.len() + 64 + domain.len() + OPT_LEN);
        message::push_header(
            &mut out,
            q.id,
            message::response_flags(q.flags, true, false, rcode),
            [1, 0, 0, 0],
        );
        out.extend_from_slice(q.question);
        let start = out.len();
        // Owner: the domain, by pointer into the question if it is there.
        let domain_ptr = match domain_at {
            DomainAt::Question(at) => (HEADER_LEN + at) as u16,
            DomainAt::Absent => {
                let at = out.len() as u16;
                out.extend_from_slice(domain);
                at
            }
        };
        if let DomainAt::Question(_) = domain_at {
            out.extend_from_slice(&(0xc000 | domain_ptr).to_be_bytes());
        }
        out.extend_from_slice(&TYPE_SOA.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&self.config.ttl.to_be_bytes());
        // RDATA: MNAME = the domain, RNAME = hostmaster.<domain>, then five numbers.
        const RDLEN: u16 = 2 + 1 + 10 + 2 + 20;
        out.extend_from_slice(&RDLEN.to_be_bytes());
        out.extend_from_slice(&(0xc000 | domain_ptr).to_be_bytes());
        out.push(10);
        out.extend_from_slice(b"hostmaster");
        out.extend_from_slice(&(0xc000 | domain_ptr).to_be_bytes());
        for value in [1u32, 3600, 600, 86400, self.config.ttl] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        let opt = if q.edns.is_some() { OPT_LEN } else { 0 };
        let with_soa = out.len() + opt <= limit && domain_ptr < 0x4000;
        if !with_soa {
            out.truncate(start);
        }
        let soa = u16::from(with_soa);
        let (an, ns) = if in_answer { (soa, 0) } else { (0, soa) };
        message::set_counts(&mut out, [1, an, ns, u16::from(q.edns.is_some())]);
        self.push_opt_for(&mut out, q);
        out
    }

    fn ptr_answer(&self, q: &Query<'_>, name: &WireName, limit: usize) -> Vec<u8> {
        let target = name.as_wire();
        let opt = if q.edns.is_some() { OPT_LEN } else { 0 };
        let size = HEADER_LEN + q.question.len() + 12 + target.len() + opt;
        // Only a 255-byte question with a 255-byte target over 512-byte UDP can overflow:
        // then no answer, TC set.
        let fits = size <= limit;
        let mut out = Vec::with_capacity(size);
        let flags = message::response_flags(q.flags, true, !fits, RCODE_NOERROR);
        message::push_header(
            &mut out,
            q.id,
            flags,
            [1, u16::from(fits), 0, u16::from(q.edns.is_some())],
        );
        out.extend_from_slice(q.question);
        if fits {
            message::push_record_head(
                &mut out,
                HEADER_LEN as u16,
                TYPE_PTR,
                self.config.ttl,
                target.len() as u16,
            );
            out.extend_from_slice(target);
        }
        self.push_opt_for(&mut out, q);
        out
    }

    fn push_opt_for(&self, out: &mut Vec<u8>, q: &Query<'_>) {
        if let Some(edns) = q.edns {
            message::push_opt(out, self.config.max_udp_payload, 0, edns.dnssec_ok);
        }
    }
}

/// The address of a `d.c.b.a.in-addr.arpa.` name (canonical decimal labels only).
fn reverse_addr(q: &Query<'_>) -> Option<Ipv4Addr> {
    if q.label_count() != 6 || q.label(4) != b"in-addr" || q.label(5) != b"arpa" {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, octet) in octets.iter_mut().rev().enumerate() {
        let label = q.label(i);
        if label.is_empty()
            || label.len() > 3
            || (label.len() > 1 && label[0] == b'0')
            || !label.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        let value = label.iter().fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
        *octet = u8::try_from(value).ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests;
