//! Shared helpers for aparté's end-to-end tests. The scenarios themselves live in `tests/tests/`.
