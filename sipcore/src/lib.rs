pub mod endpoint;
pub mod ids;
pub mod msg;
pub mod registrar;
pub mod transaction;
