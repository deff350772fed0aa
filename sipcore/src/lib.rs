pub mod framing;
pub mod msg;
