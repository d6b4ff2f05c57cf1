//! reef's multi-node test lab.
