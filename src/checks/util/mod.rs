//! What several kinds share: error categories, the SQL kinds' keys, the
//! connection guard, TLS trust (roots and certificate verification) and
//! PostgreSQL's `sslmode`s (which the PostgreSQL store uses too).

pub mod categories;
pub mod guard;
pub mod postgres_tls;
pub mod sql;
pub mod trust;
