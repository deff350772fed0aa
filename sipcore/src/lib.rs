pub mod digest;
pub mod msg;
