mod net;
pub use net::{PipeConnection, PipeListener, ClientConnection, Readiness};
