//! actl
