//! NLM/NSM front door of lockfs (in progress).
