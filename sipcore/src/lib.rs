pub mod endpoint;
pub mod ids;
#[cfg(feature = "io")]
pub mod io;
pub mod msg;
pub mod transaction;
