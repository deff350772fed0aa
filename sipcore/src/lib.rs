pub mod dialog;
pub mod endpoint;
pub mod ids;
pub mod msg;
pub mod sdp;
pub mod transaction;
pub mod ua;
