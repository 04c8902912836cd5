//! Wire types of the protocols lockd-user serves and calls: NLM and NSM.
//!
//! Only shapes and limits live here; what a LOCK or an SM_MON means is decided above.

pub mod nlm;
pub mod nsm;
