//! The pure decision core: observed facts in, intended actions out.
//!
//! Nothing here does I/O or reads a clock; the same facts always give the same intents, so every
//! rule is tested with tables of scenarios. The agent's run loop observes, asks, and executes.

pub mod claim;
pub mod conditional;
pub mod failover;
pub mod lease;
pub mod reclaim;
pub mod route;
