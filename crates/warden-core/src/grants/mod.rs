//! What a plugin may reach, granted by the operator and nothing else: outgoing HTTP and
//! the secrets injected into it, files, environment.

pub mod http;
pub mod secrets;
