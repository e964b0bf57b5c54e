//! Caller pinning (filled in next).
