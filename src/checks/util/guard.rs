//! A connection held for one round trip, abandoned unless it finished.

/// Holds the connection an attempt uses until its round trip finished.
/// [`finish`](Self::finish) hands it back for the next attempt (to the
/// pool, or to the check that keeps it). Dropped before that (the deadline
/// passed, or the round trip failed), it goes to `abandon` instead, which
/// closes or forgets it: no later attempt inherits a connection that may
/// still owe a reply.
pub struct AbandonUnlessFinished<T, F: FnOnce(T)> {
    held: Option<(T, F)>,
}

impl<T, F: FnOnce(T)> AbandonUnlessFinished<T, F> {
    /// Holds `connection`; `abandon` gets it if the guard is dropped first.
    pub fn new(connection: T, abandon: F) -> Self {
        AbandonUnlessFinished { held: Some((connection, abandon)) }
    }

    /// The connection, for the round trip.
    pub fn connection(&mut self) -> &mut T {
        &mut self.held.as_mut().expect("present until finished or dropped").0
    }

    /// The round trip finished: the connection, to be given back.
    pub fn finish(mut self) -> T {
        self.held.take().expect("present until finished or dropped").0
    }
}

impl<T, F: FnOnce(T)> Drop for AbandonUnlessFinished<T, F> {
    fn drop(&mut self) {
        if let Some((connection, abandon)) = self.held.take() {
            abandon(connection);
        }
    }
}
