pub mod msg;
pub mod sdp;
