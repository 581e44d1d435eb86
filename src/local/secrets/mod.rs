//! Team secrets (protocol.md §3.7), split by job: [`vault`] keeps them at rest (sealed values,
//! audit log), [`api`] is the logic behind the `/secrets` handlers, and [`lookup`] is what the
//! egress broker may ask (a value by name, the header(s) that carry it, the audit).

pub(crate) mod api;
pub(crate) mod lookup;
pub(crate) mod vault;

pub(crate) use api::{parse_audit_query, providers_view, CreateBody, RotateBody, Secrets};
pub(crate) use lookup::{render_headers, SecretLookup};
pub(crate) use vault::{AuditRow, SecretKey, Vault};
