pub mod dialog;
pub mod digest;
pub mod endpoint;
pub mod ids;
pub mod msg;
pub mod sdp;
pub mod transaction;
pub mod ua;
