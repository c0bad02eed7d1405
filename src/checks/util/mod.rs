//! What several kinds share: error categories, the SQL kinds' keys, the
//! connection guard and TLS trust (roots and certificate verification).

pub mod categories;
pub mod guard;
pub mod sql;
pub mod trust;
