//! The Nats client of the bridge (being written).

use std::sync::Arc;

use bytes::Bytes;

use super::bridge::{Broker, BrokerError, Options, Publication};

/// A connection to Nats.
#[derive(Debug)]
pub struct Nats;

impl Broker for Nats {
    async fn connect(_o: &Options) -> Result<Self, BrokerError> {
        Err(BrokerError::Refused("not built yet".into()))
    }
    async fn subscribe(&mut self, _topics: &[Arc<str>]) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn unsubscribe(&mut self, _topics: &[Arc<str>]) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&mut self, _pubs: &[Publication]) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn recv(&mut self) -> Result<(Arc<str>, Bytes), BrokerError> {
        std::future::pending().await
    }
    async fn ping(&mut self) -> Result<(), BrokerError> {
        Ok(())
    }
}
