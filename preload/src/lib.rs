//! libwisp.so: the LD_PRELOAD interposer. Nothing here runs until a wisp
//! name is used; a program that never names a peer sees no difference.

#[macro_use]
pub mod log;
pub mod config;
pub mod fdtable;
pub mod names;
pub mod real;
