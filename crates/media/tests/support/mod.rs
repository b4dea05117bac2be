//! Shared test support.
pub(crate) mod sim;
