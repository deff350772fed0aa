//! libwisp.so: the LD_PRELOAD interposer. Nothing here runs until a wisp
//! name is used; a program that never names a peer sees no difference.

#[macro_use]
pub mod log;
pub mod config;
pub mod datagrams;
pub mod engine;
pub mod epolls;
pub mod fdtable;
pub mod mobility;
pub mod movelog;
pub mod mover;
pub mod names;
pub mod netwatch;
pub mod real;
pub mod resolve;
pub mod routes;
pub mod sip;
pub mod sock;
pub mod state;
pub mod status;
pub mod stream;
pub mod table;
pub mod waits;

// The hooks are left out of unit-test builds: a test binary must not
// interpose its own libc calls.
#[cfg(not(test))]
pub mod hooks;
