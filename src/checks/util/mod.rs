//! What several kinds share: error categories, the SQL kinds' keys, the
//! connection guard, TLS trust (roots and certificate verification),
//! PostgreSQL's `sslmode`s (which the PostgreSQL store uses too), regular
//! expressions from the config, and the conditions on an answer.

pub mod categories;
pub mod conditions;
pub mod guard;
pub mod pattern;
pub mod postgres_tls;
pub mod sql;
pub mod trust;
