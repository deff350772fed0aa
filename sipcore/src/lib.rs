//! wisp's SIP: messages, SDP, transactions, dialogs, a user agent, the
//! registrar and proxy, all as sans-IO state machines. The optional `io`
//! feature adds the one blocking driver that puts any of them on sockets.

pub mod dialog;
pub mod digest;
pub mod dns;
pub mod endpoint;
pub mod framing;
pub mod ids;
#[cfg(feature = "io")]
pub mod io;
pub mod keys;
#[cfg(feature = "io")]
pub mod locate;
pub mod mobility;
pub mod msg;
pub mod proxy;
pub mod registrar;
pub mod resume;
pub mod ring;
pub mod sdp;
pub mod session;
pub mod transaction;
pub mod ua;
