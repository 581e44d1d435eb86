//! Local backend (stub).
