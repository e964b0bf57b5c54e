//! Unix attestor (filled in next).
