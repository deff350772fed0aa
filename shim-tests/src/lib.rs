//! Helpers shared by the end-to-end tests.
pub mod e2e;
pub mod lab;
