//! Heartbeats: where a silent peer is judged dead.
//!
//! Both sides send a [`Heartbeat`] datagram every interval and declare the
//! peer dead after `timeout` without one. The decision is made by
//! [`HeartbeatJudge`], plain code that is told "a beat arrived at t" and asked
//! "is the peer dead at t?", so it is tested without sockets or sleeping.
//! [`run`] is the thin async driver that moves datagrams and time.
//!
//! Signs of life are the peer's heartbeats and its acknowledgements of ours.
//! Both come from the peer's QUIC stack, which runs in the peer process (QUIC
//! is userspace: unlike TCP, no kernel answers for a frozen process), so a
//! SIGSTOPped or SIGKILLed peer produces neither. Counting acknowledgements
//! doubles the evidence per interval: with 20% loss each way, a whole
//! timeout of silence needs six intervals in a row where the peer's beat
//! *and* the acknowledgement of ours were lost, instead of six lost beats.
//!
//! Silence is only held against the peer while this side was running. A
//! process that is not scheduled for a while (two cores shared by a
//! thousand starting workers and a compiler) wakes with its deadline long
//! past and the peer's beats still waiting, unread, in its socket; judging
//! at that instant would declare dead a peer whose beats are already here.
//! So when this side wakes after a gap of more than [`LOCAL_STALL`] ticks
//! it gives the peer [`LOCAL_STALL`] more intervals, in which the buffered
//! packets are read, before it may declare it dead. A peer that really is
//! dead is then reported that much later, and only after a stall of our
//! own; without one, detection time is unchanged.
//!
//! Every tick also reads the connection's round trip, publishes it and
//! warns when the timeout is short for it (see [`crate::rtt`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Connection;

use crate::config::HeartbeatConfig;
use crate::rtt::{self, RttCell, RttWatch};
use crate::wire::{codec, Heartbeat};

/// Stands for a timeout too large to represent as an instant: longer than any run.
pub const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// A gap of more than this many heartbeat intervals between two wakeups of
/// this side is a stall of its own, and the peer gets as many intervals
/// more once it is over (see the module doc).
pub const LOCAL_STALL: u32 = 2;

/// Decides whether the peer is alive from when its heartbeats arrived.
#[derive(Debug, Clone)]
pub struct HeartbeatJudge {
    timeout: Duration,
    last_heard: Instant,
    beats: u64,
    highest_seq: Option<u64>,
    /// Longest gap between wakeups that is not a stall of our own; also the
    /// grace given after one.
    stall: Duration,
    last_awake: Instant,
    /// No verdict before this: we resumed from a stall of our own.
    no_verdict_before: Instant,
    /// The peer's beat interval, once known (for counting missed beats).
    interval: Option<Duration>,
    /// When the last beat (not any sign of life) arrived.
    last_beat: Instant,
    /// Beats missed so far (see [`HeartbeatJudge::missed`]).
    missed: u64,
    /// Of `missed`, those counted for the silence since `last_beat`.
    missed_in_silence: u64,
}

impl HeartbeatJudge {
    /// A judge that starts counting silence at `now`, with no allowance for
    /// stalls of this side (see [`HeartbeatJudge::with_interval`]).
    pub fn new(timeout: Duration, now: Instant) -> Self {
        HeartbeatJudge {
            timeout,
            last_heard: now,
            beats: 0,
            highest_seq: None,
            stall: NEVER,
            last_awake: now,
            no_verdict_before: now,
            interval: None,
            last_beat: now,
            missed: 0,
            missed_in_silence: 0,
        }
    }

    /// Counts a gap of more than [`LOCAL_STALL`] `interval`s between two
    /// [`HeartbeatJudge::on_wake`]s as a stall of this side.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.stall = interval.saturating_mul(LOCAL_STALL);
        if !interval.is_zero() {
            self.interval = Some(interval);
        }
        self
    }

    /// Beats the peer should have sent that did not arrive (in time): the
    /// gaps in its sequence numbers, or, if larger, the intervals of
    /// silence after the first one since its previous beat (a stopped peer
    /// sends nothing, so leaves no gap). Only counted once the interval is
    /// known ([`HeartbeatJudge::with_interval`]); never goes down, so a
    /// beat that arrives late stays counted as missed.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Counts the intervals of silence since the last beat, beyond the first.
    fn count_silence(&mut self, now: Instant) {
        let Some(interval) = self.interval else {
            return;
        };
        let silent = now.saturating_duration_since(self.last_beat);
        let intervals = (silent.as_nanos() / interval.as_nanos()) as u64;
        let missed = intervals.saturating_sub(1);
        if missed > self.missed_in_silence {
            self.missed = self.missed.saturating_add(missed - self.missed_in_silence);
            self.missed_in_silence = missed;
        }
    }

    /// Records that this side is running at `now` (call it on every
    /// wakeup, before judging). After a stall of its own, the peer gets
    /// [`LOCAL_STALL`] intervals from `now` before any verdict.
    pub fn on_wake(&mut self, now: Instant) {
        self.count_silence(now);
        if now.saturating_duration_since(self.last_awake) > self.stall {
            self.no_verdict_before = now.checked_add(self.stall).unwrap_or(now);
        }
        if now > self.last_awake {
            self.last_awake = now;
        }
    }

    /// Records that `beat` arrived at `now`.
    ///
    /// Datagrams may be reordered; a late beat still proves the peer was
    /// alive, and QUIC's packet protection already rules out replays.
    pub fn on_beat(&mut self, beat: &Heartbeat, now: Instant) {
        self.beats = self.beats.saturating_add(1);
        if self.interval.is_some() {
            // Beats skipped in the sequence (the first beat is seq 0).
            let gap = match self.highest_seq {
                None => beat.seq,
                Some(h) => beat.seq.saturating_sub(h).saturating_sub(1),
            };
            self.count_silence(now);
            // Silence already counted stands for (some of) the gap.
            let more = gap.saturating_sub(self.missed_in_silence);
            self.missed = self.missed.saturating_add(more);
            self.missed_in_silence = 0;
        }
        self.highest_seq = Some(self.highest_seq.map_or(beat.seq, |s| s.max(beat.seq)));
        if now > self.last_heard {
            self.last_heard = now;
        }
        if now > self.last_beat {
            self.last_beat = now;
        }
    }

    /// Records another sign of life at `now`: the peer acknowledged our packets.
    pub fn on_acknowledgement(&mut self, now: Instant) {
        if now > self.last_heard {
            self.last_heard = now;
        }
    }

    /// The instant at which the peer will be dead unless a beat arrives first.
    ///
    /// Checked: a timeout too large to add to an instant (settings are
    /// validated, so only a bug gets here) counts as [`NEVER`] rather than
    /// panicking.
    pub fn deadline(&self) -> Instant {
        self.last_heard
            .checked_add(self.timeout)
            .or_else(|| self.last_heard.checked_add(NEVER))
            .unwrap_or(self.last_heard)
            .max(self.no_verdict_before)
    }

    /// Whether the peer is dead at `now`.
    pub fn is_dead(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// How long the peer has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// Beats received so far.
    #[cfg(test)]
    pub fn beats(&self) -> u64 {
        self.beats
    }

    /// Highest sequence number received so far.
    #[cfg(test)]
    pub fn highest_seq(&self) -> Option<u64> {
        self.highest_seq
    }
}

/// Produces the heartbeats one side sends.
#[derive(Debug, Clone)]
pub struct HeartbeatSender {
    epoch: Instant,
    next_seq: u64,
}

impl HeartbeatSender {
    /// A sender whose timestamps count from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        HeartbeatSender { epoch, next_seq: 0 }
    }

    /// The beat to send at `now`.
    pub fn next_beat(&mut self, now: Instant) -> Heartbeat {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        let beat = Heartbeat {
            seq: self.next_seq,
            sent_at_micros: u64::try_from(micros).unwrap_or(u64::MAX),
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        beat
    }
}

/// How a heartbeat loop ended.
#[derive(Debug)]
pub enum HeartbeatOutcome {
    /// No heartbeat arrived for the configured timeout.
    Lost {
        /// How long the peer had been silent.
        silent_for: Duration,
    },
    /// The connection closed (the reason is in the error).
    Closed(quinn::ConnectionError),
    /// The peer sent a datagram that is not a heartbeat: a protocol violation.
    BadDatagram(String),
    /// The peer disabled datagrams, so heartbeats cannot flow.
    DatagramsUnsupported,
}

/// [`run`], also publishing the connection's round trip in `rtt` and the
/// beats missed so far ([`HeartbeatJudge::missed`]) in `missed` at every
/// tick and warning (as `peer`, at a limited rate) when the heartbeat
/// timeout is less than [`rtt::SAFE_RTT_MULTIPLE`] round trips.
pub async fn run_measured(
    conn: Connection,
    config: HeartbeatConfig,
    rtt: RttCell,
    missed: Arc<AtomicU64>,
    peer: &str,
) -> HeartbeatOutcome {
    if conn.max_datagram_size().is_none() {
        return HeartbeatOutcome::DatagramsUnsupported;
    }
    let start = Instant::now();
    let mut judge = HeartbeatJudge::new(config.timeout, start).with_interval(config.interval);
    let mut sender = HeartbeatSender::new(start);
    // Acknowledgements are sampled from the connection's counters; new ones
    // are credited at the previous sample, the earliest they can have come,
    // so sampling never makes the judge later than the timeout.
    let mut acks_seen = conn.stats().frame_rx.acks;
    let mut sampled_at = start;
    let mut sample_acks = |judge: &mut HeartbeatJudge| {
        let acks = conn.stats().frame_rx.acks;
        if acks > acks_seen {
            acks_seen = acks;
            judge.on_acknowledgement(sampled_at);
        }
        sampled_at = Instant::now();
    };
    let mut watch = RttWatch::new(config.timeout);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        judge.on_wake(Instant::now());
        let deadline = tokio::time::Instant::from_std(judge.deadline());
        tokio::select! {
            biased;
            received = conn.read_datagram() => match received {
                Ok(bytes) => match codec::decode::<Heartbeat>(&bytes) {
                    Ok(beat) => judge.on_beat(&beat, Instant::now()),
                    Err(e) => return HeartbeatOutcome::BadDatagram(e.to_string()),
                },
                Err(e) => return HeartbeatOutcome::Closed(e),
            },
            _ = ticker.tick() => {
                sample_acks(&mut judge);
                let round_trip = conn.rtt();
                rtt.set(round_trip);
                missed.store(judge.missed(), Ordering::Relaxed);
                if let Some(warning) = watch.on_sample(round_trip, Instant::now()) {
                    rtt::log_warning(peer, &warning);
                }
                let beat = sender.next_beat(Instant::now());
                match codec::encode(&beat) {
                    Ok(bytes) => match conn.send_datagram(bytes.into()) {
                        Ok(()) => {}
                        Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                            return HeartbeatOutcome::Closed(e)
                        }
                        Err(quinn::SendDatagramError::UnsupportedByPeer)
                        | Err(quinn::SendDatagramError::Disabled) => {
                            return HeartbeatOutcome::DatagramsUnsupported
                        }
                        Err(e) => tracing::debug!("heartbeat not sent: {e}"),
                    },
                    Err(e) => tracing::error!("cannot encode heartbeat: {e}"),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                sample_acks(&mut judge);
                let now = Instant::now();
                if judge.is_dead(now) {
                    return HeartbeatOutcome::Lost { silent_for: judge.silent_for(now) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn alive_while_beats_keep_coming() {
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0);
        let mut sender = HeartbeatSender::new(t0);
        for i in 1..=20u32 {
            let t = t0 + 250 * MS * i;
            judge.on_beat(&sender.next_beat(t), t);
            assert!(!judge.is_dead(t + 1499 * MS));
        }
        assert_eq!(judge.beats(), 20);
        assert_eq!(judge.highest_seq(), Some(19));
    }

    #[test]
    fn missed_beats_count_gaps_and_silences_once() {
        let t0 = Instant::now();
        let beat = |seq: u64| Heartbeat {
            seq,
            sent_at_micros: 0,
        };
        let mut judge = HeartbeatJudge::new(1500 * MS, t0).with_interval(250 * MS);
        // On time, with wakeups in between: nothing missed.
        for i in 0..4u32 {
            let t = t0 + 250 * MS * i;
            judge.on_wake(t + 200 * MS);
            judge.on_beat(&beat(u64::from(i)), t + 240 * MS);
        }
        assert_eq!(judge.missed(), 0);
        // Beats 4 and 5 lost on the way: seq 6 shows the gap.
        let t = t0 + 250 * MS * 6 + 240 * MS;
        judge.on_wake(t - 100 * MS);
        judge.on_beat(&beat(6), t);
        assert_eq!(judge.missed(), 2, "a gap of two in the sequence");
        // The peer stops for a second: the silence counts as it goes...
        judge.on_wake(t + 600 * MS);
        assert_eq!(judge.missed(), 3, "600 ms of silence: one beat late");
        judge.on_wake(t + 1000 * MS);
        assert_eq!(judge.missed(), 5);
        // ...and resumes with seq 7 (it sent nothing while stopped): no
        // gap, and the silence is not counted twice.
        judge.on_beat(&beat(7), t + 1010 * MS);
        assert_eq!(judge.missed(), 5);
        // A gap that the silence already stood for is not counted again.
        judge.on_wake(t + 1010 * MS + 800 * MS);
        assert_eq!(judge.missed(), 7);
        judge.on_beat(&beat(10), t + 1010 * MS + 810 * MS);
        assert_eq!(judge.missed(), 7, "beats 8 and 9 were the silence");
        // A late beat does not undo the count.
        judge.on_beat(&beat(5), t + 1010 * MS + 820 * MS);
        assert_eq!(judge.missed(), 7);
    }

    #[test]
    fn no_missed_beats_without_an_interval() {
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0);
        judge.on_wake(t0 + 1000 * MS);
        judge.on_beat(
            &Heartbeat {
                seq: 9,
                sent_at_micros: 0,
            },
            t0 + 1000 * MS,
        );
        assert_eq!(judge.missed(), 0);
    }

    #[test]
    fn dead_exactly_at_timeout_of_silence() {
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0);
        assert!(!judge.is_dead(t0 + 1499 * MS));
        assert!(judge.is_dead(t0 + 1500 * MS));
        judge.on_beat(
            &Heartbeat {
                seq: 0,
                sent_at_micros: 0,
            },
            t0 + 1000 * MS,
        );
        assert_eq!(judge.deadline(), t0 + 2500 * MS);
        assert_eq!(judge.silent_for(t0 + 1200 * MS), 200 * MS);
    }

    #[test]
    fn twenty_percent_loss_is_survived_with_default_settings() {
        // Deterministic pattern: lose 1 beat in 5, plus a burst of 4 lost in a row.
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0);
        for i in 1..=100u32 {
            let t = t0 + 250 * MS * i;
            let lost = i % 5 == 0 || (40..44).contains(&i);
            if !lost {
                judge.on_beat(
                    &Heartbeat {
                        seq: i.into(),
                        sent_at_micros: 0,
                    },
                    t,
                );
            }
            assert!(!judge.is_dead(t), "declared dead at beat {i}");
        }
    }

    #[test]
    fn late_reordered_beat_does_not_move_time_backwards() {
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0);
        judge.on_beat(
            &Heartbeat {
                seq: 5,
                sent_at_micros: 0,
            },
            t0 + 1000 * MS,
        );
        judge.on_beat(
            &Heartbeat {
                seq: 4,
                sent_at_micros: 0,
            },
            t0 + 900 * MS,
        );
        assert_eq!(judge.deadline(), t0 + 2500 * MS);
        assert_eq!(judge.highest_seq(), Some(5));
    }

    #[test]
    fn acknowledgements_keep_the_peer_alive_but_do_not_count_as_beats() {
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0);
        judge.on_acknowledgement(t0 + 1000 * MS);
        assert!(!judge.is_dead(t0 + 2000 * MS));
        assert!(judge.is_dead(t0 + 2500 * MS));
        assert_eq!(judge.beats(), 0);
    }

    #[test]
    fn a_stall_of_our_own_gives_the_peer_time_to_be_heard() {
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0).with_interval(250 * MS);
        judge.on_wake(t0 + 250 * MS);
        // Not scheduled for 3 s: the deadline passed while we slept.
        let resumed = t0 + 3250 * MS;
        judge.on_wake(resumed);
        assert!(!judge.is_dead(resumed), "judged at the instant we resumed");
        assert!(!judge.is_dead(resumed + 499 * MS));
        // The beats waiting in the socket are read: alive.
        judge.on_beat(
            &Heartbeat {
                seq: 12,
                sent_at_micros: 0,
            },
            resumed + 10 * MS,
        );
        assert!(!judge.is_dead(resumed + 1500 * MS));
        assert!(judge.is_dead(resumed + 1510 * MS));
    }

    #[test]
    fn a_dead_peer_is_still_found_after_our_stall_and_on_time_without_one() {
        let t0 = Instant::now();
        let mut judge = HeartbeatJudge::new(1500 * MS, t0).with_interval(250 * MS);
        let resumed = t0 + 3000 * MS;
        judge.on_wake(resumed);
        assert!(judge.is_dead(resumed + 500 * MS), "no beat after the grace");

        // Waking every interval is no stall: detection time is unchanged.
        let mut judge = HeartbeatJudge::new(1500 * MS, t0).with_interval(250 * MS);
        for i in 1..=6u32 {
            judge.on_wake(t0 + 250 * MS * i);
        }
        assert!(judge.is_dead(t0 + 1500 * MS));
    }

    #[test]
    fn an_absurd_timeout_never_overflows() {
        let t0 = Instant::now();
        let judge = HeartbeatJudge::new(Duration::MAX, t0);
        assert_eq!(judge.deadline(), t0 + NEVER);
        assert!(!judge.is_dead(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn sender_numbers_beats_and_stamps_time() {
        let t0 = Instant::now();
        let mut s = HeartbeatSender::new(t0);
        assert_eq!(s.next_beat(t0).seq, 0);
        let b = s.next_beat(t0 + 3 * MS);
        assert_eq!((b.seq, b.sent_at_micros), (1, 3000));
    }
}
