//! Where a container runs. A single node keeps this in memory; a cluster
//! will keep it in etcd under leases (a later step). The pool records every
//! assignment and retirement here, and asks here before assigning.

use std::collections::HashMap;
use std::sync::Mutex;

/// Records which node owns which container.
pub trait Placement: Send + Sync + 'static {
    /// Claims `container` for this node; false if another node owns it.
    fn claim(&self, container: &str) -> bool;
    /// Gives `container` up (its worker was retired or died).
    fn release(&self, container: &str);
    /// Containers this node owns.
    fn owned(&self) -> Vec<String>;
}

/// The embedded default: this node owns every container it serves.
#[derive(Default)]
pub struct Memory {
    owned: Mutex<HashMap<String, ()>>,
}

impl Placement for Memory {
    fn claim(&self, container: &str) -> bool {
        self.owned.lock().unwrap().insert(container.to_owned(), ());
        true
    }

    fn release(&self, container: &str) {
        self.owned.lock().unwrap().remove(container);
    }

    fn owned(&self) -> Vec<String> {
        let mut v: Vec<_> = self.owned.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }
}
