//! What several kinds share: error categories, the SQL kinds' keys, the
//! connection guard and TLS trust (roots and certificate verification).

pub mod errors;
pub mod guard;
pub mod sql;
pub mod trust;
