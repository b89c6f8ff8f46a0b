//! Locking shared state without letting one panic take the whole VM down.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, carrying on with its state if another thread panicked while holding it:
/// a device's registers stay meaningful, and a VMM that stops on a poisoned lock would let
/// one bug take the whole guest down.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_gives_the_state() {
        let shared = Arc::new(Mutex::new(1));
        let in_thread = shared.clone();
        let panicked = std::thread::spawn(move || {
            let mut value = in_thread.lock().unwrap();
            *value = 2;
            panic!("poison the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        assert_eq!(*lock(&shared), 2);
    }
}
