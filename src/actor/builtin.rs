//! The actors the `quicmesh` binary can spawn: the demo's, also handy for
//! trying a mesh out.
//!
//! [`registry`] returns them (and, in the project's own test builds, the
//! test actors too).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Actor, ActorRef, Context, PortRef, Registry, Spawn};

/// Every built-in actor type.
pub fn registry() -> Registry {
    let registry = Registry::new()
        .with::<Echo>()
        .and_then(|r| r.with::<Counter>())
        .and_then(|r| r.with::<RingNode>());
    #[cfg(any(test, feature = "testkit"))]
    let registry = registry.and_then(super::test_actors::register);
    registry.expect("the built-in actor types have distinct names")
}

/// Replies with what it is sent.
#[derive(Default)]
pub struct Echo;

/// Messages of [`Echo`].
#[derive(Debug, Serialize, Deserialize)]
pub enum EchoMsg {
    /// Reply with the same bytes.
    Echo(#[serde(with = "serde_bytes")] Vec<u8>, PortRef<Vec<u8>>),
    /// Forward the bytes to another echo actor, then reply with its answer.
    Relay(
        #[serde(with = "serde_bytes")] Vec<u8>,
        ActorRef<Echo>,
        PortRef<Vec<u8>>,
    ),
    /// Reply with the same bytes after `ms` milliseconds (an ask that stays open a while).
    After(
        u64,
        #[serde(with = "serde_bytes")] Vec<u8>,
        PortRef<Vec<u8>>,
    ),
}

impl Actor for Echo {
    const NAME: &'static str = "echo";
    type Message = EchoMsg;

    async fn handle(&mut self, msg: EchoMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            EchoMsg::Echo(bytes, reply) => reply.send(ctx.client(), bytes).await?,
            EchoMsg::Relay(bytes, other, reply) => {
                let answer = other
                    .ask(ctx.client(), |port| EchoMsg::Echo(bytes, port))
                    .await?;
                reply.send(ctx.client(), answer).await?;
            }
            EchoMsg::After(ms, bytes, reply) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.send(ctx.client(), bytes).await?;
            }
        }
        Ok(())
    }
}

/// Counts numbered messages and checks they arrive in order, once each.
#[derive(Default)]
pub struct Counter {
    next: u64,
    received: u64,
    out_of_order: u64,
    bytes: u64,
}

/// Messages of [`Counter`].
#[derive(Debug, Serialize, Deserialize)]
pub enum CounterMsg {
    /// The `seq`-th message of the sender (from 0); `pad` is ignored.
    Count {
        /// Sequence number.
        seq: u64,
        /// Payload to make the message bigger.
        #[serde(with = "serde_bytes")]
        pad: Vec<u8>,
    },
    /// Reply with the tally so far.
    Report(PortRef<CounterReport>),
}

/// What a [`Counter`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReport {
    /// Messages received.
    pub received: u64,
    /// Messages whose sequence number was not the next expected one.
    pub out_of_order: u64,
    /// Next expected sequence number.
    pub next: u64,
    /// Payload bytes received.
    pub bytes: u64,
}

impl Actor for Counter {
    const NAME: &'static str = "counter";
    type Message = CounterMsg;

    async fn handle(&mut self, msg: CounterMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            CounterMsg::Count { seq, pad } => {
                self.received += 1;
                self.bytes += pad.len() as u64;
                if seq != self.next {
                    self.out_of_order += 1;
                }
                self.next = seq + 1;
            }
            CounterMsg::Report(port) => {
                let report = CounterReport {
                    received: self.received,
                    out_of_order: self.out_of_order,
                    next: self.next,
                    bytes: self.bytes,
                };
                port.send(ctx.client(), report).await?;
            }
        }
        Ok(())
    }
}

/// One node of a ring: passes a token to the next node, adding its rank.
pub struct RingNode {
    rank: u32,
    next: Option<ActorRef<RingNode>>,
}

/// Messages of [`RingNode`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RingMsg {
    /// Set the next node of the ring.
    Link(ActorRef<RingNode>, PortRef<()>),
    /// The token: `hops` left to go; `sum` of ranks seen; `done` gets the final sum.
    Token {
        /// Hops still to make.
        hops: u32,
        /// Sum of the ranks of the nodes visited.
        sum: u64,
        /// Where the final sum goes.
        done: PortRef<u64>,
    },
}

impl Spawn for RingNode {
    type Params = u32;

    fn new(rank: u32) -> anyhow::Result<Self> {
        Ok(RingNode { rank, next: None })
    }
}

impl Actor for RingNode {
    const NAME: &'static str = "ring";
    type Message = RingMsg;

    async fn handle(&mut self, msg: RingMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            RingMsg::Link(next, ack) => {
                self.next = Some(next);
                ack.send(ctx.client(), ()).await?;
            }
            RingMsg::Token { hops, sum, done } => {
                let sum = sum + u64::from(self.rank);
                if hops == 0 {
                    done.send(ctx.client(), sum).await?;
                } else {
                    let next = self
                        .next
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("ring node {} not linked", self.rank))?;
                    next.tell(
                        ctx.client(),
                        RingMsg::Token {
                            hops: hops - 1,
                            sum,
                            done,
                        },
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_builtin_names_are_distinct() {
        let names = super::registry().names();
        assert!(
            names.contains(&"echo") && names.contains(&"ring"),
            "{names:?}"
        );
    }
}
