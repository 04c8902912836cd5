//! End-to-end tests of lockfs live in `tests/`.
